"""The references of benchmarks/calibration.py that the campaign's coverage is read against
(issue #20): the chance an exact conformal bound lands a cell in 0.90-0.98, and the
in-distribution calibrations (a factor per composition, one pooled factor), on synthetic
MD runs whose errors are known. Nothing trains here."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("calibration_bench", ROOT / "benchmarks" / "calibration.py")
cb = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("calibration_bench", cb)
_spec.loader.exec_module(cb)


def _runs(rng, comp, n_runs, frames, atoms, bias=0.0):
    """MD runs of one composition: per-frame energy errors width * N(bias, 1) / 1.96 and
    per-atom force errors |width * N(0, 1) / 1.96|: the 95 % bound is the width itself."""
    out = {k: [] for k in ("aw", "ae", "acomp", "atraj", "ew", "ee", "ecomp", "etraj")}
    for r in range(n_runs):
        ew = rng.uniform(0.005, 0.02, frames)
        aw = rng.uniform(0.5, 2.0, frames * atoms)
        out["ew"] += list(ew)
        out["ee"] += list(ew * (bias + rng.standard_normal(frames)) / 1.96)
        out["aw"] += list(aw)
        out["ae"] += list(np.abs(aw * rng.standard_normal(aw.size)) / 1.96)
        out["ecomp"] += [comp] * frames
        out["etraj"] += [f"{comp}#{r}"] * frames
        out["acomp"] += [comp] * aw.size
        out["atraj"] += [f"{comp}#{r}"] * aw.size
    return {k: np.array(v) for k, v in out.items()}


def _cat(*ps):
    return {k: np.concatenate([p[k] for p in ps]) for k in ps[0]}


def test_window_probability_matches_a_simulation_of_exact_conformal_bounds():
    rng = np.random.default_rng(0)
    n_cal, m, trials = 45, 80, 20000
    k = math.ceil((n_cal + 1) * 0.95)
    # the k-th smallest of n_cal uniform scores is the coverage of the conformal bound
    cover = np.sort(rng.uniform(size=(trials, n_cal)), axis=1)[:, k - 1]
    share = rng.binomial(m, cover) / m
    simulated = np.mean((share >= 0.90 - 1e-12) & (share <= 0.98 + 1e-12))
    assert abs(cb.window_probability(n_cal, m) - simulated) < 0.015
    assert cb.window_probability(n_cal, m) < cb.window_probability(1000, m) < cb.window_probability(None, m)
    assert math.isnan(cb.window_probability(10, m))  # too few frames for a 95 % quantile


def test_pooled_reference_is_near_nominal_when_compositions_behave_alike():
    rng = np.random.default_rng(1)
    test = _cat(_runs(rng, "A", 4, 60, 10), _runs(rng, "B", 4, 60, 12))
    ref = cb.in_distribution_pooled(test, ["A", "B"], 0.95)
    for comp in ("A", "B"):
        for what in ("forces", "energies"):
            assert 0.90 <= ref[comp][what]["mean"] <= 0.99
            assert ref[comp][what]["splits"] == 36  # C(4, 2) halves of each composition
            assert ref[comp][what]["runs"] == 4


def test_one_pooled_factor_cannot_serve_a_biased_and_an_unbiased_composition():
    rng = np.random.default_rng(2)
    # the biased composition has a sixth of the frames, as one of six compositions would
    test = _cat(_runs(rng, "A", 4, 150, 10), _runs(rng, "B", 4, 25, 12, bias=3.0))
    pooled = cb.in_distribution_pooled(test, ["A", "B"], 0.95)
    own = cb.in_distribution_crossfit(test, ["A", "B"], 0.95)
    # the pooled energy factor over-covers A and under-covers the biased B; forces unaffected
    assert pooled["A"]["energies"]["mean"] > 0.98 and pooled["A"]["energies"]["above"] > 0.9
    assert pooled["B"]["energies"]["mean"] < 0.90 and pooled["B"]["energies"]["below"] > 0.9
    # a factor of each composition's own puts both near 95 %
    for comp in ("A", "B"):
        assert 0.88 <= own[comp]["energies"]["mean"] <= 0.99
    cells = cb.in_distribution_cells({"1": {"in_distribution_pooled": pooled, "in_distribution_crossfit": own}},
                                     "in_distribution_pooled")
    assert cells["cells"] == 4 and cells["below"] >= 0.9 and cells["above"] >= 0.9


def test_references_sample_splits_when_there_are_too_many():
    rng = np.random.default_rng(3)
    test = _cat(*[_runs(rng, c, 6, 10, 4) for c in "ABCD"])  # C(6, 3)^4 = 160000 splits
    ref = cb.in_distribution_pooled(test, list("ABCD"), 0.95, max_splits=50)
    assert all(ref[c]["energies"]["splits"] == 50 for c in "ABCD")
    own = cb.in_distribution_crossfit(test, list("ABCD"), 0.95, max_splits=15)  # C(6, 3) = 20 each
    assert all(own[c][w]["splits"] == 15 for c in "ABCD" for w in ("forces", "energies"))
    assert cb.in_distribution_crossfit(test, ["A"], 0.95)["A"]["energies"]["splits"] == 20  # all of them
