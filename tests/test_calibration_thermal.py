"""The thermal weighting of the calibration (``selection.calibration_weighting = "thermal"``):
weighted split-conformal quantiles, the band of energies the campaign's MD visits, and the
fit a campaign writes with it. CPU, seconds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from driver.calibrate import calibrate_generation, labeler_minima, md_frame_weights, thermal_frame_weights
from remote_al.calibration import (K_B_EV, conformal_scale, effective_pairs, thermal_weights,
                                   weighted_conformal_scale)
from remote_al.structures import from_extxyz, to_extxyz

TEMPS = (300.0, 700.0)
N_ATOMS = 16


def synthetic_campaign_frames(rng, n: int, kind: str):
    """Per frame: its energy above the minimum (eV/atom) and one (width, error) pair. Thermal
    frames (what MD at TEMPS visits) have errors of scale 1 x the width; cold and hot frames
    (copies near the minimum, wild exploration frames) of scale 1.6, as measured."""
    t = rng.choice(TEMPS, n)
    thermal = rng.gamma(1.5 * N_ATOMS, K_B_EV * t / N_ATOMS)
    if kind == "test":
        x, scale = thermal, np.ones(n)
    else:
        which = rng.choice(3, n, p=[0.25, 0.5, 0.25])
        x = np.where(which == 0, rng.uniform(0, 0.004, n), np.where(which == 1, thermal, rng.uniform(0.25, 0.6, n)))
        scale = np.where(which == 1, 1.0, 1.6)
    w = rng.lognormal(-1.0, 0.5, n)
    return x, w, scale * w * np.abs(rng.normal(size=n))


def test_weighted_quantile_reduces_to_the_plain_one_and_guards_the_count():
    rng = np.random.default_rng(0)
    w, e = rng.lognormal(size=200), rng.normal(size=200)
    assert weighted_conformal_scale(w, e, np.ones(200)) == conformal_scale(w, e)
    keep = np.arange(200) < 60
    assert weighted_conformal_scale(w, e, keep.astype(float)) == conformal_scale(w[keep], e[keep])
    assert effective_pairs(keep.astype(float)) == pytest.approx(60)
    with pytest.raises(ValueError, match="effective calibration pairs"):
        weighted_conformal_scale(w, e, (np.arange(200) < 15).astype(float))
    with pytest.raises(ValueError, match="weights"):
        weighted_conformal_scale(w, e, np.ones(199))


def test_thermal_band_keeps_what_md_visits_and_drops_cold_and_hot_frames():
    mean_300 = 1.5 * K_B_EV * 300
    x = np.array([0.0, 0.2 * mean_300, mean_300, 1.5 * K_B_EV * 700, 0.5])
    band = thermal_weights(x, [N_ATOMS] * 5, TEMPS)
    assert band.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    # a hotter campaign visits higher energies
    assert thermal_weights([0.5], [N_ATOMS], (3000.0,)).tolist() == [1.0]
    with pytest.raises(ValueError, match="one entry per frame"):
        thermal_weights(x, [N_ATOMS] * 4, TEMPS)


def test_thermal_weighting_recovers_nominal_coverage_under_the_energy_shift():
    rng = np.random.default_rng(7)
    plain, thermal = [], []
    for _ in range(20):
        x, w, e = synthetic_campaign_frames(rng, 400, "calibration")
        band = thermal_weights(x, np.full(x.size, N_ATOMS), TEMPS)
        _, tw, te = synthetic_campaign_frames(rng, 4000, "test")
        plain.append(np.mean(np.abs(te) <= conformal_scale(w, e) * tw))
        thermal.append(np.mean(np.abs(te) <= weighted_conformal_scale(w, e, band) * tw))
    assert float(np.mean(plain)) > 0.975  # the unweighted fit is conservative on the MD's frames
    assert 0.94 <= float(np.mean(thermal)) <= 0.965


def labeled(symbols: str, energy_per_atom: float, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms(symbols, cell=[6, 6, 6], pbc=True)
    atoms.positions = rng.uniform(0, 6, (len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, energy=energy_per_atom * len(atoms),
                                       forces=np.zeros((len(atoms), 3)))
    return atoms


def test_a_campaign_writes_a_thermal_calibration_and_says_when_it_cannot(tmp_path):
    rng = np.random.default_rng(3)
    x, w, e = synthetic_campaign_frames(rng, 60, "calibration")
    frames = [labeled("LiNiO2" * 4, -5.9 + xi, i) for i, xi in enumerate(x)]
    natoms = [len(f) for f in frames]
    aw = np.repeat(w, natoms) * rng.uniform(0.5, 1.0, sum(natoms))
    ae = np.repeat(e, natoms) * rng.uniform(0.5, 1.0, sum(natoms))
    result = {"atom_force_width": aw.tolist(), "atom_force_error": ae.tolist(), "energy_width": w.tolist(),
              "energy_error": e.tolist(), "n_frames": 60, "natoms": natoms}
    sel = SimpleNamespace(confidence=0.95, calibration_min_frames=10, calibration_weighting="thermal")
    band = thermal_frame_weights(frames, {"LiNiO2": -5.9}, TEMPS)
    assert 19 <= band.sum() < 60
    cal = calibrate_generation(tmp_path, 1, result, None, sel, 4, frames=frames, minima={"LiNiO2": -5.9},
                               temperatures=TEMPS)
    data = json.loads((tmp_path / "calibration" / "g1.json").read_text())
    assert data["weighting"] == "thermal" and data["effective_frames"] == pytest.approx(band.sum())
    assert cal.energy_scale == conformal_scale(w[band > 0], e[band > 0])
    # without the frames (or a frame without its energy), the fit is the plain one and says why
    plain = calibrate_generation(tmp_path, 2, result, None, sel, 4, frames=None, temperatures=TEMPS)
    assert plain.weighting == "none" and plain.note.startswith("unweighted: ") and "unweighted" not in plain.source
    assert plain.energy_scale == conformal_scale(w, e)
    frames[0].calc = None
    with pytest.raises(ValueError, match="no labeler energy"):
        thermal_frame_weights(frames, {}, TEMPS)



def test_md_weighting_fits_on_the_frames_held_out_from_md_only(tmp_path):
    """``calibration_weighting = "md"``: only frames tagged ``held_out_md`` (held out from
    the campaign's MD) count; with fewer than the level needs, all frames, and the note says so."""
    rng = np.random.default_rng(5)
    n = 60
    x, w, e = synthetic_campaign_frames(rng, n, "calibration")
    frames = [labeled("LiNiO2" * 4, -5.9 + xi, i) for i, xi in enumerate(x)]
    md = np.arange(n) % 2 == 0
    for f, flag in zip(frames, md):
        if flag:
            f.info["held_out_md"] = "md:r1:LNO:T300:w0:g0"
    frames = from_extxyz("".join(to_extxyz(f) for f in frames))  # the tag survives the request's extxyz
    assert md_frame_weights(frames).tolist() == md.astype(float).tolist()
    natoms = [len(f) for f in frames]
    result = {"atom_force_width": np.repeat(w, natoms).tolist(), "atom_force_error": np.repeat(e, natoms).tolist(),
              "energy_width": w.tolist(), "energy_error": e.tolist(), "n_frames": n, "natoms": natoms}
    sel = SimpleNamespace(confidence=0.95, calibration_min_frames=10, calibration_weighting="md")
    cal = calibrate_generation(tmp_path, 1, result, None, sel, 4, frames=frames)
    assert cal.weighting == "md" and cal.effective_frames == md.sum() and cal.note == ""
    assert cal.energy_scale == conformal_scale(w[md], e[md]) != conformal_scale(w, e)
    few = [a.copy() for a in frames]
    for a in few[20:]:
        a.info.pop("held_out_md", None)
    cal = calibrate_generation(tmp_path, 2, result, None, sel, 4, frames=few)
    assert cal.effective_frames == 10 and "energies: unweighted fit" in cal.note
    assert cal.energy_scale == conformal_scale(w, e)  # 10 frames: too few for the energy quantile
    keep = np.repeat(md & (np.arange(n) < 20), natoms)
    assert cal.force_scale == conformal_scale(np.array(result["atom_force_width"])[keep],
                                              np.array(result["atom_force_error"])[keep])
    for a in few[8:]:  # 4 frames have 96 atoms, but the atoms of one frame are not independent
        a.info.pop("held_out_md", None)
    cal = calibrate_generation(tmp_path, 3, result, None, sel, 4, frames=few)
    assert "forces: unweighted fit (4 effective frames, fewer than the 10 asked for)" in cal.note
    assert cal.force_scale == conformal_scale(result["atom_force_width"], result["atom_force_error"])

def test_minima_come_from_the_labelers_relaxations(tmp_path):
    from driver.state import State
    from remote_al.functions import relax_structure
    from remote_al.records import RelaxRequest
    from remote_al.structures import cathode_cell, perturb

    st = State(tmp_path / "state.sqlite")
    # the labeler's relaxation as the campaign runs and stores it (remote_al.functions,
    # CHGNet): its energy is in energies_eV_atom, its relaxed structure has no calculator
    atoms = perturb(cathode_cell(1.0), 0.03, 0.0, np.random.default_rng(0))
    result = relax_structure(RelaxRequest(task_key="relax-label:LNO", workdir=str(tmp_path / "lab"),
                                          structure_extxyz=to_extxyz(atoms), labeler="chgnet", max_steps=5))
    st.add_task("relax-label:LNO", "relax_label", "cpu", 0, 0, {})
    st.mark_done("relax-label:LNO", result)
    formula = atoms.get_chemical_formula(empirical=True)
    assert labeler_minima(st) == pytest.approx({formula: result["energies_eV_atom"][0]})
    # a relaxed structure that carries its own energy counts too; the lower one is the minimum
    st.add_task("relax-label:x", "relax_label", "cpu", 0, 0, {})
    st.mark_done("relax-label:x", {"relaxed_extxyz": to_extxyz([labeled("LiNiO2" * 4, -9.0, 0),
                                                                labeled("Li3Ni4O8" * 2, -5.89, 1)])})
    assert labeler_minima(st) == pytest.approx({formula: -9.0, "Li3Ni4O8": -5.89})


def test_the_report_says_how_many_frames_were_in_the_band(tmp_path):
    from remote_al.calibration import Calibration

    from driver.report_calibration import CalibrationView, calibration_html

    cal = Calibration(1, "conformal", 0.95, 1.4, 2.1, 44, 700, 44, True, True, n_members=4,
                      weighting="thermal", effective_frames=27.0)
    view = CalibrationView(calibrations={1: cal}, used_thresholds={}, configured_threshold=0.1, target_force_error=0.1)
    text = "".join(calibration_html(view, tmp_path, lambda head, rows: str(rows), lambda *a: ""))
    assert "44 (27 in the thermal band)" in text and "pooled" not in text
    pooled = Calibration(2, "conformal", 0.95, 1.4, 2.1, 90, 1400, 90, True, True, n_members=4,
                         weighting="thermal", effective_frames=51.0, pooled_generations=[1])
    view = CalibrationView(calibrations={2: pooled}, used_thresholds={}, configured_threshold=0.1,
                           target_force_error=0.1)
    text = "".join(calibration_html(view, tmp_path, lambda head, rows: str(rows), lambda *a: ""))
    assert "90 (51 in the thermal band), generations 2 + 1 pooled" in text


def test_pooling_takes_the_previous_generations_pairs_in_and_says_so(tmp_path):
    """``calibration_pool = 2``: generation g's fit takes generation g-1's pairs too (each
    with its own ensemble's width and error), the thermal band weighs them alike, and the
    record names the generations pooled; a generation without pairs is left out."""
    from driver.calibrate import pooled_generations
    from remote_al.calibration import read_calibration

    assert pooled_generations(2, 1) == [] and pooled_generations(2, 2) == [1] and pooled_generations(1, 5) == [0]
    rng = np.random.default_rng(11)
    results, frames = [], []
    for g in range(2):
        x, w, e = synthetic_campaign_frames(rng, 100, "calibration")
        e = e * (1.0 + g)  # the generations' ensembles differ: the pooled scores are |e|/w of each
        fr = [labeled("LiNiO2" * 4, -5.9 + xi, i) for i, xi in enumerate(x)]
        natoms = [len(f) for f in fr]
        results.append({"atom_force_width": np.repeat(w, natoms).tolist(),
                        "atom_force_error": np.repeat(e, natoms).tolist(), "energy_width": w.tolist(),
                        "energy_error": e.tolist(), "n_frames": 100, "natoms": natoms})
        frames.append(fr)
    sel = SimpleNamespace(confidence=0.95, calibration_min_frames=10, calibration_weighting="thermal")
    cal = calibrate_generation(tmp_path, 1, results[1], None, sel, 4, frames=frames[1] + frames[0],
                               minima={"LiNiO2": -5.9}, temperatures=TEMPS, earlier=[(0, results[0], None)])
    band = thermal_frame_weights(frames[1] + frames[0], {"LiNiO2": -5.9}, TEMPS) > 0
    ew = np.concatenate([results[1]["energy_width"], results[0]["energy_width"]])
    ee = np.concatenate([results[1]["energy_error"], results[0]["energy_error"]])
    assert cal.n_frames == 200 and cal.effective_frames == band.sum()
    assert cal.energy_scale == conformal_scale(ew[band], ee[band]) != conformal_scale(ew[:100][band[:100]], ee[:100][band[:100]])
    stored = read_calibration(tmp_path, 1)
    assert stored.pooled_generations == [0] and "pooled with generation 0: 100 held-out test frames" in stored.source
    # the frames must match the pooled pairs: generation 1's alone leave the fit unweighted, and it says so
    cal = calibrate_generation(tmp_path, 1, results[1], None, sel, 4, frames=frames[1], minima={"LiNiO2": -5.9},
                               temperatures=TEMPS, earlier=[(0, results[0], None)])
    assert cal.weighting == "none" and cal.note.startswith("unweighted: ")
    # an earlier generation without pairs (its evaluation failed) is not named
    cal = calibrate_generation(tmp_path, 1, results[1], None, sel, 4, frames=frames[1], minima={"LiNiO2": -5.9},
                               temperatures=TEMPS, earlier=[(0, None, None)])
    assert cal.pooled_generations == [] and cal.n_frames == 100 and "pooled" not in cal.source
