"""Ensemble evaluation: energies and forces of every member, Student-t widths, errors.

``predict_ensemble`` is the batched evaluation the ``uq`` function runs (its fast path is
``remote_al.fast_uq``); ``evaluate_uncertainty`` turns it into a ``UQResult``;
``guard_width`` is the one-frame width the MD engines stop on.
"""

from __future__ import annotations

import time

import numpy as np

from remote_al.calibration import atom_force_errors, atom_force_widths
from remote_al.records import UQRequest, UQResult
from remote_al.structures import from_extxyz
from remote_al.torch_env import device_name
from remote_al.uq import atom_width_histogram, ensemble_ci_width, frame_uncertainty

FEATURE_KINDS = ("", "atom_widths", "descriptor")


def guard_width(models, atoms) -> float:
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


def predict_ensemble(model_paths, frames, batch_size: int = 64, features: bool = False):
    """Energies (M, F) and forces list of F arrays (M, N_f, 3), evaluated in batches.

    ``model_paths``: frozen model files, or already loaded ``DeepPot`` objects. Frames with
    the same species sequence are stacked, ``batch_size`` per model call, with one
    neighbour list per chunk shared by the members (``remote_al.fast_uq``; the same
    numbers as ``predict_ensemble_deeppot`` to ~1e-13). ``features=True``: also the first
    member's per-frame descriptor features, as a third value.
    """
    from remote_al.fast_uq import predict_ensemble as fast

    return fast(model_paths, frames, batch_size, features=features)


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
    if req.features not in FEATURE_KINDS:
        raise ValueError(f"unknown features {req.features!r}; known: {', '.join(map(repr, FEATURE_KINDS))}")
    energies, forces, *descriptor = predict_ensemble(req.model_paths, frames, req.batch_size,
                                                     features=req.features == "descriptor")
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
    if req.features:
        if req.features == "atom_widths":
            x = atom_width_histogram([atom_force_widths(f, req.confidence) for f in forces])
        else:
            (x,) = descriptor
        # 4 significant digits: selection compares distances, and the result stays small
        result["frame_features"] = tuple(tuple(float(f"{v:.4g}") for v in row) for row in np.asarray(x, dtype=float))
    if req.return_forces:
        result.update(
            forces_mean=tuple(tuple(tuple(float(c) for c in row) for row in f.mean(axis=0)) for f in forces),
            energy_total_mean=tuple(float(x) for x in energies.mean(axis=0)),
            atom_force_width=tuple(float(x) for f in forces for x in atom_force_widths(f, req.confidence)),
        )
    labeled = [a.calc is not None and "energy" in a.calc.results and "forces" in a.calc.results for a in frames]
    if all(labeled):
        e_ref = np.array([a.calc.results["energy"] for a in frames]) / natoms
        e_err, f_rmse, f_max, inside, atom_w, atom_e = [], [], [], [], [], []
        if req.oob_members and len(req.oob_members) != len(frames):
            raise ValueError(f"oob_members has {len(req.oob_members)} entries for {len(frames)} frames")
        subsets = [list(o) if req.oob_members and o else list(range(len(req.model_paths))) for o in
                   (req.oob_members or [()] * len(frames))]
        e_sub = np.array([energies[s, i].mean() for i, s in enumerate(subsets)]) / natoms
        for i, a in enumerate(frames):
            f_ref = np.asarray(a.calc.results["forces"])
            f_mean = forces[i][subsets[i]].mean(axis=0)
            d = f_mean - f_ref
            f_rmse.append(float(np.sqrt(np.mean(d**2))))
            f_max.append(float(np.abs(d).max()))
            width = ensemble_ci_width(forces[i], req.confidence, axis=0)
            inside.append(float(np.mean(np.abs(d) <= width / 2.0)))
            atom_w.extend(width.max(axis=1).tolist())
            atom_e.extend(atom_force_errors(f_mean, f_ref).tolist())
        e_err = (e_sub - e_ref).tolist()
        result.update(
            energy_error=tuple(e_err),
            force_rmse=tuple(f_rmse),
            force_error_max=tuple(f_max),
            force_inside_ci=tuple(inside),
            atom_force_width=tuple(float(x) for x in atom_w),
            atom_force_error=tuple(float(x) for x in atom_e),
        )
    result.update(wall_s=time.time() - t0, device=device_name())
    return UQResult(**result)
