"""Exploration with one DeePMD-kit model: ASE molecular dynamics and relaxation paths.

The ensemble's evaluation (uncertainty, the MD guard) is in ``remote_al.ensemble``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from remote_al.ensemble import guard_width
from remote_al.records import MDRequest, MDResult
from remote_al.structures import from_extxyz, min_distance, to_extxyz
from remote_al.torch_env import device_name, single_thread_torch


def run_md(req: MDRequest) -> MDResult:
    """ASE Langevin NVT (or Berendsen NPT) with ``deepmd.calculator.DP``, or with the
    labeler's calculator when ``req.labeler`` is set (no model then).

    The trajectory goes to ``workdir/traj.extxyz``; ``n_frames`` evenly spaced frames
    come back as extxyz text. A run whose atoms come closer than 0.5 A stops early: its
    frames so far are returned (they are what the ensemble is most unsure of).
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    single_thread_torch()
    from deepmd.calculator import DP

    if req.ensemble == "relax":
        return run_relax_exploration(req)
    t0 = time.time()
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (atoms,) = from_extxyz(req.structure_extxyz)[:1]
    if req.labeler:
        from remote_al.labelers import get_labeler

        if req.model_path:
            raise ValueError("give model_path (MD with a model) or labeler, not both")
        atoms.calc = get_labeler(req.labeler, req.labeler_settings).relax_calculator(atoms, workdir)
    else:
        atoms.calc = DP(model=req.model_path)
    rng = np.random.default_rng(req.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=req.temperature_K, rng=rng)
    Stationary(atoms)
    v0 = atoms.get_volume()
    if req.ensemble == "nvt":
        # The centre of mass stays put through a FixCom constraint, as ASE 3.28 asks
        # (Langevin's own fixcm=True is deprecated: it warns and samples NVT less exactly).
        atoms.set_constraint(FixCom())
        dyn = Langevin(
            atoms,
            timestep=req.timestep_fs * units.fs,
            temperature_K=req.temperature_K,
            friction=req.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
    elif req.ensemble == "npt":
        from ase.md.nptberendsen import NPTBerendsen

        dyn = NPTBerendsen(
            atoms,
            timestep=req.timestep_fs * units.fs,
            temperature_K=req.temperature_K,
            pressure_au=req.pressure_GPa * units.GPa,
            taut=100 * units.fs,
            taup=500 * units.fs,
            compressibility_au=1.0 / (150.0 * units.GPa),
        )
    else:
        raise ValueError(f"unknown MD ensemble {req.ensemble!r}: use 'nvt', 'npt' or 'relax'")

    if req.equil_steps > 0:  # equilibration: no frame kept
        dyn.run(req.equil_steps)
    interval = max(1, req.steps // max(1, req.n_frames))
    guards = None
    if req.stop_force_width > 0 and len(req.guard_model_paths) >= 2:
        from deepmd.infer import DeepPot

        guards = [DeepPot(p) for p in req.guard_model_paths]
    stop_reason = ""
    frames, temps = [], []
    traj_path = workdir / "traj.extxyz"
    if traj_path.exists():
        traj_path.unlink()
    steps_done = 0
    while steps_done < req.steps:
        dyn.run(interval)
        steps_done += interval
        snap = atoms.copy()
        snap.calc = None
        snap.set_constraint()  # a frame is a structure: FixCom belongs to the dynamics
        snap.info["md_step"] = steps_done
        snap.info["temperature_K"] = float(atoms.get_temperature())
        temps.append(snap.info["temperature_K"])
        frames.append(snap)
        write(traj_path, snap, format="extxyz", append=True)
        if not np.all(np.isfinite(atoms.positions)):
            stop_reason = f"non-finite positions at step {steps_done}"
            break
        dmin = min_distance(atoms)
        if dmin < req.stop_min_distance_A:
            stop_reason = f"atoms {dmin:.2f} A apart at step {steps_done}"
            break
        if guards is not None:
            width = guard_width(guards, atoms)
            snap.info["force_width_guard"] = width
            if width > req.stop_force_width:
                stop_reason = f"ensemble force CI width {width:.2f} eV/A above {req.stop_force_width:g} at step {steps_done}"
                break
    return MDResult(
        task_key=req.task_key,
        trajectory_path=str(traj_path),
        frames_extxyz=to_extxyz(frames),
        n_frames=len(frames),
        steps_done=steps_done,
        wall_s=time.time() - t0,
        mean_temperature_K=float(np.mean(temps)) if temps else 0.0,
        volume_start_A3=float(v0),
        volume_end_A3=float(atoms.get_volume()),
        device=device_name(),
        stop_reason=stop_reason,
    )


def run_relax_exploration(req: MDRequest) -> MDResult:
    """Exploration by relaxation: positions and cell relax together with one member
    (FIRE on ``FrechetCellFilter``, as in ``remote_al.relax``) for at most ``steps`` steps,
    to 0.02 eV/A. ``n_frames`` frames evenly spaced along the path, the last one included,
    come back as candidates. The path ends where this member puts the composition's
    minimum, so the labels these frames earn correct the ensemble exactly where the
    relaxed volume and lattice parameters are read off. The start is rattled by 0.02 A
    (from ``seed``) so that repeated explorations of one structure differ.
    """
    from ase.filters import FrechetCellFilter
    from ase.io import write
    from ase.optimize import FIRE
    from deepmd.calculator import DP

    t0 = time.time()
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (atoms,) = from_extxyz(req.structure_extxyz)[:1]
    rng = np.random.default_rng(req.seed)
    atoms.positions += rng.normal(0.0, 0.02, size=atoms.positions.shape)
    atoms.calc = DP(model=req.model_path)
    v0 = atoms.get_volume()
    path = []

    def snapshot():
        snap = atoms.copy()
        snap.calc = None
        snap.info["relax_step"] = len(path)
        path.append(snap)

    opt = FIRE(FrechetCellFilter(atoms), logfile=str(workdir / "relax.log"))
    opt.attach(snapshot, interval=1)
    stop_reason = ""
    try:
        converged = bool(opt.run(fmax=0.02, steps=req.steps))
    except Exception as exc:  # a member that blows up: its path so far is the finding
        converged, stop_reason = False, f"relaxation failed: {exc}"
    if not converged and not stop_reason:
        stop_reason = f"not converged to 0.02 eV/A in {req.steps} steps"
    good = path  # the path up to the first frame with overlapping atoms (a member that collapses the cell)
    for i, a in enumerate(path):
        if not np.all(np.isfinite(a.positions)) or min_distance(a) < req.stop_min_distance_A:
            good = path[:i]
            stop_reason = f"path cut at step {i}: atoms closer than {req.stop_min_distance_A} A"
            break
    k = min(len(good), max(1, req.n_frames))
    idx = sorted({int(round(i)) for i in np.linspace(len(good) - 1, 0, k)}) if good else []
    frames = [good[i] for i in idx]
    traj_path = workdir / "traj.extxyz"
    write(traj_path, frames, format="extxyz")
    return MDResult(
        task_key=req.task_key,
        trajectory_path=str(traj_path),
        frames_extxyz=to_extxyz(frames),
        n_frames=len(frames),
        steps_done=len(path),
        wall_s=time.time() - t0,
        mean_temperature_K=0.0,
        volume_start_A3=float(v0),
        volume_end_A3=float(atoms.get_volume()),
        device=device_name(),
        stop_reason=stop_reason,
    )
