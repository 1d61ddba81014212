"""Molecular dynamics with one DeePMD-kit model, and batched ensemble evaluation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from remote_al.records import MDRequest, MDResult, UQRequest, UQResult
from remote_al.structures import from_extxyz, min_distance, to_extxyz
from remote_al.uq import ensemble_ci_width, frame_uncertainty


def _torch_threads():
    import torch

    torch.set_num_threads(1)


def run_md(req: MDRequest) -> MDResult:
    """ASE Langevin NVT (or Berendsen NPT) with ``deepmd.calculator.DP``.

    The trajectory goes to ``workdir/traj.extxyz``; ``n_frames`` evenly spaced frames
    come back as extxyz text. A run whose atoms come closer than 0.5 A stops early: its
    frames so far are returned (they are what the ensemble is most unsure of).
    """
    from ase import units
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    _torch_threads()
    from deepmd.calculator import DP

    t0 = time.time()
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (atoms,) = from_extxyz(req.structure_extxyz)[:1]
    atoms.calc = DP(model=req.model_path)
    rng = np.random.default_rng(req.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=req.temperature_K, rng=rng)
    Stationary(atoms)
    v0 = atoms.get_volume()
    if req.ensemble == "nvt":
        dyn = Langevin(
            atoms,
            timestep=req.timestep_fs * units.fs,
            temperature_K=req.temperature_K,
            friction=req.friction_per_fs / units.fs,
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
        raise ValueError(f"unknown MD ensemble {req.ensemble!r}: use 'nvt' or 'npt'")

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
            width = _guard_width(guards, atoms)
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
        device=_device_name(),
        stop_reason=stop_reason,
    )


def _guard_width(models, atoms) -> float:
    """Max force-component CI width of the ensemble on one frame (the MD guard)."""
    coords = atoms.get_positions().reshape(1, -1)
    cell = np.asarray(atoms.get_cell()).reshape(1, -1)
    symbols = atoms.get_chemical_symbols()
    forces = []
    for dp in models:
        tm = dp.get_type_map()
        _, f, _ = dp.eval(coords, cell, np.array([tm.index(s) for s in symbols]))
        forces.append(np.asarray(f).reshape(len(symbols), 3))
    return float(ensemble_ci_width(np.array(forces), 0.95, axis=0).max())


def _device_name() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def predict_ensemble(model_paths, frames, batch_size: int = 64):
    """Energies (M, F) and forces list of F arrays (M, N_f, 3), evaluated in batches.

    ``model_paths``: frozen model files, or already loaded ``DeepPot`` objects. Frames with
    the same species sequence are stacked, ``batch_size`` per model call, with one
    neighbour list per chunk shared by the members (``remote_al.fast_uq``; the same
    numbers as ``predict_ensemble_deeppot`` to ~1e-13).
    """
    from remote_al.fast_uq import predict_ensemble as fast

    return fast(model_paths, frames, batch_size)


def predict_ensemble_deeppot(model_paths, frames, batch_size: int = 64):
    """The reference evaluation: ``DeepPot.eval`` on stacks of ``batch_size`` frames of one
    species sequence (``batch_size=1``: one frame at a time, as an ASE calculator does),
    with PyTorch's default TorchScript executor. Used by the benchmarks and tests as the
    baseline of ``predict_ensemble``."""
    from remote_al.fast_uq import predict_ensemble as fast

    return fast(model_paths, frames, batch_size, reference=True)


def evaluate_uncertainty(req: UQRequest) -> UQResult:
    """Student-t CI widths over the ensemble for every frame; errors if labels are present."""
    t0 = time.time()
    if len(req.model_paths) < 2:
        raise ValueError(f"ensemble UQ needs at least 2 models, got {len(req.model_paths)}")
    frames = from_extxyz(req.frames_extxyz)
    if not frames:
        raise ValueError("no frames to evaluate")
    energies, forces = predict_ensemble(req.model_paths, frames, req.batch_size)
    natoms = np.array([len(a) for a in frames])
    e_w, f_w = frame_uncertainty(energies, forces, natoms, req.confidence)
    e_mean = energies.mean(axis=0) / natoms
    result = dict(
        task_key=req.task_key,
        n_members=len(req.model_paths),
        n_frames=len(frames),
        natoms=tuple(int(n) for n in natoms),
        energy_width=tuple(float(x) for x in e_w),
        force_width=tuple(float(x) for x in f_w),
        energy_mean=tuple(float(x) for x in e_mean),
    )
    labeled = [a.calc is not None and "energy" in a.calc.results and "forces" in a.calc.results for a in frames]
    if all(labeled):
        e_ref = np.array([a.calc.results["energy"] for a in frames]) / natoms
        e_err, f_rmse, f_max, inside = [], [], [], []
        for i, a in enumerate(frames):
            f_ref = np.asarray(a.calc.results["forces"])
            f_mean = forces[i].mean(axis=0)
            d = f_mean - f_ref
            f_rmse.append(float(np.sqrt(np.mean(d**2))))
            f_max.append(float(np.abs(d).max()))
            half = ensemble_ci_width(forces[i], req.confidence, axis=0) / 2.0
            inside.append(float(np.mean(np.abs(d) <= half)))
        e_err = (e_mean - e_ref).tolist()
        result.update(
            energy_error=tuple(e_err),
            force_rmse=tuple(f_rmse),
            force_error_max=tuple(f_max),
            force_inside_ci=tuple(inside),
        )
    result.update(wall_s=time.time() - t0, device=_device_name())
    return UQResult(**result)
