"""Batch strategies in the campaign: `selection.strategy`, `selection.quota`, `selection.features`.

The selection rule of a campaign is no longer only the highest widths: the scoring
evaluation returns per-frame features, the state keeps them, and ``driver.selection.select``
lets a rule of ``driver.strategies`` choose which uncertain frames fill the cap."""

from __future__ import annotations

import numpy as np
import pytest

from driver.campaign import phases_async, phases_sync, plan, recorders
from driver.campaign.tasks import ScoreContext, Task, TaskKind
from driver.campaign.view import condition_of
from driver.config import load_config
from driver.errors import ConfigError
from driver.selection import Candidate, SelectionPolicy, select
from test_durability import write_campaign
from test_planners import _md_request, add_explored


class Extras:
    """SelectionExtras from plain dicts."""

    def __init__(self, features=None, groups=None):
        self._f, self._g = features or {}, groups or {}

    def features(self, ids):
        return {i: self._f[i] for i in ids if i in self._f}

    def groups(self, ids):
        return {i: self._g[i] for i in ids if i in self._g}


def two_clusters(n_a=10, n_b=10):
    """Cluster A (ids 0..n_a-1) has the highest widths; cluster B (far away in feature space) lower ones."""
    rng = np.random.default_rng(0)
    cands, feats = [], {}
    for i in range(n_a + n_b):
        a = i < n_a
        cands.append(Candidate(i, 0.01, (1.0 if a else 0.5) + 0.01 * rng.random()))
        feats[i] = (np.zeros(4) if a else np.full(4, 10.0)) + 0.1 * rng.normal(size=4)
    return cands, feats


def picked(decisions):
    return sorted(d.id for d in decisions if d.decision == "label")


def test_topk_takes_one_cluster_kmeans_takes_both():
    cands, feats = two_clusters()
    pol = dict(force_threshold=0.15, force_upper=3.0, max_per_round=4)
    top = select(cands, SelectionPolicy(**pol))
    assert picked(top) == [i for i in picked(top) if i < 10] and len(picked(top)) == 4  # all in cluster A
    for name in ("kmeans", "fps", "lcmd", "maxdet"):
        dec = select(cands, SelectionPolicy(**pol, strategy=name, seed=3), extras=Extras(feats))
        ids = picked(dec)
        assert len(ids) == 4, name
        assert any(i < 10 for i in ids) and any(i >= 10 for i in ids), (name, ids)
        chosen = [d for d in dec if d.decision == "label"]
        assert all(f"; {name}: " in d.reason for d in chosen)
        rest = [d for d in dec if d.decision == "skipped"]
        assert len(rest) == 16 and all(f"not picked by {name} within the cap of 4" in d.reason for d in rest)


def test_random_is_uniform_among_the_uncertain_and_reproducible():
    cands = [Candidate(i, 0.01, w) for i, w in enumerate([0.05, 0.1] + [0.5] * 18)]  # two confident frames
    pol = dict(force_threshold=0.15, force_upper=3.0, max_per_round=5, strategy="random")
    a = picked(select(cands, SelectionPolicy(**pol, seed=1)))
    assert a == picked(select(cands, SelectionPolicy(**pol, seed=1)))
    seen = {tuple(picked(select(cands, SelectionPolicy(**pol, seed=s)))) for s in range(8)}
    assert len(seen) > 1  # the seed matters
    assert all(0 not in s and 1 not in s and len(s) == 5 for s in seen)  # confident frames are never labeled


def test_fewer_uncertain_than_the_cap_are_all_labeled_whatever_the_rule():
    cands, feats = two_clusters(2, 1)
    dec = select(cands, SelectionPolicy(0.15, 3.0, max_per_round=4, strategy="kmeans"), extras=Extras(feats))
    assert picked(dec) == [0, 1, 2]


def test_frames_without_features_fall_back_to_the_widths_with_a_reason():
    cands, feats = two_clusters()
    del feats[15]
    dec = select(cands, SelectionPolicy(0.15, 3.0, max_per_round=3, strategy="kmeans"), extras=Extras(feats))
    chosen = [d for d in dec if d.decision == "label"]
    assert [d.id for d in chosen] == picked(select(cands, SelectionPolicy(0.15, 3.0, max_per_round=3)))
    assert all("1 of 20 uncertain frames have no features" in d.reason for d in chosen)


def test_quota_per_condition_shares_the_cap_equally():
    cands, feats = two_clusters()
    groups = {i: ("LiNiO2:T300" if i < 10 else "LiNiO2:T700") for i in range(20)}
    dec = select(cands, SelectionPolicy(0.15, 3.0, max_per_round=6, strategy="kmeans", quota=True),
                 extras=Extras(feats, groups))
    ids = picked(dec)
    assert sum(i < 10 for i in ids) == 3 and sum(i >= 10 for i in ids) == 3
    assert all("group LiNiO2:T" in d.reason for d in dec if d.decision == "label")


def test_near_duplicate_pick_gives_its_place_to_the_next_frame():
    from ase import Atoms

    from driver.selection import fingerprint

    frames = []
    for d in (0.0, 1e-4, 0.3, 0.6):  # 0 and 1 are near-duplicates (the second atom moved by 0.1 mA)
        pos = np.array([[0.0, 0, 0], [1.5 + d, 0, 0], [0, 1.6, 0]])
        frames.append(Atoms("LiNiO", positions=pos, cell=[6, 6, 6], pbc=True))
    cands = [Candidate(i, 0.01, w, fingerprint=fingerprint(a))
             for i, (w, a) in enumerate(zip([0.9, 0.8, 0.5, 0.4], frames))]
    # fps starts at the widest (0) and goes to the farthest in feature space (1), a near-duplicate
    feats = {0: np.zeros(2), 1: np.full(2, 10.0), 2: np.ones(2), 3: np.full(2, 2.0)}
    dec = {d.id: d for d in select(cands, SelectionPolicy(0.15, 3.0, max_per_round=2, strategy="fps"),
                                   extras=Extras(feats))}
    assert [dec[i].decision for i in range(4)] == ["label", "duplicate", "label", "skipped"]
    assert "fps" in dec[0].reason and "fps" not in dec[2].reason  # 2 filled the place by its width


def test_campaign_file_strategy_settings_are_checked(tmp_path):
    cfg = load_config(write_campaign(tmp_path, selection={"strategy": "kmeans", "quota": "per_condition",
                                                          "features": "atom_widths"}))
    assert (cfg.selection.strategy, cfg.selection.quota, cfg.selection.features) == ("kmeans", "per_condition",
                                                                                      "atom_widths")
    with pytest.raises(ConfigError, match="strategy"):
        (tmp_path / "b").mkdir()
        load_config(write_campaign(tmp_path / "b", selection={"strategy": "kmeans++"}))


def test_condition_of_md_keys():
    assert condition_of("md:r1:LiNiO2:T300:w0") == "LiNiO2:T300"
    assert condition_of("md:r3:LiNiO2:T300:P1.5:w2:s1") == "LiNiO2:T300:P1.5"
    assert condition_of("md:r1:w1:relax:m3") == "w1:relax"  # a structure may be called w1


@pytest.fixture
def kmeans_campaign(tmp_path):
    from driver.campaign.apply import Applier
    from driver.campaign.hooks import Hooks
    from driver.campaign.view import CampaignView
    from driver.dataset import DatasetStore
    from driver.placement import Placement
    from driver.state import State

    cfg = load_config(write_campaign(tmp_path, steering={"mode": "sync"},
                                     selection={"strategy": "kmeans", "features": "atom_widths"}))
    state = State(cfg.directory / "state.sqlite")
    store = DatasetStore(state)
    view = CampaignView(cfg, state, store, gpu_slots=2, say=lambda m: None)
    return cfg, state, view, Applier(state, store, Placement(cfg.directory, None, None), view, lambda m: None, Hooks())


def test_scoring_asks_for_features_and_the_state_keeps_them(kmeans_campaign):
    cfg, state, view, applier = kmeans_campaign
    ids = add_explored(state, cfg, [0.3, 0.4])
    md = Task.from_row(dict(key="md:r1:x", kind=TaskKind.MD.value, round=1, generation=0, status="done",
                            attempts=1, request=_md_request(view), context='{"spec": "LiNiO2"}', result=None))
    state.add_model(0, 0, "train:g0:m0", "/m0.pth")
    state.add_model(0, 1, "train:g0:m1", "/m1.pth")
    (add,) = recorders.score_exploration(view, md, {})
    assert add.spec.request.features == "atom_widths"
    score = Task(key=add.spec.key, kind=TaskKind.SCORE, round=1, generation=0, status="done", attempts=1,
                 request=add.spec.request, context=ScoreContext(tuple(ids)), result=None)
    result = {"energy_width": [0.01, 0.02], "force_width": [0.3, 0.4], "frame_features": [[1.0, 2.0], [3.0, 4.5]]}
    ops = recorders.record_score(view, score, result)
    applier.apply(ops)
    got = state.features(ids, "atom_widths")
    assert np.allclose(got[ids[1]], [3.0, 4.5]) and got[ids[0]].dtype == np.float32
    assert state.features(ids, "descriptor") == {}


def test_sync_round_selects_with_the_strategy(kmeans_campaign):
    cfg, state, view, applier = kmeans_campaign
    widths = [0.5 + 0.01 * i for i in range(6)] + [0.2 + 0.01 * i for i in range(6)]  # max_per_round 4
    ids = add_explored(state, cfg, widths)
    state.set_features(0, "atom_widths", [(sid, [0.0, 0.0] if k < 6 else [9.0, 9.0]) for k, sid in enumerate(ids)])
    state.set_meta("phase", "select")
    state.set_meta("round", "1")
    ops = phases_sync.select_round(view)
    labels = [op for op in ops if isinstance(op, plan.Decide) and op.decision == "label"]
    assert len(labels) == 4 and all("kmeans" in op.reason for op in labels)
    assert {ids.index(op.structure_id) >= 6 for op in labels} == {True, False}  # both clusters


def test_async_quota_caps_each_exploration_at_its_share(tmp_path):
    from driver.campaign.view import CampaignView
    from driver.dataset import DatasetStore
    from driver.state import State

    cfg = load_config(write_campaign(tmp_path, selection={"quota": "per_condition", "max_per_round": 4}))
    state = State(cfg.directory / "state.sqlite")
    view = CampaignView(cfg, state, DatasetStore(state), gpu_slots=2, say=lambda m: None)
    assert view.n_conditions() == 2  # two structures at one temperature
    ids = add_explored(state, cfg, [0.3, 0.35, 0.4, 0.45, 0.5, 0.55])
    ops = phases_async.select_batch(view, 1, ids)
    labels = [op for op in ops if isinstance(op, plan.Decide) and op.decision == "label"]
    assert len(labels) == 2  # ceil(4 / 2)
    assert any("the cap of 2 per exploration" in op.reason for op in ops if isinstance(op, plan.Decide))


def test_uq_features_come_from_the_same_evaluation(tiny_ensemble, labeled_dir):
    """descriptor: the first member's per-type mean descriptor, as remote_al.features computes it
    alone; atom_widths: the histogram of the per-atom widths of that evaluation."""
    from remote_al.calibration import atom_force_widths
    from remote_al.ensemble import evaluate_uncertainty, predict_ensemble
    from remote_al.fast_uq import ensemble_features
    from remote_al.records import UQRequest
    from remote_al.structures import from_extxyz, to_extxyz
    from remote_al.uq import atom_width_histogram

    frames = [a.copy() for a in labeled_dir["frames"][:5]]
    for a in frames:
        a.calc = None
    paths = [r.model_path for r in tiny_ensemble]
    base = dict(task_key="uq-f", workdir=str(labeled_dir["root"]), model_paths=tuple(paths),
                frames_extxyz=to_extxyz(frames))
    desc = evaluate_uncertainty(UQRequest(**base, features="descriptor"))
    ref = ensemble_features(paths, frames)
    assert np.allclose(np.array(desc.frame_features), ref, rtol=1e-3, atol=1e-6)
    plain = evaluate_uncertainty(UQRequest(**base))
    assert plain.frame_features is None and plain.force_width == desc.force_width  # same widths either way
    aw = evaluate_uncertainty(UQRequest(**base, features="atom_widths"))
    _, forces = predict_ensemble(paths, frames)
    want = atom_width_histogram([atom_force_widths(f) for f in forces])
    assert np.allclose(np.array(aw.frame_features), want, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="unknown features"):
        evaluate_uncertainty(UQRequest(**base, features="soap"))
