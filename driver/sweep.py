"""``remote-al sweep``: DeePMD loss prefactors trained and compared on the same data.

A sweep is a TOML file (format in docs/reports.md, example in examples/sweep.toml): the
deepmd/npy systems to train on, the held-out frames to evaluate on, training settings
shared by every point, and the points: a ``[grid]`` (cartesian product of lists of
``start_pref_e``, ``limit_pref_e``, ``start_pref_f``, ``limit_pref_f``) and/or
``[[points]]`` tables. Every point trains one model through a backend with the
registered ``train`` function (same data, same seed: only the loss prefactors differ)
and is evaluated on the same held-out frames with the registered ``uq`` function (the
model passed twice, so the errors are the model's own). Results go to
``OUTPUT/points/<point>/result.json``; a point whose result file exists is skipped, so
an interrupted sweep resumes where it stopped. The table (``results.csv``,
``results.json``) and the heat map (``heatmap.png``) are rewritten after every run.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import os
import shutil
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from driver.errors import ConfigError, TaskFailed

PREF_KEYS = ("start_pref_e", "limit_pref_e", "start_pref_f", "limit_pref_f")
SWEEP_KEYS = {
    "name", "output", "type_map", "systems", "test_extxyz", "test_systems", "test_fraction",
    "numb_steps", "seed", "subset_fraction", "deepmd", "confidence",
}
CSV_COLUMNS = (
    "point", *PREF_KEYS, "numb_steps", "n_train_frames", "n_test_frames", "energy_rmse_meV_atom",
    "energy_mae_meV_atom", "force_rmse_eV_A", "force_error_max_eV_A", "rmse_e_trn", "rmse_f_trn",
    "train_wall_s", "model_path",
)


@dataclass(frozen=True)
class Prefactors:
    start_pref_e: float
    limit_pref_e: float
    start_pref_f: float
    limit_pref_f: float

    @property
    def id(self) -> str:
        """A file-name-safe name, e.g. ``e0.02-1_f1000-1``."""
        return f"e{self.start_pref_e:g}-{self.limit_pref_e:g}_f{self.start_pref_f:g}-{self.limit_pref_f:g}"

    def loss(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    output: Path
    type_map: tuple[str, ...]
    systems: tuple[str, ...]
    points: tuple[Prefactors, ...]
    test_extxyz: str = ""
    test_systems: tuple[str, ...] = ()
    test_fraction: float = 0.2  # used when no held-out frames are given
    numb_steps: int = 1000
    seed: int = 1
    subset_fraction: float = 1.0
    confidence: float = 0.95
    deepmd: dict = field(default_factory=dict)
    gpu_slots: int = 2


@dataclass(frozen=True)
class SweepOutcome:
    rows: tuple[dict, ...]  # finished points, in sweep order
    ran: tuple[str, ...]  # point ids trained and evaluated in this run
    skipped: tuple[str, ...]  # point ids whose result file existed
    failed: dict  # point id -> error
    table_csv: Path
    table_json: Path
    heatmap: Path


# ------------------------------------------------------------------ the file
def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(where, f"expected a number, got {v!r}")
    if v < 0:
        raise ConfigError(where, f"must be non-negative, got {v}")
    return float(v)


def _paths(patterns, base: Path, where: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list):
        raise ConfigError(where, f"expected a list of paths, got {patterns!r}")
    out: list[str] = []
    for pat in patterns:
        full = str(pat if Path(pat).is_absolute() else base / pat)
        hits = sorted(glob.glob(full)) if any(c in full for c in "*?[") else [full]
        systems = [str(Path(h).resolve()) for h in hits if (Path(h) / "type.raw").exists()]
        if not systems:
            raise ConfigError(where, f"{pat!r} matches no deepmd/npy system (a directory with type.raw)")
        out += systems
    return tuple(dict.fromkeys(out))


def parse_sweep(data: dict, base_dir: Path) -> SweepSpec:
    """Validate a parsed sweep TOML; raises ConfigError naming the field."""
    unknown = sorted(set(data) - {"sweep", "grid", "points", "backend"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section", "valid sections: [sweep], [grid], [[points]], [backend]")
    s = data.get("sweep")
    if not isinstance(s, dict):
        raise ConfigError("sweep", "missing section", "add [sweep] with name, type_map and systems")
    bad = sorted(set(s) - SWEEP_KEYS)
    if bad:
        raise ConfigError(f"sweep.{bad[0]}", "unknown key", f"valid keys are {sorted(SWEEP_KEYS)}")
    for key in ("name", "type_map", "systems"):
        if key not in s:
            raise ConfigError(f"sweep.{key}", "required key is missing")
    name = s["name"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise ConfigError("sweep.name", f"{name!r} is not a usable directory name")
    tm = s["type_map"]
    if not isinstance(tm, list) or not tm or not all(isinstance(x, str) for x in tm):
        raise ConfigError("sweep.type_map", "expected a list of element symbols", 'e.g. ["Li", "Ni", "O"]')
    systems = _paths(s["systems"], base_dir, "sweep.systems")
    test_systems = _paths(s["test_systems"], base_dir, "sweep.test_systems") if s.get("test_systems") else ()
    test_extxyz = ""
    if s.get("test_extxyz"):
        p = Path(s["test_extxyz"])
        p = p if p.is_absolute() else base_dir / p
        if not p.exists():
            raise ConfigError("sweep.test_extxyz", f"{p} not found")
        test_extxyz = str(p)
    if test_extxyz and test_systems:
        raise ConfigError("sweep.test_extxyz", "give test_extxyz or test_systems, not both")
    fraction = float(s.get("test_fraction", 0.2))
    if not (test_extxyz or test_systems) and not 0.0 < fraction < 1.0:
        raise ConfigError("sweep.test_fraction", f"must lie in (0, 1), got {fraction}")
    steps = s.get("numb_steps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("sweep.numb_steps", f"expected a positive integer, got {steps!r}")
    subset = float(s.get("subset_fraction", 1.0))
    if not 0.0 < subset <= 1.0:
        raise ConfigError("sweep.subset_fraction", f"must lie in (0, 1], got {subset}")
    deepmd = s.get("deepmd", {})
    if not isinstance(deepmd, dict):
        raise ConfigError("sweep.deepmd", "expected a table of input.json overrides")

    points: list[Prefactors] = []
    grid = data.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            raise ConfigError("grid", "expected a table")
        for key in grid:
            if key not in PREF_KEYS:
                raise ConfigError(f"grid.{key}", "unknown key", f"valid keys are {list(PREF_KEYS)}")
        missing = [k for k in PREF_KEYS if k not in grid]
        if missing:
            raise ConfigError(f"grid.{missing[0]}", "required key is missing", "give a list (one value is fine)")
        values = []
        for k in PREF_KEYS:
            v = grid[k] if isinstance(grid[k], list) else [grid[k]]
            if not v:
                raise ConfigError(f"grid.{k}", "is empty")
            values.append([_number(x, f"grid.{k}") for x in v])
        points += [Prefactors(*combo) for combo in itertools.product(*values)]
    listed = data.get("points", [])
    if not isinstance(listed, list):
        raise ConfigError("points", "expected [[points]] tables")
    for i, p in enumerate(listed):
        where = f"points[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(where, "expected a table")
        extra = sorted(set(p) - set(PREF_KEYS))
        if extra:
            raise ConfigError(f"{where}.{extra[0]}", "unknown key", f"valid keys are {list(PREF_KEYS)}")
        missing = [k for k in PREF_KEYS if k not in p]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}", "required key is missing")
        points.append(Prefactors(*[_number(p[k], f"{where}.{k}") for k in PREF_KEYS]))
    points = list(dict.fromkeys(points))
    if not points:
        raise ConfigError("grid", "the sweep has no points", "add a [grid] or [[points]]")
    for p in points:
        if p.limit_pref_e == 0 and p.limit_pref_f == 0:
            raise ConfigError("grid", f"point {p.id} weights neither energy nor force at the end of training")

    backend = data.get("backend", {})
    if not isinstance(backend, dict) or set(backend) - {"gpu_slots"}:
        raise ConfigError("backend", "only gpu_slots is read here (the sweep runs on the local backend)")
    gpu_slots = backend.get("gpu_slots", 2)
    if isinstance(gpu_slots, bool) or not isinstance(gpu_slots, int) or gpu_slots < 1:
        raise ConfigError("backend.gpu_slots", f"expected a positive integer, got {gpu_slots!r}")
    output = Path(s.get("output") or f"sweeps/{name}")
    output = output if output.is_absolute() else (base_dir / output).resolve()
    return SweepSpec(
        name=name, output=output, type_map=tuple(tm), systems=systems, points=tuple(points),
        test_extxyz=test_extxyz, test_systems=test_systems, test_fraction=fraction, numb_steps=steps,
        seed=int(s.get("seed", 1)), subset_fraction=subset, confidence=float(s.get("confidence", 0.95)),
        deepmd=deepmd, gpu_slots=gpu_slots,
    )


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "sweep file not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_sweep(data, path.resolve().parent)


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
) -> SweepOutcome:
    """Train and evaluate every point without a result file; write the table and heat map.

    ``backend`` is any started ``driver.backends.base.Backend``; without one a
    ``LocalBackend`` is started under ``OUTPUT/engine`` (only if a point is left to run)
    and shut down at the end.
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
            failed = _run_points(spec, todo, backend, systems, test_text, say)
        finally:
            if own:
                backend.shutdown()
    return _finish(spec, tuple(p.id for p in todo if p.id not in failed), skipped, failed)


def _run_points(spec, todo, backend, systems, test_text, say) -> dict[str, str]:
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
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
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


__all__ = ["Prefactors", "SweepOutcome", "SweepSpec", "load_sweep", "parse_sweep", "prepare_data", "run_sweep"]
