"""The pieces of benchmarks/al_efficiency.py that need no training or labels: the DP-GEN
deviation, strategy names, the budget fill, labels-to-target with its bootstrap, the
feature study's measures, the 10k-candidate timing and the summary/headline layout."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "al_efficiency.py"
_spec = importlib.util.spec_from_file_location("al_efficiency", _PATH)
ale = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("al_efficiency", ale)  # dataclasses look their module up
_spec.loader.exec_module(ale)


def test_max_force_deviation_is_dpgen_definition():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 5, 3))
    expected = np.linalg.norm(np.std(f, axis=0), axis=-1).max()  # DP-GEN's calc_model_devi_f
    got = ale.max_force_deviation([f, np.zeros((4, 3, 3))])
    assert got[0] == pytest.approx(expected)
    assert got[1] == 0.0


def test_strategy_names():
    assert ale.parse_strategy("kmeans_group@awh") == ("kmeans", True, "awh")
    assert ale.parse_strategy("lcmd") == ("lcmd", False, "desc")
    assert ale.parse_strategy("random") == ("random", False, "desc")
    for bad in ("random_group", "best", "lcmd@colour"):
        with pytest.raises(ValueError):
            ale.parse_strategy(bad)
    for name in ale.STRATEGIES:
        ale.parse_strategy(name)
    assert ale.DEFAULT in ale.STRATEGIES[:5] and "random" in ale.STRATEGIES[:5] and "oracle" in ale.STRATEGIES[:5]
    # a rule with its own trust bound is a driver rule under a tighter bound than the benchmark's
    assert ale.parse_strategy("topk_u2") == ("topk_u2", False, "desc")
    for name, upper in ale.RULE_UPPER.items():
        assert name in ale.STRATEGIES and ale.RULES[name] in ale.RULES.values()
        assert 0 < upper < ale.Settings().force_upper


def test_random_is_seeded_unique_and_from_unlabeled():
    unlabeled = list(range(10, 60))
    a = ale.select_random(unlabeled, 8, np.random.default_rng(3))
    b = ale.select_random(unlabeled, 8, np.random.default_rng(3))
    assert a == b and len(set(a)) == 8 and set(a) <= set(unlabeled)
    assert ale.select_random([1, 2], 5, np.random.default_rng(0)) == [1, 2]


def test_fill_budget_below_threshold_then_above_upper():
    score = np.array([0.5, 0.05, 5.0, 0.3, 0.08, 0.01, 4.0])
    unl = list(range(7))
    # picked 0 and 3 (the eligible ones): below the threshold highest first, then above the bound lowest first
    assert ale.fill_budget(unl, score, [0, 3], 4, 0.1, 3.0) == [4, 1]
    assert ale.fill_budget(unl, score, [0, 3], 7, 0.1, 3.0) == [4, 1, 5, 6, 2]
    assert ale.fill_budget(unl, score, [0, 3], 2, 0.1, 3.0) == []
    # DP-GEN's window is [lo, hi): a frame at hi is outside
    assert ale.fill_budget([0, 1, 2], np.array([0.2, 1.0, 0.05]), [0], 3, 0.1, 1.0, window=True) == [2, 1]


def test_labels_to_reach_interpolates():
    n = [20, 35, 50, 65]
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.1], 0.25) == pytest.approx(42.5)
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.1], 0.5) == 20
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.15], 0.1) is None


def test_bootstrap_ratio():
    n = [20, 40, 60, 80]
    ref = np.array([[0.5, 0.4, 0.35, 0.30], [0.5, 0.42, 0.36, 0.32], [0.5, 0.41, 0.34, 0.31]])
    fast = ref - np.array([0.0, 0.08, 0.06, 0.05])  # reaches random's 0.31 between 40 and 60 labels
    b = ale.bootstrap_ratio(n, ref, fast, 500)
    assert b["ratio"] == pytest.approx(ale.labels_to_reach(n, fast.mean(0), 0.31) / 80)
    assert 0.5 < b["ratio"] < 0.75 and b["ci95"][0] <= b["ratio"] <= b["ci95"][1]
    assert b["share_of_resamples_reaching"] == 1.0 and b["seeds"] == 3
    same = ale.bootstrap_ratio(n, ref, ref, 200)
    assert same["ratio"] == pytest.approx(1.0, abs=0.02)
    slow = ale.bootstrap_ratio(n, ref, ref + 0.1, 200)
    assert slow["ratio"] is None and slow["ci95"] == [None, None] and slow["share_of_resamples_reaching"] == 0.0


def test_feature_measures():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.2, (30, 2)), rng.normal(5, 0.2, (30, 2))])
    err = np.concatenate([rng.uniform(0.0, 0.1, 30), rng.uniform(1.0, 1.1, 30)])
    assert ale.knn_error_skill(x, err) > 0.5
    assert abs(ale.knn_error_skill(rng.normal(size=(60, 2)), err)) < 0.4
    assert ale.cluster_purity(x, ["a"] * 30 + ["b"] * 30) == 1.0


def test_selection_timing_runs_small():
    t = ale.selection_timing(n=300, k=5)
    assert t["picked"] == 5 and t["feature_dim"] == 3 * 128 and t["selection_s_10k"] > 0


def _rec(pool, st, seed, rnd, f_in, n0=20, k=20):
    g = {"force_rmse_eV_A": f_in, "energy_rmse_meV_atom": 10.0, "max_force_error_eV_A": 1.0, "n_frames": 5}
    return {"pool": pool, "strategy": st, "seed": seed, "round": rnd, "n_labels": n0 + k * rnd, "n_selected": k * rnd,
            "test_by_group": {"in-distribution": g, "out-of-distribution": dict(g, force_rmse_eV_A=2 * f_in), "all": g,
                              "300 K": g},
            "selection": {"sources": {"300K": k}} if rnd else {}, "energy_rmse_meV_atom": 10.0,
            "force_rmse_eV_A": f_in, "pool_force_width_median": 1.0, "pool_max_devi_f_median": 0.5,
            "round_train_wall_s": 1.0}


def test_summary_headline_and_files(tmp_path):
    s = ale.Settings(seeds=2, rounds=2, k=20, strategies=("random", ale.DEFAULT, "oracle"), bootstrap=100)
    recs = []
    for pool in ale.POOLS:
        for seed in range(2):
            for st, curve in (("random", [0.5, 0.4, 0.3]), (ale.DEFAULT, [0.5, 0.35, 0.28]),
                              ("oracle", [0.5, 0.3, 0.25])):
                recs += [_rec(pool, st, seed, r, v + 0.01 * seed) for r, v in enumerate(curve)]
    recs.append(_rec("all", "lcmd_group", 0, 0, 0.5))  # unfinished: progress only
    summaries = {pool: ale.summarize(recs, s, pool) for pool in ale.POOLS}
    summ = summaries["all"]
    assert summ["complete_seeds"][ale.DEFAULT] == [0, 1] and "lcmd_group" not in summ["curves"]
    assert summ["progress_last_round_per_seed"]["lcmd_group"] == {"0": 0}
    per = summ["targets"][ale.HEADLINE_KEY]["per_strategy"]
    assert per["random"]["ratio"] == pytest.approx(1.0)
    assert per[ale.DEFAULT]["ratio"] == pytest.approx(ale.labels_to_reach([20, 40, 60], [0.505, 0.355, 0.285], 0.305) / 60)
    assert per["oracle"]["ratio"] < per[ale.DEFAULT]["ratio"] < 1.0
    h = ale.headline(summaries, s, {"selection_s_10k": 0.3})
    for pool in ("campaign_pool", "full_pool"):
        assert h[pool]["default_vs_random_labels_ratio"] == pytest.approx(per[ale.DEFAULT]["ratio"])
        assert h[pool]["oracle_vs_random_labels_ratio"] == pytest.approx(per["oracle"]["ratio"])
    assert h["seeds"] == 2 and h["max_labels"] == 60 and h["selection_s_10k"] == 0.3 and h["default"] == ale.DEFAULT
    assert h["partial"]  # the first pass has five rules; this one ran three
    payload = {"pools": summaries, "settings": {"members": 4, "k": 20}, "headline": h}
    ale.write_outputs(tmp_path, payload, recs)
    assert (tmp_path / "al_efficiency.png").exists() and (tmp_path / "al_efficiency_campaign_pool.png").exists()
    rows = (tmp_path / "al_efficiency.csv").read_text().splitlines()
    assert rows[0].startswith("pool,strategy,seed,round") and len(rows) == 1 + len(recs)
