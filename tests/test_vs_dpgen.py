"""The pure helpers of benchmarks/vs_dpgen.py (issue #22): the labels/wall-time to a target
RMSE and the headline's layout. Nothing runs DP-GEN or trains here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vs_dpgen", ROOT / "benchmarks" / "vs_dpgen.py")
vs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("vs_dpgen", vs)
_spec.loader.exec_module(vs)


def test_x_at_target_interpolates_the_first_crossing():
    xs, ys = [20, 32, 44, 56], [0.5, 0.4, 0.2, 0.1]
    assert vs.x_at_target(xs, ys, 0.3) == pytest.approx(38.0)  # halfway between 0.4 and 0.2
    assert vs.x_at_target(xs, ys, 0.4) == pytest.approx(32.0)  # on a point
    assert vs.x_at_target(xs, ys, 0.6) == 20.0  # already there at the first point
    assert vs.x_at_target(xs, ys, 0.05) is None  # never reached
    # not monotonic: the first time it comes down to the target counts
    assert vs.x_at_target([10, 20, 30, 40], [0.5, 0.2, 0.6, 0.1], 0.3) == pytest.approx(10 + 10 * 0.2 / 0.3)
    assert vs.x_at_target([], [], 0.3) is None
    assert vs.x_at_target([10, None, 30], [0.5, 0.1, 0.2], 0.3) == pytest.approx(10 + 20 * 0.2 / 0.3)


def _rows(labels, walls, forces, train=None):
    train = train or labels
    return [{"iteration": i, "labels": lb, "train_labels": t, "wall_s": w, "force_rmse": f, "energy_rmse": 10 * f}
            for i, (lb, t, w, f) in enumerate(zip(labels, train, walls, forces))]


def test_paired_uses_dpgens_final_rmse_as_the_target():
    dpgen = _rows([20, 32, 44], [100, 200, 300], [0.5, 0.4, 0.3])
    ours = _rows([44, 61, 78], [150, 250, 350], [0.45, 0.25, 0.2], train=[20, 32, 44])
    p = vs.paired(ours, dpgen)
    assert p["target_force_rmse"] == 0.3
    assert p["labels"]["dpgen"] == 44
    assert p["labels"]["ours"] == pytest.approx(44 + 17 * 0.15 / 0.2)
    assert p["labels"]["ratio"] == pytest.approx(p["labels"]["ours"] / 44)
    assert p["wall_s"]["ours"] == pytest.approx(150 + 100 * 0.15 / 0.2)
    assert p["train_labels"]["ours"] == pytest.approx(20 + 12 * 0.15 / 0.2)
    # DP-GEN already as good before its last iteration: its labels to the target are fewer
    early = _rows([20, 32, 44], [100, 200, 300], [0.5, 0.3, 0.3])
    assert vs.paired(ours, early)["labels"]["dpgen"] == 32


def test_headline_layout_and_null_when_a_seed_misses_the_target():
    dpgen = {0: {"finished": True, "rows": _rows([20, 32, 44], [100, 200, 300], [0.5, 0.4, 0.3])},
             1: {"finished": True, "rows": _rows([20, 32, 44], [100, 200, 300], [0.5, 0.4, 0.1])}}
    ours = {0: {"finished": True, "rows": _rows([44, 61, 78], [150, 250, 350], [0.45, 0.25, 0.2])},
            1: {"finished": True, "rows": _rows([44, 61, 78], [150, 250, 350], [0.45, 0.25, 0.2])},
            2: {"finished": False, "rows": _rows([44], [150], [0.45])}}
    h = vs.headline({"ours": ours, "dpgen": dpgen}, [0, 1, 2])
    for key in ("labels_ratio", "wall_ratio", "seeds", "final_force_rmse", "final_energy_rmse", "per_iteration"):
        assert key in h
    assert h["seeds"] == [0, 1]  # seed 2: DP-GEN did not run, ours did not finish
    assert h["seeds_requested"] == [0, 1, 2]
    assert h["labels_ratio"] is None and h["wall_ratio"] is None  # seed 1's target 0.1 never reached
    assert h["labels_ratio_per_seed"][0] == pytest.approx((44 + 17 * 0.15 / 0.2) / 44)
    assert h["labels_ratio_per_seed"][1] is None
    assert h["reached_per_seed"] == [True, False]
    assert h["final_force_rmse"]["ours"]["per_seed"] == [0.2, 0.2]
    assert h["final_force_rmse"]["dpgen"]["mean"] == pytest.approx(0.2)
    assert h["final_energy_rmse"]["dpgen"]["per_seed"] == [pytest.approx(3.0), pytest.approx(1.0)]
    assert set(h["per_iteration"]) == {"ours", "dpgen"}
    assert [r["iteration"] for r in h["per_iteration"]["ours"]["s2"]] == [0]
    assert h["per_iteration"]["dpgen"]["s2"] == []
    # every seed reached: the mean of the per-seed ratios
    h0 = vs.headline({"ours": ours, "dpgen": dpgen}, [0])
    assert h0["labels_ratio"] == pytest.approx(h0["labels_ratio_per_seed"][0])
    assert h0["wall_ratio"] == pytest.approx((150 + 100 * 0.15 / 0.2) / 300)


def test_quick_campaign_keys_and_missing_key():
    text = (ROOT / "examples" / "linio2.toml").read_text()
    quick = vs.set_toml_keys(text, vs.QUICK_TOML)
    import tomllib

    t = tomllib.loads(quick)
    assert t["campaign"]["max_rounds"] == 1
    assert t["training"]["numb_steps"] == 20 and t["training"]["numb_steps_continue"] == 10
    assert t["exploration"]["steps"] == 60
    with pytest.raises(ValueError):
        vs.set_toml_keys(text, {"no_such_key": "1"})


def test_dpgen_log_times(tmp_path):
    log = tmp_path / "dpgen.log"
    log.write_text("2025-01-01 10:00:00,000 - INFO : start dpgen\n"
                   "2025-01-01 10:00:05,500 - INFO : -------------------------iter.000000 task 02-----\n"
                   "2025-01-01 10:01:00,000 - INFO : -------------------------iter.000001 task 02-----\n")
    first, marks = vs._log_times(log)
    assert marks[(0, 2)] - first == pytest.approx(5.5)
    assert marks[(1, 2)] - first == pytest.approx(60.0)
    assert vs.step_seconds({(0, 1): 10.0, (0, 2): 70.0, (0, 4): 80.0}, 0) == {"train": 60.0}
