"""``remote-al sweep``: DeePMD loss prefactors trained and compared on the same data.

The sweep file (``driver.sweep_spec``) names the data and the points. Every point
trains one model through a backend with the registered ``train`` function (same data,
same seed: only the loss prefactors differ) and is evaluated on the same held-out frames with the registered ``uq`` function (the
model passed twice, so the errors are the model's own). Results go to
``OUTPUT/points/<point>/result.json``; a point whose result file exists is skipped, so
an interrupted sweep resumes where it stopped. The table (``results.csv``,
``results.json``) and the heat map (``heatmap.png``) are rewritten after every run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import click
import numpy as np

from driver.errors import ConfigError, TaskFailed
from driver.sweep_spec import PREF_KEYS, Prefactors, SweepSpec, load_sweep

CSV_COLUMNS = (
    "point", *PREF_KEYS, "numb_steps", "n_train_frames", "n_test_frames", "energy_rmse_meV_atom",
    "energy_mae_meV_atom", "force_rmse_eV_A", "force_error_max_eV_A", "rmse_e_trn", "rmse_f_trn",
    "train_wall_s", "model_path",
)


@dataclass(frozen=True)
class SweepOutcome:
    rows: tuple[dict, ...]  # finished points, in sweep order
    ran: tuple[str, ...]  # point ids trained and evaluated in this run
    skipped: tuple[str, ...]  # point ids whose result file existed
    failed: dict  # point id -> error
    table_csv: Path
    table_json: Path
    heatmap: Path


# ------------------------------------------------------------------ the data
def _system_frames(sysdir: str) -> list:
    """Labeled Atoms of one deepmd/npy system."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.deepmd_data import read_system

    d = read_system(sysdir)
    symbols = [d["type_map"][t] for t in d["types"]]
    frames = []
    for i in range(d["energy"].shape[0]):
        a = Atoms(symbols, positions=d["coord"][i].reshape(-1, 3), cell=d["box"][i].reshape(3, 3), pbc=True)
        a.calc = SinglePointCalculator(a, energy=float(d["energy"][i]), forces=d["force"][i].reshape(-1, 3))
        frames.append(a)
    return frames


def prepare_data(spec: SweepSpec) -> tuple[tuple[str, ...], Path]:
    """Training systems and the held-out extxyz, fixed once per sweep under ``OUTPUT/data``.

    With ``test_fraction`` a seeded share of each system's frames is held out (at least
    one frame of each system with two or more frames). Written once, so a resumed sweep
    trains and evaluates every point on exactly the same frames.
    """
    from ase.io import read, write

    from remote_al.deepmd_data import n_frames, subset_system

    data = spec.output / "data"
    ready = data / "ready.json"
    if ready.exists():
        info = json.loads(ready.read_text())
        return tuple(info["train_systems"]), Path(info["test_extxyz"])
    tmp = spec.output / "data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if spec.test_extxyz or spec.test_systems:
        train = list(spec.systems)
        test_frames = (read(spec.test_extxyz, index=":") if spec.test_extxyz
                       else [a for s in spec.test_systems for a in _system_frames(s)])
        test_train_rel = None
    else:
        rng = np.random.default_rng(spec.seed)
        train_rel, test_frames = [], []
        for i, sysdir in enumerate(spec.systems):
            n = n_frames(sysdir)
            perm = rng.permutation(n)
            n_test = int(round(spec.test_fraction * n)) if n > 1 else 0
            n_test = min(max(n_test, 1 if n > 1 else 0), n - 1)
            name = f"{i:03d}-{Path(sysdir).name}"
            subset_system(sysdir, tmp / "train" / name, np.sort(perm[n_test:]))
            train_rel.append(f"train/{name}")
            if n_test:
                held = subset_system(sysdir, tmp / "test" / name, np.sort(perm[:n_test]))
                test_frames += _system_frames(held)
        train = []
        test_train_rel = train_rel
    if not test_frames:
        raise ConfigError("sweep.test_fraction", "no held-out frames: the systems hold too few frames",
                          "give test_extxyz or test_systems")
    write(tmp / "test.extxyz", test_frames, format="extxyz")
    shutil.rmtree(data, ignore_errors=True)
    os.replace(tmp, data)
    if test_train_rel is not None:
        train = [str(data / rel) for rel in test_train_rel]
    info = {"train_systems": train, "test_extxyz": str(data / "test.extxyz"), "n_test_frames": len(test_frames)}
    ready.write_text(json.dumps(info, indent=2))
    return tuple(train), data / "test.extxyz"


# ------------------------------------------------------------------ the run
def _train_request(spec: SweepSpec, point: Prefactors, systems, pdir: Path) -> dict:
    from remote_al.records import TrainRequest

    deepmd = json.loads(json.dumps(spec.deepmd))
    deepmd["loss"] = {**deepmd.get("loss", {}), **point.loss()}
    return TrainRequest(
        task_key=f"sweep-{spec.name}-{point.id}-train", workdir=str(pdir / "train"), systems=tuple(systems),
        type_map=spec.type_map, member=0, seed=spec.seed, subset_fraction=spec.subset_fraction,
        numb_steps=spec.numb_steps, deepmd=deepmd,
    ).to_dict()


def _point_row(spec: SweepSpec, point: Prefactors, train: dict, uq: dict) -> dict:
    e = np.array(uq["energy_error"], dtype=float)
    f = np.array(uq["force_rmse"], dtype=float)
    natoms = np.array(uq["natoms"], dtype=float)
    last = train.get("lcurve_last", {})
    return {
        "point": point.id, **point.loss(), "numb_steps": spec.numb_steps,
        "n_train_frames": train["n_train_frames"], "n_test_frames": uq["n_frames"],
        "energy_rmse_meV_atom": float(np.sqrt(np.mean(e**2)) * 1000),
        "energy_mae_meV_atom": float(np.mean(np.abs(e)) * 1000),
        # over every force component of every frame, as the campaign's evaluation does
        "force_rmse_eV_A": float(np.sqrt(np.sum(f**2 * natoms * 3) / np.sum(natoms * 3))),
        "force_error_max_eV_A": float(np.max(uq["force_error_max"])),
        "rmse_e_trn": last.get("rmse_e_trn"), "rmse_f_trn": last.get("rmse_f_trn"),
        "train_wall_s": train["wall_s"], "model_path": train["model_path"],
    }


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def run_sweep(
    spec: SweepSpec,
    backend=None,
    *,
    gpu_slots: int | None = None,
    say: Callable[[str], None] | None = None,
    on_progress: Callable[[list], None] | None = None,
    progress_every_s: float = 2.0,
) -> SweepOutcome:
    """Train and evaluate every point without a result file; write the table and heat map.

    ``backend`` is any started ``driver.backends.base.Backend``; without one a
    ``LocalBackend`` is started under ``OUTPUT/engine`` (only if a point is left to run)
    and shut down at the end. ``on_progress`` is called every ``progress_every_s`` with
    the training points still running (``driver.progress.TaskProgress``, read from their
    ``lcurve.out``).
    """
    say = say or (lambda msg: None)
    out = spec.output
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "sweep.json", {**asdict(spec), "output": str(out), "points": [p.loss() for p in spec.points]})
    todo = [p for p in spec.points if not (out / "points" / p.id / "result.json").exists()]
    skipped = tuple(p.id for p in spec.points if p not in todo)
    if skipped:
        say(f"sweep {spec.name}: {len(skipped)} points done already, skipped")
    failed: dict[str, str] = {}
    if todo:
        systems, test_path = prepare_data(spec)
        test_text = test_path.read_text()
        own = backend is None
        if own:
            from driver.backends.local import LocalBackend

            backend = LocalBackend(out / "engine", gpu_slots=gpu_slots or spec.gpu_slots, cpu_slots=1)
            backend.start()
        try:
            failed = _run_points(spec, todo, backend, systems, test_text, say, on_progress, progress_every_s)
        finally:
            if own:
                backend.shutdown()
    return _finish(spec, tuple(p.id for p in todo if p.id not in failed), skipped, failed)


def _run_points(spec, todo, backend, systems, test_text, say, on_progress=None,
                progress_every_s: float = 2.0) -> dict[str, str]:
    from driver.progress import TaskProgress, training_progress
    from remote_al.records import UQRequest

    pending: dict[Future, tuple[str, Prefactors, dict | None]] = {}
    failed: dict[str, str] = {}
    t0 = time.time()
    for p in todo:
        pdir = spec.output / "points" / p.id
        pdir.mkdir(parents=True, exist_ok=True)
        req = _train_request(spec, p, systems, pdir)
        try:
            sub = backend.submit("gpu", "train", req, req["task_key"])
        except TaskFailed as exc:  # refused before sending
            failed[p.id] = f"train: {exc}"
            say(f"point {p.id}: training refused: {exc}")
            continue
        pending[sub.future] = ("train", p, None)
    say(f"sweep {spec.name}: training {len(todo)} points, {spec.numb_steps} steps each")
    while pending:
        done, _ = wait(list(pending), timeout=progress_every_s if on_progress else None,
                       return_when=FIRST_COMPLETED)
        if on_progress:
            on_progress([TaskProgress(p.id, "train", training_progress(spec.output / "points" / p.id / "train"))
                         for stage, p, _ in pending.values() if stage == "train"])
        for fut in done:
            stage, p, train = pending.pop(fut)
            pdir = spec.output / "points" / p.id
            try:
                result = fut.result()
            except TaskFailed as exc:
                failed[p.id] = f"{stage}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
                (pdir / "error.txt").write_text(f"{stage} failed:\n{exc}\n")
                say(f"point {p.id}: {stage} failed: {failed[p.id]}")
                continue
            if stage == "train":
                key = f"sweep-{spec.name}-{p.id}-eval"
                req = UQRequest(
                    task_key=key, workdir=str(pdir / "eval"), model_paths=(result["model_path"],) * 2,
                    frames_extxyz=test_text, confidence=spec.confidence,
                ).to_dict()
                try:
                    sub = backend.submit("gpu", "uq", req, key)
                except TaskFailed as exc:  # e.g. held-out frames over the 10 MB task limit
                    failed[p.id] = f"eval: {exc}"
                    say(f"point {p.id}: evaluation refused: {exc}")
                    continue
                pending[sub.future] = ("eval", p, result)
                continue
            row = _point_row(spec, p, train, result)
            _write_json(pdir / "result.json", row)
            (pdir / "error.txt").unlink(missing_ok=True)
            say(f"point {p.id}: energy RMSE {row['energy_rmse_meV_atom']:.2f} meV/atom, force RMSE "
                f"{row['force_rmse_eV_A']:.3f} eV/A ({time.time() - t0:.0f} s)")
    return failed


def _finish(spec: SweepSpec, ran, skipped, failed) -> SweepOutcome:
    from driver.plots import plot_sweep_heatmap

    out = spec.output
    rows = []
    for p in spec.points:
        f = out / "points" / p.id / "result.json"
        if f.exists():
            rows.append(json.loads(f.read_text()))
    csv_path, json_path = out / "results.csv", out / "results.json"
    with open(csv_path.with_suffix(".csv.tmp"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(csv_path.with_suffix(".csv.tmp"), csv_path)
    _write_json(json_path, {"sweep": spec.name, "rows": rows, "failed": failed,
                            "missing": [p.id for p in spec.points if p.id not in {r["point"] for r in rows}]})
    heat = plot_sweep_heatmap(rows, out / "heatmap.png")
    return SweepOutcome(tuple(rows), tuple(ran), tuple(skipped), dict(failed), csv_path, json_path, heat)


# ------------------------------------------------------------------ the command
def cmd_sweep(args) -> int:
    from driver.progress import ProgressBars

    spec = load_sweep(args.sweep)
    with ProgressBars() as bars:
        outcome = run_sweep(spec, gpu_slots=args.gpu_slots, say=print, on_progress=bars.update)
    print(f"sweep results: {outcome.table_csv}, {outcome.heatmap}")
    return 1 if outcome.failed else 0


@click.command("sweep")
@click.argument("sweep")
@click.option("--gpu-slots", type=int, default=None, help="members trained at once (override [backend])")
def sweep_command(**kwargs) -> int:
    """Train and evaluate DeePMD loss prefactors on the same data.

    SWEEP is the sweep TOML file (docs/reports.md).
    """
    return cmd_sweep(SimpleNamespace(**kwargs))


__all__ = ["SweepOutcome", "prepare_data", "run_sweep"]
