"""The selection rules of benchmarks/al_efficiency.py (no training, no labels)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from driver.selection import Candidate, SelectionPolicy

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "al_efficiency.py"
_spec = importlib.util.spec_from_file_location("al_efficiency", _PATH)
ale = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("al_efficiency", ale)  # dataclasses look their module up
_spec.loader.exec_module(ale)


def _fp(i):
    # distinct fingerprints: distances differ by 0.1 A per id
    return ((("Li", 4), ("Ni", 4), ("O", 8)), np.array([1.9 + 0.1 * i, 2.8]))


def test_max_force_deviation_is_dpgen_definition():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 5, 3))
    expected = np.linalg.norm(np.std(f, axis=0), axis=-1).max()  # DP-GEN's calc_model_devi_f
    got = ale.max_force_deviation([f, np.zeros((4, 3, 3))])
    assert got[0] == pytest.approx(expected)
    assert got[1] == 0.0


def test_ours_takes_highest_widths_and_fills_below_threshold():
    policy = SelectionPolicy(force_threshold=0.1, force_upper=3.0, max_per_round=12, dedup_tolerance_A=0.05)
    widths = {0: 0.5, 1: 0.05, 2: 5.0, 3: 0.3, 4: 0.08, 5: 0.01}
    cands = [Candidate(i, 0.001, w, True, "", _fp(i)) for i, w in widths.items()]
    chosen, counts = ale.select_ours(cands, 2, policy)
    assert chosen == [0, 3]  # 2 is above the trust bound
    assert counts["unphysical"] == 1 and counts["filled_below_threshold"] == 0
    chosen, counts = ale.select_ours(cands, 3, policy)
    assert chosen == [0, 3, 4]  # two above the threshold, then the highest below it
    assert counts["filled_below_threshold"] == 1
    chosen, counts = ale.select_ours(cands, 5, policy)
    assert sorted(chosen) == [0, 1, 3, 4, 5]  # not the one above the trust bound while others are left
    chosen, counts = ale.select_ours(cands, 6, policy)
    assert chosen[-1] == 2 and counts["filled_above_upper"] == 1  # equal budgets: then it too
    # near-duplicates are not taken twice
    dup = [Candidate(0, 0.0, 0.5, True, "", _fp(0)), Candidate(1, 0.0, 0.4, True, "", _fp(0)),
           Candidate(2, 0.0, 0.3, True, "", _fp(2))]
    assert ale.select_ours(dup, 2, policy)[0] == [0, 2]


def test_random_is_seeded_unique_and_from_unlabeled():
    unlabeled = list(range(10, 60))
    a = ale.select_random(unlabeled, 8, np.random.default_rng(3))
    b = ale.select_random(unlabeled, 8, np.random.default_rng(3))
    assert a == b and len(set(a)) == 8 and set(a) <= set(unlabeled)
    assert ale.select_random([1, 2], 5, np.random.default_rng(0)) == [1, 2]


def test_dpgen_window_and_fill():
    ids = list(range(10))
    dev = [0.01, 0.02, 0.2, 0.25, 0.3, 0.9, 1.5, 0.04, 0.22, 0.05]
    chosen, info = ale.select_dpgen(ids, dev, 3, lo=0.1, hi=1.0, rng=np.random.default_rng(0))
    assert len(chosen) == 3 and set(chosen) <= {2, 3, 4, 5, 8}
    assert info == {"candidates": 5, "accurate": 4, "failed": 1, "filled_below_lo": 0}
    chosen, info = ale.select_dpgen(ids, dev, 7, lo=0.1, hi=1.0, rng=np.random.default_rng(0))
    assert chosen == sorted([2, 3, 4, 5, 8, 9, 7])  # window, then the highest deviations below lo
    assert info["filled_below_lo"] == 2


def test_labels_to_reach_interpolates():
    n = [20, 35, 50, 65]
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.1], 0.25) == pytest.approx(42.5)
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.1], 0.5) == 20
    assert ale.labels_to_reach(n, [0.4, 0.3, 0.2, 0.15], 0.1) is None
