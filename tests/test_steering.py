"""Asynchronous steering keeps the GPU slots busy: warm workers, one exploration per idle
GPU slot at once. Local backend,
simulated workload (real serializer and engine, sleeps instead of physics)."""

from __future__ import annotations

import os
import sqlite3

from driver.backends.local import LocalBackend
from driver.config import load_config
from driver.campaign import Campaign
from remote_al.simulated import FUNCTIONS as SIM_FUNCTIONS
from test_durability import write_campaign


def test_warm_up_starts_every_worker_once(tmp_path):
    backend = LocalBackend(tmp_path / "engine", 2, 3, functions=SIM_FUNCTIONS)
    try:
        pids = backend.warm_up(timeout_s=120)
        assert sorted(pids) == ["cpu", "gpu"]
        assert len(pids["gpu"]) == 2 and len(set(pids["gpu"])) == 2
        assert len(pids["cpu"]) == 3 and len(set(pids["cpu"])) == 3
        assert os.getpid() not in pids["gpu"] + pids["cpu"]
        # the warm-up tasks leave nothing behind: the next task key may be reused freely
        assert not list((tmp_path / "engine").rglob("__warm_up__*"))
    finally:
        backend.shutdown()


def _run(tmp_path, monkeypatch, cpu_slots: int = 2, **sections):
    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0.01")
    toml = write_campaign(tmp_path, **sections)
    cfg = load_config(toml)
    backend = LocalBackend(cfg.directory / "engine", 2, cpu_slots, functions=SIM_FUNCTIONS)
    try:
        Campaign(cfg, backend, say=lambda m: None).run()
    finally:
        backend.shutdown()
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    db.row_factory = sqlite3.Row
    return db


def test_every_idle_gpu_slot_gets_an_exploration_in_the_same_tick(tmp_path, monkeypatch):
    """When generation 0 becomes current both GPU slots are idle: two explorations are
    created together, not one per finished task."""
    db = _run(tmp_path, monkeypatch, exploration={"temperatures_K": [600.0, 900.0]},
              steering={"lookahead_rounds": 0})
    gen0_done = db.execute("SELECT MAX(finished) FROM tasks WHERE function='train' AND generation=0").fetchone()[0]
    md = db.execute("SELECT key, created FROM tasks WHERE function='md' ORDER BY created").fetchall()
    assert len(md) >= 2
    first, second = md[0], md[1]
    assert first["created"] >= gen0_done
    # created in one pass of the loop (milliseconds apart), before either could finish (10 units = 0.1 s)
    assert second["created"] - first["created"] < 0.05, [tuple(r) for r in md[:3]]


def test_queued_selections_are_rechecked_with_the_new_generation(tmp_path, monkeypatch):
    """Lookahead selections made with an older ensemble and still queued for labeling are
    re-scored when a new generation becomes current; the ones it is confident about are
    not labeled (a decision with the reason), and every remaining selection is labeled
    exactly once."""
    from test_durability import check_invariants

    monkeypatch.setenv("REMOTE_AL_SIM_WIDTH_DECAY", "0.3")  # generation g's widths x 0.3**g
    monkeypatch.setenv("REMOTE_AL_SIM_LOG_DIR", str(tmp_path / "exec-log"))
    # one CPU slot and one structure per label task: labels queue up behind the GPU
    db = _run(tmp_path, monkeypatch, cpu_slots=1, exploration={"temperatures_K": [600.0, 900.0]},
              selection={"max_per_round": 6}, labeler={"batch_size": 1}, steering={"lookahead_rounds": 1})
    rechecks = db.execute("SELECT key, generation, request, result FROM tasks WHERE key LIKE 'uq:recheck:%'").fetchall()
    assert rechecks, "no re-check task was created"
    dropped = db.execute(
        "SELECT structure_id, decision, reason FROM decisions WHERE reason LIKE 're-checked with generation %'"
    ).fetchall()
    assert dropped, "the re-check dropped nothing although generation 1 is 0.3x as uncertain"
    assert {d["decision"] for d in dropped} <= {"confident", "unphysical"}
    labeled = {r[0] for r in db.execute("SELECT structure_id FROM labels")}
    assert not labeled & {d["structure_id"] for d in dropped}
    for d in dropped:
        st = db.execute("SELECT status, generation FROM structures WHERE id=?", (d["structure_id"],)).fetchone()
        assert st["status"] in ("confident", "unphysical")
        assert f"selected with generation {st['generation']})" in d["reason"]
    check_invariants(tmp_path / "camp", tmp_path / "exec-log")


def test_recheck_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTE_AL_SIM_WIDTH_DECAY", "0.3")
    db = _run(tmp_path, monkeypatch, cpu_slots=1, exploration={"temperatures_K": [600.0, 900.0]},
              selection={"max_per_round": 6}, labeler={"batch_size": 1},
              steering={"lookahead_rounds": 1, "recheck_selections": False})
    assert not db.execute("SELECT COUNT(*) FROM tasks WHERE key LIKE 'uq:recheck:%'").fetchone()[0]


def test_last_generation_trains_on_every_label(tmp_path, monkeypatch):
    """With retrain_after below the per-round cap, generations start before their round
    is fully labeled; the last one waits for its round, so no label paid for is left out
    of the final training set."""
    import json

    # labels slow against training, one CPU slot: a round's labels trail its first ones
    monkeypatch.setenv("REMOTE_AL_SIM_DURATIONS", json.dumps({"label": 40, "train": 20}))
    db = _run(tmp_path, monkeypatch, cpu_slots=1, exploration={"temperatures_K": [600.0, 900.0]},
              selection={"max_per_round": 6}, labeler={"batch_size": 1}, steering={"retrain_after": 2})

    last = db.execute("SELECT MAX(generation) FROM datasets").fetchone()[0]
    assert last == 2
    final = set(json.loads(db.execute("SELECT structure_ids FROM datasets WHERE generation=?", (last,)).fetchone()[0]))
    train_labels = {r[0] for r in db.execute(
        "SELECT l.structure_id FROM labels l JOIN structures s ON s.id = l.structure_id "
        "WHERE l.status='ok' AND s.split='train'")}
    assert train_labels and train_labels <= final, sorted(train_labels - final)
    # and generation 1 did start before its round was fully labeled
    g1 = set(json.loads(db.execute("SELECT structure_ids FROM datasets WHERE generation=1").fetchone()[0]))
    r1 = {r[0] for r in db.execute(
        "SELECT l.structure_id FROM labels l JOIN structures s ON s.id = l.structure_id "
        "WHERE l.status='ok' AND s.split='train' AND s.round=1")}
    assert r1 - g1, "generation 1 waited for the whole round although retrain_after = 2"


def test_per_exploration_cap_spreads_a_round_over_explorations(tmp_path, monkeypatch):
    """selection.max_per_exploration = 2: no exploration gives more than 2 labels, the
    frames over it are skipped with that reason, and the round still fills its cap from
    more explorations."""
    db = _run(tmp_path, monkeypatch, exploration={"temperatures_K": [600.0, 900.0]},
              selection={"max_per_round": 6, "max_per_exploration": 2, "force_threshold": 0.0},
              steering={"lookahead_rounds": 0})
    per_task = db.execute(
        "SELECT s.round, s.source_task, COUNT(*) FROM decisions d JOIN structures s ON s.id = d.structure_id "
        "WHERE d.decision='label' AND s.origin='md' GROUP BY s.round, s.source_task"
    ).fetchall()
    assert per_task and max(n for _, _, n in per_task) == 2
    per_round = {}
    for r, _, n in per_task:
        per_round[r] = per_round.get(r, 0) + n
    assert max(per_round.values()) == 6  # a full round: its labels came from 3 or more explorations
    assert db.execute(
        "SELECT COUNT(*) FROM decisions WHERE decision='skipped' AND reason LIKE '%the cap of 2 per exploration'"
    ).fetchone()[0] > 0
