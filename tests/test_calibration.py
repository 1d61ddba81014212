"""Calibrated error bounds (remote_al.calibration): synthetic cases with known errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from remote_al.calibration import (
    Calibration,
    atom_force_errors,
    atom_force_widths,
    conformal_scale,
    coverage,
    coverage_range,
    fit_calibration,
    frame_pairs,
    latest_calibration,
    min_pairs,
    prediction_interval_scale,
    read_calibration,
    write_calibration,
)
from remote_al.uq import t_factor


def heavy_tailed_pairs(rng, n, over_confidence=3.0, dof=3.0):
    """Widths spread over a decade; true errors Student-t (3 dof) with a scale 3x what the
    width's half claims: an over-confident ensemble with heavy tails, as measured."""
    w = np.exp(rng.uniform(np.log(0.05), np.log(0.5), n))
    e = np.abs(rng.standard_t(dof, n)) * over_confidence * w / 2
    return w, e


def test_conformal_recovers_nominal_coverage_on_new_pairs():
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(300):
        w, e = heavy_tailed_pairs(rng, 200)
        q = conformal_scale(w, e, 0.95)
        w2, e2 = heavy_tailed_pairs(rng, 2000)
        covered.append(coverage(w2, e2, q))
    mean = float(np.mean(covered))
    # split-conformal: E[coverage] in [0.95, 0.95 + 1/(n+1)]
    assert 0.945 <= mean <= 0.96, mean
    # and the raw half-width covers far less on the same data
    w, e = heavy_tailed_pairs(rng, 5000)
    assert coverage(w, e, 0.5) < 0.6


def test_coverage_range_is_the_spread_of_what_a_fit_on_n_frames_covers():
    """The recorded 90 % range of the coverage on new frames matches repeated fits on n
    exchangeable pairs; it narrows with n, is None below the level's minimum, and a
    campaign's fit records it from the frames it used."""
    rng = np.random.default_rng(3)
    n = 45
    covered = [coverage(*heavy_tailed_pairs(rng, 20000), conformal_scale(*heavy_tailed_pairs(rng, n), 0.95))
               for _ in range(400)]
    lo, hi = coverage_range(n, 0.95)
    assert np.percentile(covered, 5) == pytest.approx(lo, abs=0.01)
    assert np.percentile(covered, 95) == pytest.approx(hi, abs=0.01)
    assert 0.88 < lo < 0.93 and 0.97 < hi < 0.995
    wide, narrow = coverage_range(19), coverage_range(1000)
    assert wide[1] - wide[0] > hi - lo > narrow[1] - narrow[0]
    assert coverage_range(18) is None and coverage_range(0) is None
    w, e = heavy_tailed_pairs(rng, 60)
    cal = fit_calibration(0, w, e, w[:30], e[:30], n_frames=30, n_members=4)
    assert cal.force_coverage_range == coverage_range(30) and cal.energy_coverage_range == coverage_range(30)
    assert Calibration.from_dict(cal.to_dict()) == cal
    short = fit_calibration(0, w, e, w[:5], e[:5], n_frames=30, n_members=4)  # energies fall back
    assert short.energy_coverage_range is None and short.force_coverage_range is not None
    gauss = fit_calibration(0, w, e, w, e, n_frames=60, n_members=4, method="gaussian_scale")
    assert gauss.force_coverage_range is None  # only a conformal fit has this law


def test_gaussian_scale_recovers_coverage_when_errors_are_gaussian():
    rng = np.random.default_rng(1)
    w = np.exp(rng.uniform(np.log(0.05), np.log(0.5), 20000))
    e = np.abs(rng.normal(size=w.size)) * 2.0 * w
    cal = fit_calibration(0, w[:5000], e[:5000], w[:100], e[:100], 100, 4, method="gaussian_scale")
    assert abs(coverage(w[5000:], e[5000:], cal.force_scale) - 0.95) < 0.01
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibration(0, w, e, w, e, 100, 4, method="isotonic")


def test_too_few_pairs_fall_back_and_say_so():
    assert min_pairs(0.95) == 19
    with pytest.raises(ValueError, match="too few"):
        conformal_scale(np.ones(18), np.ones(18), 0.95)
    assert conformal_scale(np.ones(19), np.arange(1, 20), 0.95) == 19.0
    cal = fit_calibration(0, np.ones(5), np.ones(5), np.ones(2), np.ones(2), n_frames=2, n_members=4)
    assert not cal.force_calibrated and not cal.calibrated and "prediction interval" in cal.note
    part = fit_calibration(0, np.ones(40), np.arange(40), np.ones(2), np.ones(2), n_frames=2, n_members=4)
    assert part.force_calibrated and not part.energy_calibrated and part.force_scale == 38.0
    assert cal.force_scale == pytest.approx(0.5 * np.sqrt(5)) == prediction_interval_scale(4)
    prev = Calibration(3, "conformal", 0.95, 2.5, 1.7, 30, 480, 30, True, True)
    cal = fit_calibration(4, np.ones(5), np.ones(5), np.ones(2), np.ones(2), n_frames=2, n_members=4, fallback=prev)
    assert not cal.calibrated and (cal.force_scale, cal.energy_scale) == (2.5, 1.7)
    assert "generation 3" in cal.note
    cal = fit_calibration(4, np.ones(50), np.ones(50), np.ones(30), np.ones(30), n_frames=5, n_members=4,
                          fallback=prev, min_frames=10)
    assert not cal.calibrated and "fewer than the 10" in cal.note


def test_threshold_in_physical_units():
    rng = np.random.default_rng(2)
    w, e = heavy_tailed_pairs(rng, 500)
    cal = fit_calibration(1, w, e, w, e, n_frames=40, n_members=4)
    assert cal.calibrated
    thr = cal.force_width_threshold(0.10)
    assert thr == pytest.approx(0.10 / cal.force_scale)
    # a frame at the threshold width has its 95 % bound exactly at the target
    assert cal.force_bound(thr) == pytest.approx(0.10)
    # a tighter target gives a lower width threshold (the thresholds differ by target)
    assert cal.force_width_threshold(0.05) < thr < cal.force_width_threshold(0.2)


def synthetic_frames(rng, n_frames, natoms=16):
    """Per-atom pairs of ``n_frames`` frames: each frame has its own width level (a decade
    apart at most) and atoms spread around it; errors heavy-tailed around each atom's width."""
    level = np.exp(rng.uniform(np.log(0.05), np.log(0.5), n_frames))
    w = np.concatenate([lv * rng.uniform(0.3, 1.0, natoms) for lv in level])
    e = np.abs(rng.standard_t(3.0, w.size)) * 1.5 * w
    return w, e, [natoms] * n_frames


def test_frame_scale_bounds_the_largest_atom_error_at_the_nominal_level():
    """The frame scale is fitted on (largest width, largest error) per frame and covers 95 %
    of new frames' largest errors; the threshold for a target uses it."""
    rng = np.random.default_rng(4)
    covered, atom_scale_covered = [], []
    for _ in range(200):
        w, e, n = synthetic_frames(rng, 60)
        fw, fe = frame_pairs(w, e, n)
        cal = fit_calibration(1, w, e, fw, fe, n_frames=60, n_members=4, frame_widths=fw, frame_errors=fe)
        w2, e2, n2 = synthetic_frames(rng, 2000)
        fw2, fe2 = frame_pairs(w2, e2, n2)
        covered.append(np.mean(fe2 <= cal.frame_force_bound(fw2)))
        atom_scale_covered.append(np.mean(fe2 <= cal.force_scale * fw2))
    assert 0.945 <= float(np.mean(covered)) <= 0.97, np.mean(covered)
    # the per-atom factor on the frame's width states another level for the frame's largest error
    assert abs(float(np.mean(atom_scale_covered)) - 0.95) > 0.01
    assert cal.force_width_threshold(0.2) == pytest.approx(0.2 / cal.frame_force_scale)
    assert cal.n_frame_pairs == 60
    # an older file (no frame scale) and too few frames: the per-atom scale stands in
    old = Calibration.from_dict({k: v for k, v in cal.to_dict().items() if k != "frame_force_scale"})
    assert old.frame_scale == old.force_scale
    few = fit_calibration(1, w, e, fw, fe, n_frames=60, n_members=4, frame_widths=fw[:10], frame_errors=fe[:10])
    assert few.frame_force_scale is None and few.frame_scale == few.force_scale and "per-atom factor stands in" in few.note
    with pytest.raises(ValueError, match="atoms"):
        frame_pairs(w, e, n[:-1])


def test_per_atom_widths_and_errors_follow_the_seed_width():
    rng = np.random.default_rng(3)
    members = rng.normal(size=(4, 7, 3))
    w = atom_force_widths(members)
    expected = t_factor(4) * members.std(axis=0, ddof=1).max(axis=1)
    np.testing.assert_allclose(w, expected)
    # permuting members changes nothing; identical members give zero width
    np.testing.assert_allclose(atom_force_widths(members[::-1]), w)
    assert np.all(atom_force_widths(np.repeat(members[:1], 4, axis=0)) == 0)
    ref = members.mean(axis=0) + np.array([0.1, -0.3, 0.2])
    np.testing.assert_allclose(atom_force_errors(members.mean(axis=0), ref), 0.3)


def test_calibration_file_round_trips_and_latest_is_found(tmp_path):
    a = Calibration(0, "conformal", 0.95, 2.0, 1.5, 6, 96, 6, True, False, n_members=4)
    b = Calibration(2, "conformal", 0.95, 2.4, 1.1, 14, 224, 14, True, True, n_members=4)
    write_calibration(tmp_path, a)
    path = write_calibration(tmp_path, b)
    data = json.loads(path.read_text())
    assert data["format"] == "remote-al calibration 1" and data["force_scale"] == 2.4
    assert read_calibration(tmp_path, 0) == a and read_calibration(tmp_path, 1) is None
    assert latest_calibration(tmp_path) == b
    assert latest_calibration(tmp_path, up_to=1) == a
    assert latest_calibration(tmp_path / "nowhere") is None


# ------------------------------------------------- remote-al predict, end to end
def test_predict_gives_ensemble_values_widths_and_calibrated_bounds(tiny_ensemble, labeled_dir, local_backend, tmp_path):
    """Real DeePMD members through the local backend; the bound is the stored calibration's
    scale times the seed width, frame by frame and atom by atom."""
    from ase.io import read, write

    from driver.predict import predict, write_predictions
    from driver.state import State
    from remote_al.ensemble import predict_ensemble
    from remote_al.uq import ensemble_ci_width

    camp = tmp_path / "camp"
    camp.mkdir()
    st = State(camp / "state.sqlite")
    for m, res in enumerate(tiny_ensemble):
        st.add_model(0, m, f"train:g0:m{m}", res.model_path)
    st.close()
    write_calibration(camp, Calibration(0, "conformal", 0.95, 2.5, 1.5, 20, 300, 20, True, True, n_members=2))
    frames = labeled_dir["frames"][:3]
    src = tmp_path / "in.extxyz"
    write(src, frames, format="extxyz")

    preds = predict(camp, src, backend=local_backend)
    assert [p.generation for p in preds] == [0, 0, 0] and all(p.calibrated for p in preds)
    energies, forces = predict_ensemble([r.model_path for r in tiny_ensemble], read(src, index=":"))
    for p, e, f in zip(preds, energies.T, forces):
        np.testing.assert_allclose(p.forces, f.mean(axis=0), atol=1e-10)
        assert p.energy_eV == pytest.approx(e.mean(), abs=1e-8)
        w = ensemble_ci_width(f, 0.95, axis=0).max(axis=1)
        np.testing.assert_allclose(p.atom_force_width, w, atol=1e-10)
        np.testing.assert_allclose(p.atom_force_bound, 2.5 * w, atol=1e-10)
        assert p.force_bound == pytest.approx(2.5 * w.max())
        assert p.energy_bound_eV_atom == pytest.approx(1.5 * p.energy_width_eV_atom)
    out = write_predictions(src, preds, tmp_path / "out.extxyz")
    back = read(out, index=":")
    np.testing.assert_allclose(back[1].arrays["force_bound"], preds[1].atom_force_bound, rtol=1e-6)
    assert back[2].info["generation"] == 0


def test_reliability_is_cross_validated_and_near_nominal():
    from remote_al.calibration import reliability

    rng = np.random.default_rng(5)
    w, e = heavy_tailed_pairs(rng, 16 * 60)
    groups = np.repeat(np.arange(60), 16)  # 60 frames of 16 atoms
    rel = reliability(w, e, groups)
    for level, observed in rel.items():
        assert abs(observed - level) < 0.04, (level, observed)
    # too few pairs for 99 %: NaN, not a number that looks measured
    small = reliability(w[:40], e[:40], groups[:40], levels=(0.5, 0.99))
    assert np.isfinite(small[0.5]) and np.isnan(small[0.99])


# ------------------------------------------------------ out-of-bag bookkeeping
def test_out_of_bag_frames_exclude_what_a_member_trained_on_including_earlier_generations(tmp_path):
    """Real member splits (remote_al.training.split_member_data on deepmd/npy systems): a
    member is never calibrated on a frame it trained on, in this generation or in the one it
    was continued from."""
    from ase.build import bulk

    from driver.calibrate import member_trained_hashes, out_of_bag_members
    from remote_al.deepmd_data import write_systems
    from remote_al.training import split_member_data

    rng = np.random.default_rng(0)
    frames = []
    for k in range(30):
        a = bulk("Ni", "fcc", a=3.52, cubic=True) if k % 2 else bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        from ase.calculators.singlepoint import SinglePointCalculator

        a.calc = SinglePointCalculator(a, energy=float(k), forces=np.zeros((len(a), 3)))
        frames.append(a)
    hashes = [f"h{k}" for k in range(30)]
    systems = write_systems(frames, tmp_path / "ds", ["Ni", "Cu"])
    manifest = {}
    for s in systems:
        name = Path(s).name
        manifest[name] = [h for h, a in zip(hashes, frames) if ("Ni" in name) == (a[0].symbol == "Ni")]
    trained = {}
    for m in range(4):
        _, _, kept, total, held = split_member_data(systems, tmp_path / f"m{m}", 0.8, bag=m)
        trained[m] = member_trained_hashes(systems, manifest, held)
        assert len(trained[m]) == kept and total == 30
    oob = out_of_bag_members(hashes, trained)
    assert oob  # some frames are held out by some member
    for h, members in oob.items():
        for m in range(4):
            assert (m in members) == (h not in trained[m])
    # a member continued from an earlier generation keeps what it saw there
    earlier = {0: set(hashes[:10])}
    chain = {m: trained[m] | earlier.get(m, set()) for m in trained}
    oob2 = out_of_bag_members(hashes, chain)
    assert all(0 not in members for h, members in oob2.items() if h in earlier[0])
    with pytest.raises(ValueError, match="systems"):
        member_trained_hashes(systems, manifest, held[:1])


def test_a_member_holds_out_the_same_frames_in_every_generation(tmp_path):
    """Bags follow the frames' content, not their position: exported again in a later
    generation (in another order, with new frames), a frame a member held out stays held
    out, so it stays out-of-bag along the member's chain of continued generations."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.deepmd_data import write_systems
    from remote_al.training import split_member_data

    rng = np.random.default_rng(1)
    frames = []
    for k in range(60):
        a = bulk("Ni", "fcc", a=3.52, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = SinglePointCalculator(a, energy=float(k), forces=np.zeros((len(a), 3)))
        frames.append(a)

    def held_out(frame_list, where, bag):
        systems = write_systems(frame_list, tmp_path / where / "ds", ["Ni"])
        _, _, kept, total, held = split_member_data(systems, tmp_path / where / "m", 0.8, bag=bag)
        assert kept + sum(len(h) for h in held) == total == len(frame_list)
        return {float(frame_list[j].get_potential_energy()) for j in held[0]}

    for bag in range(4):
        first = held_out(frames[:40], f"g0-b{bag}", bag)
        later = held_out(frames[::-1], f"g1-b{bag}", bag)  # all 60, reversed
        assert first and first == {e for e in later if e < 40}
    # about 1 - 0.8 held out by one member; different members, different bags
    bags = [held_out(frames, f"all-b{bag}", bag) for bag in range(4)]
    assert all(4 <= len(b) <= 24 for b in bags) and len({frozenset(b) for b in bags}) == 4
    # an empty bag is never trained: the lowest draw is kept
    systems = write_systems(frames[:3], tmp_path / "none" / "ds", ["Ni"])
    train, _, kept, _, _ = split_member_data(systems, tmp_path / "none" / "m", 1e-9, bag=0)
    assert kept == 1 and len(train) == 1
