"""driver.strategies: every batch selection rule on small synthetic pools (no models)."""

import numpy as np
import pytest

from driver import strategies as st
from driver.strategies import Candidates, SelectionInputError

NAMES = sorted(st.STRATEGIES)


def two_blobs(n_a=60, n_b=40, seed=0):
    """Blob A (features near 0) holds every high uncertainty; blob B (near 10) lower ones, so
    top-k takes only A while a diversity rule must reach B too."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0.0, 0.3, (n_a, 3)), rng.normal(10.0, 0.3, (n_b, 3))])
    u = np.concatenate([rng.uniform(1.0, 2.0, n_a), rng.uniform(0.4, 0.8, n_b)])
    groups = ("A",) * n_a + ("B",) * n_b
    return Candidates(u, x, groups)


@pytest.mark.parametrize("name", NAMES)
def test_k_distinct_indices_within_threshold(name):
    c = two_blobs()
    lo, hi = 0.5, 1.9
    got = st.select(name, c, 12, np.random.default_rng(1), threshold=lo, upper=hi)
    idx = [ch.index for ch in got]
    assert len(idx) == 12 and len(set(idx)) == 12
    u = c.uncertainty[idx]
    if name == "dpgen_window":
        assert np.all((u >= lo) & (u < hi))
    else:
        assert np.all((u > lo) & (u <= hi))
    assert all(ch.reason for ch in got)


@pytest.mark.parametrize("name", NAMES)
def test_fewer_eligible_than_budget_returns_all_of_them(name):
    c = two_blobs()
    n_ok = int(np.sum(c.uncertainty > 1.8))
    got = st.select(name, c, n_ok + 5, np.random.default_rng(0), threshold=1.8)
    assert sorted(ch.index for ch in got) == sorted(np.flatnonzero(c.uncertainty > 1.8).tolist())
    assert st.select(name, c, 0, np.random.default_rng(0)) == []


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name):
    c = two_blobs()
    a = st.select(name, c, 10, np.random.default_rng(42))
    b = st.select(name, c, 10, np.random.default_rng(42))
    assert a == b


def test_topk_takes_one_blob_diversity_rules_reach_both():
    c = two_blobs()
    in_b = lambda got: sum(ch.index >= 60 for ch in got)  # noqa: E731
    assert in_b(st.topk(c, 10, np.random.default_rng(0))) == 0
    for name in ("fps_uncertain", "kmeans_uncertain", "maxdet", "lcmd"):
        got = st.select(name, c, 10, np.random.default_rng(0))
        assert 1 <= in_b(got) <= 9, name
    # k-means follows the pool's density: about 40 % of the picks in the smaller blob
    assert 2 <= in_b(st.kmeans_uncertain(c, 10, np.random.default_rng(0))) <= 6


def test_uncertainty_still_decides_within_a_cluster():
    c = two_blobs()
    got = st.kmeans_uncertain(c, 2, np.random.default_rng(0))
    picks = sorted(ch.index for ch in got)
    assert picks[0] == int(np.argmax(c.uncertainty[:60]))
    assert picks[1] == 60 + int(np.argmax(c.uncertainty[60:]))
    assert st.fps_uncertain(c, 1, np.random.default_rng(0))[0].index == int(np.argmax(c.uncertainty))
    assert st.lcmd(c, 1, np.random.default_rng(0))[0].index == int(np.argmax(c.uncertainty))
    assert st.maxdet(c, 1, np.random.default_rng(0))[0].index == int(np.argmax(c.uncertainty))


def test_training_set_steers_away_from_known_regions():
    c = two_blobs()
    rng = np.random.default_rng(3)
    trained = Candidates(c.uncertainty, c.features, c.groups, labeled_features=rng.normal(0.0, 0.3, (30, 3)),
                         labeled_uncertainty=np.full(30, 1.5))
    for name in ("fps_uncertain", "lcmd", "maxdet"):
        first_two = [ch.index for ch in st.select(name, trained, 2, np.random.default_rng(0))]
        assert any(i >= 60 for i in first_two), name
    for name in ("lcmd", "maxdet"):  # the first pick of these is the farthest from the training set
        assert st.select(name, trained, 1, np.random.default_rng(0))[0].index >= 60, name


def test_quotas_split_budget():
    assert st.quotas([50, 50], 10) == [5, 5]
    assert st.quotas([30, 10], 8) == [6, 2]
    assert st.quotas([30, 10], 8, share="equal") == [4, 4]
    assert st.quotas([2, 100], 10, share="equal") == [2, 8]  # what a group cannot take goes to the other
    assert st.quotas([1, 1, 1], 10) == [1, 1, 1]
    assert sum(st.quotas([7, 3, 11, 5], 9)) == 9
    with pytest.raises(SelectionInputError):
        st.quotas([1], 1, share="sometimes")


@pytest.mark.parametrize("name", NAMES)
def test_per_group_gives_each_group_its_share(name):
    c = two_blobs()
    got = st.select(name, c, 10, np.random.default_rng(0), quota=True)
    assert len({ch.index for ch in got}) == 10
    assert sum(ch.index < 60 for ch in got) == 6  # 60 of 100 frames are in group A
    assert all(ch.reason.startswith("group ") for ch in got)
    got = st.select(name, c, 10, np.random.default_rng(0), quota=True, share="equal")
    assert sum(ch.index < 60 for ch in got) == 5


def test_inputs_checked_before_selecting():
    with pytest.raises(SelectionInputError):
        Candidates(np.ones(3), np.ones((4, 2)))
    with pytest.raises(SelectionInputError):
        Candidates(np.ones(3), groups=("a", "b"))
    with pytest.raises(SelectionInputError):
        st.fps_uncertain(Candidates(np.ones(3)), 2, np.random.default_rng(0))
    with pytest.raises(SelectionInputError):
        st.per_group("topk", Candidates(np.ones(3)), 2, np.random.default_rng(0))
    with pytest.raises(SelectionInputError):
        st.select("best", Candidates(np.ones(3)), 2, np.random.default_rng(0))


def test_ten_thousand_candidates_select():
    rng = np.random.default_rng(0)
    n = 10_000
    c = Candidates(rng.lognormal(0.0, 0.5, n), rng.normal(size=(n, 32)), tuple(rng.integers(0, 6, n)))
    for name in ("kmeans_uncertain", "lcmd", "maxdet", "fps_uncertain"):
        got = st.select(name, c, 20, np.random.default_rng(0), quota=name == "kmeans_uncertain")
        assert len({ch.index for ch in got}) == 20


def test_features():
    from driver import feature_space as fs

    h = fs.distance_histogram([np.array([1.0, 1.1, 2.9]), np.array([])], [2, 3], r_max=4.0, bins=4)
    assert h.shape == (2, 4) and h[0].tolist() == [0.0, 1.0, 0.5, 0.0] and h[1].sum() == 0
    w = fs.atom_width_histogram([np.array([0.01, 0.1, 1.0, 100.0])])
    assert w.shape == (1, 22)
    assert w[0, :20].sum() == pytest.approx(1.0)  # outer bins are open
    assert w[0, -1] == pytest.approx(2.0) and w[0, -2] == pytest.approx(-0.25)
    x = fs.standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert np.allclose(x[:, 1], 0.0) and np.allclose(x[:, 0], [-1 / np.sqrt(2), 1 / np.sqrt(2)])


def test_frame_descriptor_features_per_type_means():
    from remote_al.features import frame_descriptor_features

    desc = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)  # 2 frames, 3 atoms, D = 2
    got = frame_descriptor_features(desc, np.array([0, 2, 0]), ntypes=3)
    assert got.shape == (2, 6)
    assert got[0].tolist() == [2.0, 3.0, 0.0, 0.0, 2.0, 3.0]  # type 0: atoms 0 and 2; no type 1
    with pytest.raises(ValueError):
        frame_descriptor_features(desc, np.array([0, 1]), ntypes=3)


def test_descriptor_features_match_deepmd(tiny_ensemble):
    """The per-chunk call on fast_uq's neighbour lists gives DeePMD-kit's own eval_descriptor."""
    from deepmd.infer import DeepPot

    from remote_al.fast_uq import ensemble_features
    from remote_al.features import frame_descriptor_features
    from remote_al.structures import cathode_cell, perturb

    rng = np.random.default_rng(5)
    frames = [perturb(cathode_cell(x), 0.06, 0.02, rng) for x in (1.0, 0.75) for _ in range(3)]
    dp = DeepPot(tiny_ensemble[0].model_path)
    got = ensemble_features([dp], frames, batch_size=2)
    tm = dp.get_type_map()
    for i, a in enumerate(frames):
        atype = np.array([tm.index(s) for s in a.get_chemical_symbols()])
        ref = dp.eval_descriptor(a.get_positions().reshape(1, -1), np.asarray(a.cell).reshape(1, -1), atype)
        assert np.abs(got[i] - frame_descriptor_features(ref, atype, len(tm))[0]).max() < 1e-10
