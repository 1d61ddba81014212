"""The sweep file of ``remote-al sweep``: DeePMD loss prefactors to train and compare.

A sweep is a TOML file (format in docs/reports.md, example in examples/sweep.toml): the
deepmd/npy systems to train on, the held-out frames to evaluate on, training settings
shared by every point, and the points: a ``[grid]`` (cartesian product of lists of
``start_pref_e``, ``limit_pref_e``, ``start_pref_f``, ``limit_pref_f``) and/or
``[[points]]`` tables. :func:`load_sweep` reads and checks it (``ConfigError`` naming the
field); ``driver.sweep`` runs it.
"""

from __future__ import annotations

import glob
import itertools
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driver.errors import ConfigError

PREF_KEYS = ("start_pref_e", "limit_pref_e", "start_pref_f", "limit_pref_f")
SWEEP_KEYS = {
    "name", "output", "type_map", "systems", "test_extxyz", "test_systems", "test_fraction",
    "numb_steps", "seed", "subset_fraction", "deepmd", "confidence",
}

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


__all__ = ["PREF_KEYS", "Prefactors", "SweepSpec", "load_sweep", "parse_sweep"]
