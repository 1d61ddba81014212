"""Relaxation of positions and cell: with each ensemble member, or with the labeler.

The volume-change result of a campaign (relaxed volume and lattice parameters against
Li content) comes from here: every member of the final ensemble relaxes the same
starting structure, so the spread of the relaxed volumes over members gives the
ensemble's confidence band (the same Student-t interval as the selection), and the
labeler's own relaxation at a few compositions checks it.

Cell and positions relax together under ``ase.filters.FrechetCellFilter`` with FIRE,
to ``fmax`` on forces and on the filter's scaled stress.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from remote_al.records import RelaxRequest, RelaxResult
from remote_al.structures import from_extxyz, to_extxyz
from remote_al.torch_env import device_name, single_thread_torch


def relax_atoms(atoms, calc, fmax: float = 0.02, max_steps: int = 300, logfile=None) -> dict:
    """Relax ``atoms`` (a copy) with ``calc``; returns the relaxed Atoms and numbers."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    a = atoms.copy()
    a.calc = calc
    opt = FIRE(FrechetCellFilter(a), logfile=logfile)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    energy = float(a.get_potential_energy())
    if not np.isfinite(energy) or not np.all(np.isfinite(a.positions)):
        raise ValueError("relaxation produced non-finite energy or positions")
    out = a.copy()
    out.calc = None
    return {
        "atoms": out,
        "energy_eV_atom": energy / len(a),
        "volume_A3": float(a.get_volume()),
        "cell": tuple(float(x) for x in np.asarray(a.get_cell()).reshape(-1)),
        "converged": converged,
        "steps": int(opt.get_number_of_steps()),
    }


def relax_structure(req: RelaxRequest) -> RelaxResult:
    """Relax with each model of ``req.model_paths``, or with ``req.labeler``."""
    t0 = time.time()
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frames = from_extxyz(req.structure_extxyz)
    if len(frames) != 1:
        raise ValueError(f"relaxation takes one structure, got {len(frames)}")
    atoms = frames[0]
    atoms.calc = None
    runs, note, device = [], "", "cpu"
    if req.model_paths:
        if req.labeler:
            raise ValueError("give model_paths (ensemble relaxation) or labeler, not both")
        single_thread_torch()
        from deepmd.calculator import DP

        for k, path in enumerate(req.model_paths):
            runs.append(relax_atoms(atoms, DP(model=path), req.fmax, req.max_steps,
                                    logfile=str(workdir / f"relax-m{k}.log")))
        method = "ensemble"
        device = device_name()
    elif req.labeler:
        from remote_al.labelers import get_labeler

        labeler = get_labeler(req.labeler, req.labeler_settings)
        calc = labeler.relax_calculator(atoms, workdir)
        runs.append(relax_atoms(atoms, calc, req.fmax, req.max_steps, logfile=str(workdir / "relax.log")))
        method, note = labeler.name, labeler.note
    else:
        raise ValueError("nothing to relax with: give model_paths or labeler")
    relaxed = [r["atoms"] for r in runs]
    (workdir / "relaxed.extxyz").write_text(to_extxyz(relaxed))
    return RelaxResult(
        task_key=req.task_key,
        method=method,
        natoms=len(atoms),
        volumes_A3=tuple(r["volume_A3"] for r in runs),
        cells=tuple(r["cell"] for r in runs),
        energies_eV_atom=tuple(r["energy_eV_atom"] for r in runs),
        converged=tuple(r["converged"] for r in runs),
        steps=tuple(r["steps"] for r in runs),
        relaxed_extxyz=to_extxyz(relaxed),
        wall_s=time.time() - t0,
        device=device,
        note=note,
    )
