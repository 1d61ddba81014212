"""The Student-t width and its invariants."""

import numpy as np
import pytest
from scipy import stats

from remote_al.uq import ensemble_ci_width, frame_uncertainty, t_factor


@pytest.mark.parametrize("m", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_width_equals_scipy_interval(m, confidence):
    rng = np.random.default_rng(m)
    x = rng.normal(1.0, 0.3, size=m)
    lo, hi = stats.t.interval(confidence, m - 1, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(m))
    assert ensemble_ci_width(x, confidence) == pytest.approx(hi - lo, rel=1e-12)


def test_formula_written_out():
    x = np.array([0.1, 0.4, -0.2, 0.3])
    s = x.std(ddof=1)
    assert ensemble_ci_width(x) == pytest.approx(2 * stats.t.ppf(0.975, 3) * s / 2.0)


def test_permuting_members_changes_nothing():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(4, 7))
    f = rng.normal(size=(4, 7, 5, 3))
    natoms = np.full(7, 5)
    perm = [2, 0, 3, 1]
    a = frame_uncertainty(e, f, natoms)
    b = frame_uncertainty(e[perm], f[perm], natoms)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)


def test_identical_members_give_zero():
    e = np.tile(np.array([[1.0, 2.0, 3.0]]), (4, 1))
    f = np.tile(np.ones((1, 3, 2, 3)), (4, 1, 1, 1))
    ew, fw = frame_uncertainty(e, f, [2, 2, 2])
    assert np.all(ew == 0) and np.all(fw == 0)


@pytest.mark.parametrize("m", [4, 16, 64])
def test_width_scales_as_inverse_sqrt_m_at_fixed_spread(m):
    # Two-point members (+s, -s) have a fixed sample std for any even M; remove the t factor.
    s_target = 0.2
    x = np.array([1.0, -1.0] * (m // 2))
    x = x / x.std(ddof=1) * s_target
    width = ensemble_ci_width(x)
    t = stats.t.ppf(0.975, m - 1)
    assert width / (2 * t) == pytest.approx(s_target / np.sqrt(m), rel=1e-12)
    # and a larger ensemble with the same spread is strictly narrower
    x2 = np.array([1.0, -1.0] * m)
    x2 = x2 / x2.std(ddof=1) * s_target
    assert ensemble_ci_width(x2) < width


def test_force_width_is_max_over_atoms_and_components():
    f = np.zeros((3, 1, 4, 3))
    f[:, 0, 2, 1] = [0.0, 0.5, 1.0]  # only one component varies
    _, fw = frame_uncertainty(np.zeros((3, 1)), f, [4])
    assert fw[0] == pytest.approx(ensemble_ci_width(np.array([0.0, 0.5, 1.0])))


def test_ragged_frames_and_per_atom_energy():
    e = np.array([[10.0, 20.0], [12.0, 26.0]])
    forces = [np.zeros((2, 4, 3)), np.zeros((2, 8, 3))]
    ew, _ = frame_uncertainty(e, forces, [4, 8])
    assert ew[0] == pytest.approx(t_factor(2) * np.std([2.5, 3.0], ddof=1))
    assert ew[1] == pytest.approx(t_factor(2) * np.std([2.5, 3.25], ddof=1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        t_factor(1)
    with pytest.raises(ValueError, match="NaN"):
        frame_uncertainty(np.array([[np.nan], [1.0]]), np.zeros((2, 1, 1, 3)), [1])
