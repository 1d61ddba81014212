"""The scoring of benchmarks/calibration_energy_weight.py (issue #20): refitted conformal
factors and per-composition coverage, energy bias and RMSE on a synthetic test set whose
answers are known. Nothing trains here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("calibration_energy_weight",
                                               ROOT / "benchmarks" / "calibration_energy_weight.py")
ew = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("calibration_energy_weight", ew)
_spec.loader.exec_module(ew)


def _pairs(rng, n_frames, atoms, bias, comp):
    w = rng.uniform(0.5, 2.0, n_frames * atoms)
    ew_ = rng.uniform(0.005, 0.02, n_frames)
    return {"aw": w, "ae": w * rng.standard_normal(w.size), "acomp": np.array([comp] * w.size),
            "ew": ew_, "ee": bias + ew_ * rng.standard_normal(n_frames), "ecomp": np.array([comp] * n_frames)}


def _cat(*ps):
    return {k: np.concatenate([p[k] for p in ps]) for k in ps[0]}


def test_score_recovers_nominal_coverage_and_reports_the_bias():
    rng = np.random.default_rng(0)
    cal = _cat(_pairs(rng, 200, 10, 0.0, "A"), _pairs(rng, 200, 10, 0.0, "B"))
    test = _cat(_pairs(rng, 400, 10, 0.0, "A"), _pairs(rng, 400, 10, 0.05, "B"))  # B: +50 meV/atom off
    row = ew.score(cal, test)
    # errors are width x N(0, 1): the conformal 95 % factor is about 1.96
    assert row["q_force"] == pytest.approx(1.96, abs=0.15) and row["q_energy"] == pytest.approx(1.96, abs=0.3)
    assert row["calibration_frames"] == 400
    assert 0.93 <= row["A"]["coverage_forces"] <= 0.97 and 0.92 <= row["A"]["coverage_energies"] <= 0.98
    assert abs(row["A"]["energy_mean_meV_atom"]) < 2
    # a bias of 50 meV/atom against widths of 5-20 meV/atom: almost nothing inside the bound
    assert row["B"]["energy_mean_meV_atom"] == pytest.approx(50, abs=2)
    assert row["B"]["coverage_energies"] < 0.1
    assert row["B"]["energy_rmse_meV_atom"] >= row["B"]["energy_mean_meV_atom"]
    assert row["all"]["coverage_energies"] == pytest.approx(
        (row["A"]["coverage_energies"] + row["B"]["coverage_energies"]) / 2, abs=1e-3)
