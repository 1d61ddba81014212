"""A campaign stops by its own criterion once a round's explored frames are confident
enough (``selection.converged_share``), even when that round still selected a few frames:
those are labeled and trained on (a last generation), then it stops as converged. Local
backend, simulated workload whose widths shrink by half per generation."""

from __future__ import annotations

import json

import pytest

from driver.campaign import phases_async, phases_sync, plan
from driver.campaign.rules import CONVERGED_MARK, stop_or_next
from test_planners import add_explored, campaign  # noqa: F401 (fixture)
from test_steering import _run


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_confident_round_trains_its_last_selections_then_stops(tmp_path, monkeypatch, mode):
    from test_durability import check_invariants

    monkeypatch.setenv("REMOTE_AL_SIM_WIDTH_DECAY", "0.5")  # generation g's widths x 0.5**g
    monkeypatch.setenv("REMOTE_AL_SIM_LOG_DIR", str(tmp_path / "exec-log"))
    db = _run(tmp_path, monkeypatch, campaign={"max_rounds": 8}, exploration={"n_frames": 10},
              selection={"converged_share": 0.8, "max_per_round": 6},
              steering={"mode": mode, "lookahead_rounds": 0})
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert meta["stop_kind"] == "converged", meta["stop_reason"]
    marked = db.execute("SELECT idx, value FROM metrics WHERE scope='round' AND name=?", (CONVERGED_MARK,)).fetchall()
    assert len(marked) == 1, marked
    r, share = marked[0]
    assert share >= 0.8 and f"{share:.1%}" in meta["stop_reason"]
    assert int(meta["round"]) < 8  # well before the round budget
    # the marked round did select frames (the case this rule exists for) ...
    n_sel = db.execute("SELECT value FROM metrics WHERE scope='round' AND idx=? AND name='n_selected'",
                       (r,)).fetchone()[0]
    assert n_sel > 0
    # ... and the last generation is trained on every training label, that round's included
    last = db.execute("SELECT MAX(generation) FROM datasets").fetchone()[0]
    assert last == r and f"generation {r} trained" in meta["stop_reason"]
    final = set(json.loads(db.execute("SELECT structure_ids FROM datasets WHERE generation=?", (last,)).fetchone()[0]))
    train_labels = {row[0] for row in db.execute(
        "SELECT l.structure_id FROM labels l JOIN structures s ON s.id = l.structure_id "
        "WHERE l.status='ok' AND s.split='train'")}
    assert train_labels <= final and any(True for _ in db.execute(
        "SELECT 1 FROM labels l JOIN structures s ON s.id = l.structure_id WHERE s.round=? AND s.split='train'", (r,)))
    # nothing explored or labeled after the mark: no DFT spent on a campaign that is stopping
    assert not db.execute("SELECT key FROM tasks WHERE function='md' AND round>?", (r,)).fetchall()
    assert not db.execute("SELECT id FROM structures WHERE round>?", (r,)).fetchall()
    check_invariants(tmp_path / "camp", tmp_path / "exec-log", generations=r + 1)


def test_sync_select_marks_the_round_and_the_stop_follows_its_training(campaign):  # noqa: F811
    cfg, state, view, applier, said = campaign
    assert cfg.selection.converged_share == pytest.approx(0.97)
    add_explored(state, cfg, [0.01] * 97 + [0.3] * 3)  # 97 % confident, 3 uncertain
    state.set_meta("phase", "select")
    state.set_meta("round", "1")
    ops = phases_sync.select_round(view)
    assert not any(isinstance(op, plan.Stop) for op in ops)
    assert ops[-1] == plan.SetPhase(plan.Phase.LABEL)
    (mark,) = [op for op in ops if isinstance(op, plan.SetMetrics) and CONVERGED_MARK in op.values]
    assert mark.values[CONVERGED_MARK] == pytest.approx(0.97)
    applier.apply(ops)
    assert any("train a last generation" in m for m in said)
    from driver.status import summary

    assert summary(cfg.directory)["converging"].startswith("round 1 reached the converged share (97.0%")
    (stop,) = stop_or_next(view, 1)  # after generation 1 trained and was evaluated
    assert isinstance(stop, plan.Stop) and stop.kind == plan.StopKind.CONVERGED
    assert "97.0%" in stop.reason and "generation 1 trained" in stop.reason
    assert stop_or_next(view, 0)[-1] == plan.SetPhase(plan.Phase.EXPLORE, 1)  # an unmarked round goes on


def test_async_waits_for_the_last_generation_and_stops_when_it_is_ready(campaign):  # noqa: F811
    cfg, state, view, applier, said = campaign
    ids = add_explored(state, cfg, [0.3, 0.01], round_=2)
    state.set_meta("phase", "async")
    state.set_meta("round", "2")
    state.set_metric("round", 1, CONVERGED_MARK, 0.95)
    assert phases_async.async_phase(view) == []  # no exploration while the last generation trains
    assert phases_async.select_batch(view, 2, ids) == []  # nor a label
    ops = phases_async.generation_ready(view, 1)
    (stop,) = [op for op in ops if isinstance(op, plan.Stop)]
    assert stop.kind == plan.StopKind.CONVERGED and stop.phase == plan.Phase.ASYNC  # drains what is in flight
    assert "95.0%" in stop.reason
    later = [op.kind for op in phases_async.generation_ready(view, 2) if isinstance(op, plan.Stop)]
    assert later == [plan.StopKind.BUDGET]  # an unmarked generation: only the round budget (2) stops it
