"""``remote-al predict``: a campaign's ensemble on any structures, with calibrated error bars.

For each frame of an extxyz/POSCAR/CIF file: the ensemble-mean energy and forces of one
generation (the newest by default), the seed's Student-t widths, and the calibrated 95 %
bounds of that generation (``remote_al.calibration``, ``calibration/g<N>.json``). The
ensemble runs as a ``uq`` task through a backend (the local engine by default), like every
other evaluation, so the driver itself never loads a model.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from driver.errors import ConfigError
from remote_al.calibration import Calibration, latest_calibration, read_calibration
from remote_al.records import UQRequest


@dataclass(frozen=True)
class Prediction:
    """One frame: ensemble means, seed widths and calibrated 95 % bounds."""

    index: int
    formula: str
    natoms: int
    energy_eV: float
    energy_eV_atom: float
    energy_width_eV_atom: float  # seed width (95 % CI of the mean), per atom
    energy_bound_eV_atom: float  # calibrated 95 % bound on |error|, per atom
    forces: np.ndarray  # (N, 3) eV/A
    atom_force_width: np.ndarray  # (N,) eV/A, seed width per atom (largest component)
    atom_force_bound: np.ndarray  # (N,) eV/A, calibrated 95 % bound per atom
    force_width: float  # max over atoms (the quantity selection thresholds)
    force_bound: float  # the frame's bound on its largest per-atom error (frame scale x force_width)
    generation: int
    calibrated: bool


def _read_frames(path: Path):
    from ase.io import read

    if not path.is_file():
        raise ConfigError(str(path), "structure file not found")
    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # ASE raises many kinds for unreadable files
        raise ConfigError(str(path), f"cannot read structures: {type(exc).__name__}: {exc}",
                          "give an extxyz, POSCAR or CIF file") from exc
    if not frames:
        raise ConfigError(str(path), "no structures in the file")
    return frames


def _generation(state, generation: int | None) -> int:
    gens = sorted({m["generation"] for m in state.models()})
    if not gens:
        raise ConfigError("campaign", "the campaign has no trained ensemble yet", "run `remote-al run` first")
    if generation is None:
        current = state.get_meta("current_generation")
        return int(current) if current is not None and int(current) in gens else gens[-1]
    if generation not in gens:
        raise ConfigError("--generation", f"no generation {generation}; the campaign has {gens}")
    return generation


def predict(campaign_dir: str | Path, structures: str | Path, generation: int | None = None,
            backend=None, timeout_s: float = 3600) -> list[Prediction]:
    """Predictions for every frame of ``structures`` with generation ``generation``'s ensemble.

    ``backend``: a started backend; default: a local one in ``<campaign>/predict-engine``."""
    from driver.campaign import open_campaign_state
    from remote_al.structures import to_extxyz

    campaign_dir = Path(campaign_dir)
    state = open_campaign_state(campaign_dir)
    try:
        g = _generation(state, generation)
        model_paths = tuple(m["path"] for m in state.models(g))
        confidence = json.loads(state.get_meta("config_json") or "{}").get("selection", {}).get("confidence", 0.95)
    finally:
        state.close()
    cal = read_calibration(campaign_dir, g) or latest_calibration(campaign_dir, up_to=g)
    frames = _read_frames(Path(structures))
    for a in frames:
        a.calc = None
    key = f"predict-{uuid.uuid4().hex[:8]}"
    req = UQRequest(task_key=key, workdir=str(campaign_dir / "work" / key), model_paths=model_paths,
                    frames_extxyz=to_extxyz(frames), confidence=confidence, return_forces=True)
    own = backend is None
    if own:
        from driver.backends import make_backend

        backend = make_backend("local", run_dir=campaign_dir / "predict-engine", gpu_slots=1, cpu_slots=1)
        backend.start()
    try:
        result = backend.submit("gpu", "uq", req.to_dict(), key).future.result(timeout=timeout_s)
    finally:
        if own:
            backend.shutdown()
    return _assemble(frames, result, g, cal)


def _assemble(frames, result: dict, g: int, cal: Calibration | None) -> list[Prediction]:
    if cal is None:  # a campaign from before calibration existed: the prediction interval
        from remote_al.calibration import prediction_interval_scale

        scale = prediction_interval_scale(int(result["n_members"]))
        cal = Calibration(g, "prediction_interval", 0.95, scale, scale, 0, 0, 0, False, False,
                          note="no calibration stored for this campaign")
    out, start = [], 0
    widths = np.asarray(result["atom_force_width"])
    for i, a in enumerate(frames):
        n = len(a)
        w = widths[start:start + n]
        start += n
        e_atom = float(result["energy_mean"][i])
        out.append(Prediction(
            index=i, formula=a.get_chemical_formula(), natoms=n,
            energy_eV=float(result["energy_total_mean"][i]), energy_eV_atom=e_atom,
            energy_width_eV_atom=float(result["energy_width"][i]),
            energy_bound_eV_atom=float(cal.energy_bound(result["energy_width"][i])),
            forces=np.asarray(result["forces_mean"][i], dtype=float),
            atom_force_width=w, atom_force_bound=cal.force_bound(w),
            force_width=float(w.max()), force_bound=float(cal.frame_force_bound(w.max())),
            generation=g, calibrated=cal.calibrated,
        ))
    return out


def write_predictions(frames_path: str | Path, predictions: list[Prediction], out: str | Path) -> Path:
    """The input frames with the predictions attached (extxyz: per-atom ``forces``,
    ``force_width``, ``force_bound``; per-frame energy, widths, bounds, generation)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = _read_frames(Path(frames_path))
    for a, p in zip(frames, predictions):
        a.calc = SinglePointCalculator(a, energy=p.energy_eV, forces=p.forces)
        a.arrays["force_width"] = p.atom_force_width
        a.arrays["force_bound"] = p.atom_force_bound
        a.info.update(energy_width_eV_atom=p.energy_width_eV_atom, energy_bound_eV_atom=p.energy_bound_eV_atom,
                      force_bound_max=p.force_bound, generation=p.generation, calibrated=p.calibrated)
    write(str(out), frames, format="extxyz")
    return Path(out)


# ------------------------------------------------------------------------ the CLI
def _campaign_dir(target: str) -> Path:
    from driver.config import campaign_directory

    p = campaign_directory(target)
    if not (p / "state.sqlite").exists():
        raise ConfigError(target, "no campaign here (no state.sqlite)", "give a campaign directory or its TOML file")
    return p


def cmd_predict(args) -> int:
    from rich.console import Console
    from rich.table import Table

    cdir = _campaign_dir(args.campaign)
    preds = predict(cdir, args.structures, generation=args.generation)
    table = Table(title=f"generation {preds[0].generation}: ensemble mean, seed width (95 % CI of the mean) and "
                        f"calibrated 95 % bound" + ("" if preds[0].calibrated else " (calibration is a fallback)"))
    for col in ("frame", "formula", "E (eV/atom)", "E width", "E bound", "F width (max, eV/Å)", "F bound (max, eV/Å)"):
        table.add_column(col, justify="right")
    for p in preds:
        table.add_row(str(p.index), p.formula, f"{p.energy_eV_atom:.4f}", f"{p.energy_width_eV_atom:.4f}",
                      f"{p.energy_bound_eV_atom:.4f}", f"{p.force_width:.3f}", f"{p.force_bound:.3f}")
    Console().print(table)
    if args.output:
        print(f"wrote {write_predictions(args.structures, preds, args.output)}")
    return 0


@click.command("predict", short_help="Energies, forces and calibrated 95 % error bounds.")
@click.argument("campaign")
@click.argument("structures")
@click.option("--generation", type=int, help="generation to use (default: the current one)")
@click.option("-o", "--output", help="write the frames with the predictions (extxyz)")
def predict_command(**kwargs) -> int:
    """Energies, forces and calibrated 95 % error bounds for any structures.

    CAMPAIGN is a campaign directory or TOML file; STRUCTURES an extxyz, POSCAR or CIF
    file (every frame is predicted).
    """
    return cmd_predict(SimpleNamespace(**kwargs))
