"""Prefactor sweeps: the sweep file, the fixed held-out split, a real 2-point sweep and its resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from driver.errors import ConfigError
from driver.sweep import prepare_data, run_sweep
from driver.sweep_spec import Prefactors, load_sweep, parse_sweep

TYPE_MAP = ["Li", "Ni", "O"]


def _synthetic_systems(root: Path, n: int = 10) -> list[str]:
    """Random (not physical) labeled frames as deepmd/npy: enough for the file plumbing."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.deepmd_data import write_systems
    from remote_al.structures import cathode_cell

    rng = np.random.default_rng(0)
    frames = []
    for x in (1.0, 0.75):
        for _ in range(n):
            a = cathode_cell(x)
            a.positions += rng.normal(0, 0.05, a.positions.shape)
            a.calc = SinglePointCalculator(a, energy=float(rng.normal(-90, 1)), forces=rng.normal(0, 0.3, (len(a), 3)))
            frames.append(a)
    return write_systems(frames, root / "deepmd", TYPE_MAP)


def _sweep_data(systems, **sweep) -> dict:
    s = {"name": "t", "type_map": TYPE_MAP, "systems": list(systems), **sweep}
    return {"sweep": s, "grid": {"start_pref_e": [0.02, 1.0], "limit_pref_e": 1.0,
                                 "start_pref_f": [1000.0], "limit_pref_f": [1.0]}}


def test_grid_and_points(tmp_path):
    systems = _synthetic_systems(tmp_path)
    data = _sweep_data(systems)
    data["points"] = [{"start_pref_e": 0.1, "limit_pref_e": 10, "start_pref_f": 100, "limit_pref_f": 0.1},
                      {"start_pref_e": 1.0, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1}]  # dup
    spec = parse_sweep(data, tmp_path)
    assert [p.id for p in spec.points] == ["e0.02-1_f1000-1", "e1-1_f1000-1", "e0.1-10_f100-0.1"]
    assert spec.points[0].loss() == {"start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 1000.0,
                                     "limit_pref_f": 1.0}
    assert spec.output == (tmp_path / "sweeps" / "t").resolve()
    # globs relative to the file
    data["sweep"]["systems"] = ["deepmd/*"]
    assert len(parse_sweep(data, tmp_path).systems) == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["sweep"].update(numb_step=10), "sweep.numb_step"),
        (lambda d: d["sweep"].pop("systems"), "sweep.systems"),
        (lambda d: d["sweep"].update(systems=["nowhere/*"]), "sweep.systems"),
        (lambda d: d["grid"].update(start_pref_v=[1.0]), "grid.start_pref_v"),
        (lambda d: d["grid"].pop("limit_pref_f"), "grid.limit_pref_f"),
        (lambda d: d["grid"].update(start_pref_e=["a"]), "grid.start_pref_e"),
        (lambda d: d["grid"].update(limit_pref_e=[0.0], limit_pref_f=[0.0]), "grid"),
        (lambda d: d.pop("grid"), "grid"),
        (lambda d: d["sweep"].update(test_fraction=1.5), "sweep.test_fraction"),
        (lambda d: d.update(backend={"gpu_slots": 0}), "backend.gpu_slots"),
    ],
)
def test_sweep_file_errors_name_the_field(tmp_path, change, field):
    data = _sweep_data(_synthetic_systems(tmp_path))
    change(data)
    with pytest.raises(ConfigError) as exc:
        parse_sweep(data, tmp_path)
    assert exc.value.field == field


def test_example_sweep_file_parses(tmp_path):
    """examples/sweep.toml is valid once its systems exist (they come from the example campaign)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "examples" / "sweep.toml").read_text())
    data["sweep"]["systems"] = _synthetic_systems(tmp_path)
    spec = parse_sweep(data, root / "examples")
    assert len(spec.points) == 4 and spec.numb_steps <= 150


def test_held_out_split_is_fixed(tmp_path):
    from ase.io import read

    systems = _synthetic_systems(tmp_path)
    spec = parse_sweep(_sweep_data(systems, output=str(tmp_path / "out"), test_fraction=0.2), tmp_path)
    train, test = prepare_data(spec)
    from remote_al.deepmd_data import n_frames

    held = read(test, index=":")
    assert len(held) == 4  # 20 % of 10 frames in each of two systems
    assert sum(n_frames(s) for s in train) == 16
    # a second call (a resumed sweep) returns the very same data
    assert prepare_data(spec) == (train, test)
    assert len(read(test, index=":")) == 4


# ------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_two_point_sweep_and_resume(labeled_dir, local_backend, tmp_path):
    out = tmp_path / "sweep"
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        f"""[sweep]
name = "two"
output = "{out}"
type_map = {json.dumps(TYPE_MAP)}
systems = {json.dumps([str(s) for s in labeled_dir['systems']])}
test_fraction = 0.25
numb_steps = 40
seed = 3

[[points]]
start_pref_e = 0.02
limit_pref_e = 1.0
start_pref_f = 1000.0
limit_pref_f = 1.0

[[points]]
start_pref_e = 1.0
limit_pref_e = 1.0
start_pref_f = 10.0
limit_pref_f = 1.0
"""
    )
    spec = load_sweep(toml)
    lines: list[str] = []
    ticks: list = []
    outcome = run_sweep(spec, local_backend, say=lines.append, on_progress=ticks.append, progress_every_s=0.2)
    ids = [p.id for p in spec.points]
    # the training points' progress came while they ran: their ids, steps of the 40 asked
    seen = [t for tick in ticks for t in tick]
    assert {t.key for t in seen} <= set(ids) and seen
    steps = [t.progress.step for t in seen if t.progress is not None]
    assert steps and all(0 < s <= 40 for s in steps) and all(t.progress.steps_total == 40 for t in seen if t.progress)
    assert outcome.ran == tuple(ids) and outcome.skipped == () and outcome.failed == {}
    assert [r["point"] for r in outcome.rows] == ids
    for row in outcome.rows:
        assert math.isfinite(row["energy_rmse_meV_atom"]) and math.isfinite(row["force_rmse_eV_A"])
        assert row["n_test_frames"] == 4 and row["n_train_frames"] == 8
    # each point trained with its own loss prefactors, everything else the same
    inputs = [json.loads((out / "points" / i / "train" / "input.json").read_text()) for i in ids]
    assert inputs[0]["loss"]["start_pref_f"] == 1000.0 and inputs[1]["loss"]["start_pref_f"] == 10.0
    assert inputs[0]["model"] == inputs[1]["model"] and inputs[0]["training"]["numb_steps"] == 40
    with open(outcome.table_csv) as fh:
        table = list(csv.DictReader(fh))
    assert [r["point"] for r in table] == ids and all(float(r["force_rmse_eV_A"]) > 0 for r in table)
    assert json.loads(outcome.table_json.read_text())["missing"] == []
    assert outcome.heatmap.stat().st_size > 5000

    # resume: both result files exist, nothing is trained again (not even a backend started)
    stamps = {i: (out / "points" / i / "result.json").stat().st_mtime_ns for i in ids}
    again = run_sweep(spec, say=lines.append)
    assert again.ran == () and again.skipped == tuple(ids)
    assert not (out / "engine").exists()
    assert {i: (out / "points" / i / "result.json").stat().st_mtime_ns for i in ids} == stamps
    assert again.rows == outcome.rows

    # the CLI resumes the same way
    from driver.cli import main

    assert main(["sweep", str(toml)]) == 0
    assert not (out / "engine").exists()


def test_prefactor_ids_are_file_names():
    p = Prefactors(0.02, 1.0, 1000.0, 0.5)
    assert p.id == "e0.02-1_f1000-0.5" and "/" not in p.id


def test_heatmap_of_a_partial_grid(tmp_path):
    from driver.plots import plot_sweep_heatmap

    rows = [
        {**Prefactors(0.02, 1.0, 1000.0, 1.0).loss(), "energy_rmse_meV_atom": 12.0, "force_rmse_eV_A": 0.2},
        {**Prefactors(1.0, 1.0, 100.0, 1.0).loss(), "energy_rmse_meV_atom": 5.0, "force_rmse_eV_A": 0.4},
        {**Prefactors(1.0, 1.0, 1000.0, 1.0).loss(), "energy_rmse_meV_atom": None, "force_rmse_eV_A": None},
    ]
    assert plot_sweep_heatmap(rows, tmp_path / "h.png").stat().st_size > 5000  # 2 x 2 with blank cells
    assert plot_sweep_heatmap([], tmp_path / "empty.png").stat().st_size > 1000
