"""Reports: lcurve parsing, parity and calibration metrics, threshold calibration, the HTML page.

Fast tests use synthetic arrays and a synthetic campaign state; the slow ones parse the
lcurve files of real trainings and evaluate real members for the parity plot.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from driver.metrics import calibration_table, parity_metrics
from driver.state import State
from remote_al.deepmd_data import parse_lcurve

TYPE_MAP = ("Li", "Ni", "O")
ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS")
PLOTS = ("lcurve-g000.png", "lcurve-g001.png", "rounds.png", "uncertainty.png", "parity.png", "calibration.png")


# ------------------------------------------------------------------ metrics
def test_parity_metrics_equal_numpy():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(7, 16, 3))
    pred = ref + rng.normal(0, 0.1, size=ref.shape)
    m = parity_metrics(pred, ref)
    d = (pred - ref).ravel()
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
    assert m["max"] == pytest.approx(np.max(np.abs(d)), rel=1e-12)
    assert m["n"] == d.size
    with pytest.raises(ValueError):
        parity_metrics(pred[:3], ref)
    with pytest.raises(ValueError):
        parity_metrics([], [])


def test_calibration_table_recovers_nominal_coverage():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.01, 1.0, 20000)
    errors = rng.normal(0.0, sigma)
    width = 2 * 1.959964 * sigma  # the exact 95 % interval of a N(0, sigma) error
    t = calibration_table(width, errors, 0.95, n_bins=5)
    assert t.overall_inside == pytest.approx(0.95, abs=0.01)
    assert all(abs(s - 0.95) < 0.02 for s in t.inside_share)
    assert sum(t.n) == t.n_total == 20000
    assert list(t.width_lo) == sorted(t.width_lo)
    # an interval half as wide holds P(|z| < 0.98) = 0.673 of the errors: overconfident
    t2 = calibration_table(width / 2, errors, 0.95)
    assert t2.overall_inside == pytest.approx(0.673, abs=0.015)
    assert len(t.rows()) == 5 and json.dumps(t.to_dict())


# ----------------------------------------------------------- synthetic campaign
LCURVE_VAL = """#  step      rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn         lr
# If there is no available reference data, rmse_*_{val,trn} will print nan
      1      3.8e+01    4.2e+01      9.9e-01    1.0e+00      1.2e+00    1.3e+00    1.0e-03
     50      1.7e+01    1.5e+01      1.3e-01    1.2e-01      5.4e-01    4.7e-01    8.0e-04
    100      1.4e+01    1.2e+01      2.0e-02    1.0e-02      4.9e-01    4.1e-01    6.0e-04
"""
LCURVE_NOVAL = """#  step      rmse_trn  rmse_e_trn  rmse_f_trn         lr
      1      4.2e+01    1.0e+00    1.3e+00    1.0e-03
     50      1.5e+01    1.2e-01    4.7e-01    8.0e-04
    100      1.2e+01    1.0e-02    4.1e-01    6.0e-04
"""

CAMPAIGN_TOML = """[campaign]
name = "mini"
type_map = ["Li", "Ni", "O"]

[[structures]]
name = "LiNiO2"

[selection]
force_threshold = 0.2
force_upper = 2.0

[labeler]
kind = "chgnet"
"""


def _structure(st: State, i: int, round_: int, split: str, extxyz: str = "x", **kw) -> int:
    return st.add_structure(
        hash=f"h{i}", origin="md" if round_ else "initial", split=split, round=round_,
        generation=round_ - 1, spec="LiNiO2", composition="Li4Ni4O8", natoms=16, extxyz=extxyz,
        status=kw.pop("status", "labeled"), **kw,
    )


def _label(st: State, sid: int, extxyz: str = "", status: str = "ok") -> None:
    from remote_al.records import STAND_IN_NOTE

    with st.transaction():
        st.db.execute(
            "INSERT INTO labels(structure_id, task_key, labeler, labeler_note, status, reason, energy, extxyz, created) "
            "VALUES(?,?,?,?,?,?,?,?,?)",
            (sid, "label:x", "chgnet", STAND_IN_NOTE if status == "ok" else "", status,
             "" if status == "ok" else "SCF did not converge", -90.0, extxyz, time.time()),
        )


def _model(st: State, g: int, m: int, path: str, lcurve: str) -> None:
    with st.transaction():
        st.db.execute(
            "INSERT INTO models VALUES(?,?,?,?,?,?,?,?,?,?)",
            (g, m, f"train:g{g}:m{m}", path, path + ".ckpt", lcurve, "{}", 20, 10.0, time.time()),
        )


def _synthetic_campaign(root: Path) -> Path:
    """Two generations, two rounds of exploration, stored evaluations; no model files."""
    d = root / "mini"
    d.mkdir()
    (d / "campaign.toml").write_text(CAMPAIGN_TOML)
    st = State(d / "state.sqlite")
    rng = np.random.default_rng(0)
    for k, v in {"phase": "done", "round": "2", "started": str(time.time() - 600),
                 "stop_reason": "round budget of 2 rounds reached"}.items():
        st.set_meta(k, v)
    st.event("stop", "round budget of 2 rounds reached")
    i = 0
    for r in range(3):
        for split, n in (("train", 5), ("test", 2)):
            for _ in range(n):
                sid = _structure(st, i, r, split)
                _label(st, sid)
                i += 1
    _label(st, _structure(st, i, 1, "train", status="label_failed"), status="failed")
    i += 1
    for r in (1, 2):
        for w in rng.lognormal(np.log(0.3 / r), 0.6, size=30):
            _structure(st, i, r, "train", status="candidate", force_width=float(w))
            i += 1
        for name, v in {"n_explored": 30, "confident_share": 0.3 * r, "n_selected": 5, "n_test": 2,
                        "force_width_median": 0.3 / r}.items():
            st.set_metric("round", r, name, v)
    (d / "work").mkdir()
    for g, text in ((0, LCURVE_VAL), (1, LCURVE_NOVAL)):
        for m in range(2):
            lc = d / "work" / f"train-g{g}-m{m}" / "lcurve.out"
            lc.parent.mkdir(parents=True)
            lc.write_text(text)
            _model(st, g, m, str(lc.parent / "model.pth"), str(lc))  # the model file does not exist
        with st.transaction():
            st.db.execute("INSERT INTO datasets VALUES(?,?,?,?,?,?)", (g, "x", "[]", "[]", 10 * (g + 1), time.time()))
        for scope in ("generation", "final"):
            for name, v in {"n_test": 6, "energy_rmse_meV_atom": 20.0 / (g + 1), "force_rmse_eV_A": 0.3 / (g + 1),
                            "force_inside_ci": 0.6, "force_width_mean": 0.2}.items():
                st.set_metric(scope, g, name, v)
    n = 12
    e_mean = rng.normal(-5.6, 0.05, n)
    fw = rng.uniform(0.05, 1.0, n)
    result = {"n_members": 2, "n_frames": n, "natoms": [16] * n, "energy_mean": e_mean.tolist(),
              "energy_error": rng.normal(0, 0.01, n).tolist(), "energy_width": rng.uniform(0, 0.02, n).tolist(),
              "force_width": fw.tolist(), "force_error_max": (fw * rng.uniform(0.2, 0.8, n)).tolist(),
              "force_rmse": (fw / 4).tolist(), "force_inside_ci": [0.7] * n}
    atom_w = np.repeat(fw, 16) * rng.uniform(0.3, 1.0, 16 * n)
    result.update(atom_force_width=atom_w.tolist(),
                  atom_force_error=(atom_w * np.abs(rng.standard_t(3, 16 * n))).tolist())
    from remote_al.calibration import fit_calibration, write_calibration

    write_calibration(d, fit_calibration(1, result["atom_force_width"], result["atom_force_error"],
                                         result["energy_width"], result["energy_error"], n, 2))
    st.add_task("final-eval:g1", "uq", "gpu", 2, 1, {})
    st.mark_done("final-eval:g1", result)
    st.add_task("label:r2:1-2", "label", "cpu", 2, 2, {})
    st.close()
    return d


def _check_page(index: Path, expected_plots) -> str:
    page = index.read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    for name in expected_plots:
        png = index.parent / name
        assert png.exists() and png.stat().st_size > 5000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert name in referenced, name
    for name in referenced:  # nothing referenced that is not there
        assert (index.parent / name).exists()
    return page


def test_report_renders_synthetic_campaign(tmp_path):
    d = _synthetic_campaign(tmp_path)
    from driver.report import write_report

    index = write_report(d)
    assert index == d / "report" / "index.html"
    page = _check_page(index, PLOTS)
    assert "stand-in for DFT" in page and "Labels are not DFT" in page
    assert "<th></th>" not in page  # no empty header row (the provenance table has none)
    assert page.index("<h2>Provenance</h2><table class='fields'><tbody><tr><td>remote-al version</td>") > 0
    assert "round budget of 2 rounds reached" in page
    assert "not on this machine" in page  # the models live elsewhere: stored results are used
    assert "stored evaluation" in page
    assert 'force_threshold = 0.2' in page  # campaign settings copied in
    assert "1 failed" in page and "g0: 10, g1: 20" in page
    assert "<td>0.60</td>" in page  # a round's confident share (round 2)
    # the calibration section: generation 1's stored file, its reliability on the stored
    # per-atom pairs, and targets in physical units turned into width thresholds
    assert "Calibrated uncertainty" in page and "Targets in physical units" in page
    assert (d / "report" / "reliability.png").stat().st_size > 5000 and "reliability.png" in page
    assert "threshold mode <b>fixed</b>: width threshold 0.2 eV/Å" in page
    assert "no (fallback)" in page  # 12 frames are too few for the 95 % energy quantile
    # ... and too few to say how far a fit's coverage can stray on new frames (19 needed)
    assert "coverage on new frames, 90 % range" in page and "<td>–; –</td>" in page
    assert not (d / "report" / "parity.npz").exists()


def test_report_cli_accepts_dir_and_toml(tmp_path, capsys):
    from driver.cli import main

    d = _synthetic_campaign(tmp_path)
    assert main(["report", str(d), "--no-parity"]) == 0
    assert (d / "report" / "index.html").exists()
    toml = tmp_path / "mini.toml"
    toml.write_text(CAMPAIGN_TOML.replace('name = "mini"', f'name = "mini"\nworkdir = "{d}"'))
    assert main(["report", str(toml), "--no-parity"]) == 0
    assert "report written" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_report_of_a_fresh_campaign(tmp_path):
    """A campaign that has not trained anything yet still gets a page, with notes."""
    from driver.report import write_report

    d = tmp_path / "fresh"
    State(d / "state.sqlite").close()
    page = write_report(d).read_text()
    assert "No exploration round finished yet" in page and "No trained members yet" in page
    _check_page(d / "report" / "index.html", ("rounds.png", "uncertainty.png"))


def test_learning_curve_plot_with_and_without_validation(tmp_path):
    from driver.plots import plot_learning_curves

    (tmp_path / "a").write_text(LCURVE_VAL)
    (tmp_path / "b").write_text(LCURVE_NOVAL)
    a, b = parse_lcurve(tmp_path / "a"), parse_lcurve(tmp_path / "b")
    assert "rmse_e_val" in a and "rmse_e_val" not in b
    out = plot_learning_curves({"m0": a, "m1": b}, tmp_path / "lc.png")
    assert out.stat().st_size > 5000


# --------------------------------------------------- real training and models
@pytest.fixture(scope="module")
def member_without_validation(labeled_dir, tmp_path_factory):
    from remote_al.records import TrainRequest
    from remote_al.training import train_member

    root = tmp_path_factory.mktemp("noval")
    return train_member(TrainRequest(
        task_key="noval", workdir=str(root / "m"), systems=tuple(labeled_dir["systems"]), type_map=TYPE_MAP,
        member=0, seed=3, subset_fraction=1.0, numb_steps=60,
    ))


@pytest.mark.slow
def test_lcurve_of_real_trainings(tiny_ensemble, member_without_validation, tmp_path):
    from driver.plots import plot_learning_curves

    curves = {}
    for i, r in enumerate(tiny_ensemble):
        lc = parse_lcurve(r.lcurve_path)
        assert {"step", "rmse_e_trn", "rmse_f_trn", "rmse_e_val", "rmse_f_val", "lr"} <= set(lc)
        assert lc["step"][-1] == 100 and all(len(v) == len(lc["step"]) for v in lc.values())
        assert np.all(np.isfinite(lc["rmse_f_val"])) and np.all(lc["rmse_f_trn"] > 0)
        curves[f"m{i}"] = lc
    lc = parse_lcurve(member_without_validation.lcurve_path)
    assert "rmse_e_trn" in lc and "rmse_f_trn" in lc
    assert not any(k.endswith("_val") for k in lc)  # no frames left out, no validation columns
    assert lc["step"][-1] == 60
    curves["all frames"] = lc
    assert plot_learning_curves(curves, tmp_path / "lc.png").stat().st_size > 5000


@pytest.mark.slow
def test_report_with_real_members(tiny_ensemble, labeled_dir, tmp_path):
    """A mini campaign whose held-out frames are real CHGNet labels and whose final
    generation is the two real members: parity is evaluated locally and cached."""
    from driver.report import PARITY_CACHE, write_report
    from remote_al.functions import evaluate_uncertainty
    from remote_al.records import UQRequest
    from remote_al.structures import to_extxyz

    d = tmp_path / "real"
    d.mkdir()
    (d / "campaign.toml").write_text(CAMPAIGN_TOML)
    st = State(d / "state.sqlite")
    st.set_meta("phase", "done")
    frames = labeled_dir["frames"]
    for i, a in enumerate(frames):
        sid = _structure(st, i, 0, "test")
        _label(st, sid, extxyz=to_extxyz(a))
    for g in (0, 1):
        for m, r in enumerate(tiny_ensemble):
            _model(st, g, m, r.model_path, r.lcurve_path)
    st.close()

    # the command, as a user's shell runs it: without DeePMD's thread variables set, and
    # DeePMD-kit imported for the first time: no thread warnings, a progress display, where
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "driver.cli", "report", str(d)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "report written: " + str(d / "report" / "index.html") in proc.stdout
    for noise in ("recommended to adjust", "OMP_NUM_THREADS", "DP_INFER_BATCH_SIZE"):
        assert noise not in proc.stdout + proc.stderr, proc.stderr
    index = d / "report" / "index.html"
    page = _check_page(index, ("lcurve-g000.png", "rounds.png", "uncertainty.png", "parity.png", "calibration.png"))
    assert "source: predict_ensemble" in page and "force component" in page
    assert "same models as generation 0" in page  # generation 1 carried the members over
    cache = d / "report" / PARITY_CACHE
    z = np.load(cache)
    n_comp = sum(3 * len(a) for a in frames)
    assert z["energy_pred"].shape == (len(frames),) and z["force_pred"].shape == (n_comp,)
    # the report's arrays agree with the registered UQ function on the same frames
    res = evaluate_uncertainty(UQRequest("x", str(tmp_path / "uq"), tuple(r.model_path for r in tiny_ensemble),
                                         to_extxyz(frames)))
    np.testing.assert_allclose(z["energy_pred"] - z["energy_ref"], res["energy_error"], atol=1e-8)
    np.testing.assert_allclose(z["frame_force_width"], res["force_width"], rtol=1e-8)
    np.testing.assert_allclose(z["frame_force_error"], res["force_error_max"], rtol=1e-8)
    # a second report reuses the cache
    mtime = cache.stat().st_mtime_ns
    write_report(d)
    assert cache.stat().st_mtime_ns == mtime


def test_running_mean_smooths_and_keeps_the_level():
    from driver.metrics import running_mean

    rng = np.random.default_rng(1)
    steps = np.arange(400)
    clean = 2.0 * np.exp(-steps / 150) + 0.1
    noisy = clean * np.exp(rng.normal(0, 0.3, steps.size))
    smooth = running_mean(noisy, 41)
    assert smooth.shape == noisy.shape and np.all(smooth > 0)
    # much closer to the underlying curve than the raw one, in log terms, and far less jumpy
    assert np.std(np.log(smooth / clean)) < 0.4 * np.std(np.log(noisy / clean))
    assert np.abs(np.diff(np.log(smooth))).mean() < 0.2 * np.abs(np.diff(np.log(noisy))).mean()
    assert abs(np.log(smooth[-1] / clean[-1])) < 0.15  # the end is a mean too
    np.testing.assert_allclose(running_mean([1.0, 4.0, 16.0], 3), [2.0, 4.0, 8.0])  # geometric
    np.testing.assert_allclose(running_mean([1.0, 4.0, 16.0], 3, log=False), [2.5, 7.0, 10.0])
    np.testing.assert_array_equal(running_mean(noisy, 1), noisy)


def test_learning_curve_legend_is_outside_the_panels(tmp_path, monkeypatch):
    """Every legend of the learning-curve figure sits beside the axes, not over the lines,
    and each curve is drawn twice: faint as recorded, and its running mean."""
    from matplotlib.figure import Figure

    from driver import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or Path(path))
    (tmp_path / "a").write_text(LCURVE_VAL)
    plots.plot_learning_curves({"m0": parse_lcurve(tmp_path / "a"), "m1": parse_lcurve(tmp_path / "a")}, tmp_path / "x.png")
    fig = saved[0]
    assert isinstance(fig, Figure)
    fig.draw_without_rendering()  # the constrained layout places the legend
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends and all(leg.get_window_extent().x0 >= max(ax.get_window_extent().x1 for ax in fig.axes)
                           for leg in legends)
    energy = fig.axes[0]
    assert len(energy.get_lines()) == 2 * 2 * 2  # members x (train, validation) x (raw, running mean)
    assert len(fig.legends[0].get_texts()) == 4  # the running means only
