"""State files written by an older remote-al: schema version 1 (the driver's bookkeeping
inside task requests under ``_`` keys) migrates in place to version 2 (task kind, context
and stage columns), and a campaign started by the old code resumes to its end with the
new engine. The fixture is a real version-1 campaign (simulated workload, asynchronous,
paused with an MD and a scoring task in flight), made by the engine before the rewrite.

Version 2 migrates in place to version 3 (structures keep their screening): the fixture is
a real version-2 campaign at its select phase with 80 unscreened candidates, and the
decisions the version-2 code took on it; the new code takes the same ones on the migrated
file (screening at selection), and again once the candidates are screened as the MD
recorder screens them now (selection from the stored screening)."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from driver.state import SCHEMA_VERSION, State, StateVersionError
from driver.state.schema import v1_task_fields

FIXTURE = Path(__file__).parent / "data" / "campaign_v1_async.tar.gz"
FIXTURE_PREFIX = "/tmp/fx/v1"  # where the fixture campaign ran
FIXTURE_V2 = Path(__file__).parent / "data" / "campaign_v2_select.tar.gz"  # its make_v2_fixture.py says how
FIXTURE_V2_PREFIX = "/tmp/s23/fx"


def unpack_v1(tmp_path: Path, fixture: Path = FIXTURE, prefix: str = FIXTURE_PREFIX) -> Path:
    """The fixture campaign under tmp_path, its absolute paths rewritten to point there."""
    with tarfile.open(fixture) as tar:
        tar.extractall(tmp_path, filter="data")
    new = str(tmp_path)
    for name in ("sim.toml", "camp/campaign.toml"):
        p = tmp_path / name
        if p.exists():
            p.write_text(p.read_text().replace(prefix, new))
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[2].upper() == "TEXT"]
        for col in cols:
            db.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (prefix, new))
    db.commit()
    db.close()
    return tmp_path / "sim.toml"


@pytest.mark.parametrize("function, request_, kind, context", [
    ("md", {"task_key": "md:r1", "_spec": "LiNiO2"}, "md", {"spec": "LiNiO2"}),
    ("uq", {"task_key": "uq:md:r1", "_structure_ids": [3, 4]}, "score", {"structure_ids": [3, 4]}),
    ("uq", {"task_key": "eval:g0", "_scope": "generation"}, "eval", {}),
    ("uq", {"task_key": "oob:g0", "_scope": "oob"}, "oob", {}),
    ("uq", {"task_key": "final-eval:g1", "_scope": "final"}, "final_eval", {}),
    ("uq", {"task_key": "uq:recheck:g2", "_recheck": {"label:r2:5-6": [5]}}, "recheck",
     {"groups": {"label:r2:5-6": [5]}}),
    ("label", {"task_key": "label:r0:1-2"}, "label", {}),
])
def test_v1_driver_keys_become_kind_and_context(function, request_, kind, context):
    got_kind, got_context, stage, req = v1_task_fields(function, {**request_, "_stage": ["datasets/gen-000"]})
    assert (got_kind, got_context, stage) == (kind, context, ["datasets/gen-000"])
    assert req == {"task_key": request_["task_key"]}  # exactly what the function receives


def test_v1_task_with_an_unknown_driver_key_is_refused():
    with pytest.raises(StateVersionError, match="_mystery"):
        v1_task_fields("md", {"task_key": "md:r1", "_mystery": 1})


def test_v1_state_file_migrates_in_place(tmp_path):
    unpack_v1(tmp_path)
    path = tmp_path / "camp" / "state.sqlite"
    before = sqlite3.connect(path)
    assert before.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    n_tasks = before.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    before.close()
    state = State(path)
    assert state.get_meta("schema_version") == str(SCHEMA_VERSION)
    rows = state.tasks()
    assert len(rows) == n_tasks
    for row in rows:
        assert not [k for k in json.loads(row["request"]) if k.startswith("_")], row["key"]
        assert row["kind"]
    score = [r for r in rows if r["kind"] == "score" and r["status"] == "submitted"]
    assert score and json.loads(score[0]["context"])["structure_ids"]
    assert {r["kind"] for r in rows if r["function"] == "uq"} >= {"eval", "score"}
    assert all(json.loads(r["context"])["spec"] for r in rows if r["kind"] == "md")
    state.close()
    State(path).close()  # opening again changes nothing


def test_v2_state_file_migrates_in_place_and_selects_as_before(tmp_path):
    from driver.campaign import phases_sync, plan
    from driver.campaign.view import CampaignView
    from driver.config import load_config
    from driver.dataset import DatasetStore
    from driver.screening import screen
    from remote_al.structures import from_extxyz

    cfg = load_config(unpack_v1(tmp_path, FIXTURE_V2, FIXTURE_V2_PREFIX))
    expected = json.loads((tmp_path / "decisions.json").read_text())
    path = cfg.directory / "state.sqlite"
    before = sqlite3.connect(path)
    assert before.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
    n = before.execute("SELECT COUNT(*) FROM structures WHERE status='candidate'").fetchone()[0]
    before.close()
    state = State(path)
    assert state.get_meta("schema_version") == str(SCHEMA_VERSION) == "4"
    assert state.features([r[0] for r in state.db.execute("SELECT id FROM structures")], "descriptor") == {}
    rows = state.candidate_rows(1)
    assert len(rows := list(rows)) == n == 80 and all(r["screen"] is None for r in rows)  # screened at selection

    def decisions():
        view = CampaignView(cfg, state, DatasetStore(state), gpu_slots=2, say=lambda m: None)
        return [[op.structure_id, op.decision, op.reason] for op in phases_sync.select_round(view)
                if isinstance(op, plan.Decide)]

    assert decisions() == expected
    assert {d for _, d, _ in expected} >= {"label", "duplicate", "confident", "unphysical", "filtered", "skipped"}
    with state.transaction():  # screened as the MD recorder screens a frame now
        for row in state.structures(status="candidate"):
            state.update_structure(row["id"], **screen(from_extxyz(row["extxyz"])[0]).row())
    assert all(r["screen"] is not None for r in state.candidate_rows(1))
    assert decisions() == expected
    state.close()
    State(path).close()  # opening again changes nothing


def test_state_from_a_newer_remote_al_is_refused(tmp_path):
    path = tmp_path / "state.sqlite"
    State(path).set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(StateVersionError, match="newer remote-al"):
        State(path)


@pytest.mark.slow
def test_campaign_started_by_the_old_code_resumes_to_its_end(tmp_path, monkeypatch):
    from test_durability import check_invariants

    from driver.backends.local import LocalBackend
    from driver.campaign import Campaign
    from driver.config import load_config
    from remote_al.simulated import FUNCTIONS

    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0.01")
    monkeypatch.setenv("REMOTE_AL_SIM_LOG_DIR", str(tmp_path / "exec-log"))
    toml = unpack_v1(tmp_path)
    cfg = load_config(toml)
    lines: list[str] = []
    backend = LocalBackend(cfg.directory / "engine", 2, 2, functions=FUNCTIONS)
    reason = Campaign(cfg, backend, say=lines.append, status_every_s=5).run()
    assert reason == "round budget of 2 rounds reached"
    assert any("resuming at round 1, phase async" in line for line in lines)
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    resubmitted = {r[0] for r in db.execute("SELECT message FROM events WHERE kind='resubmit'")}
    assert any("uq:md:r1:" in m for m in resubmitted)  # the scoring task in flight under the old driver
    # labels of the old driver's rounds were not labeled again: only the new ones ran here
    (tmp_path / "exec-log").mkdir(exist_ok=True)
    old_labels = {r[0] for r in db.execute("SELECT structure_id FROM labels WHERE created < ?",
                                          (float(db.execute("SELECT MIN(ts) FROM events WHERE kind='resubmit'")
                                                 .fetchone()[0]),))}
    executed = {int(x) for f in (tmp_path / "exec-log").glob("*.log") for x in f.read_text().split()}
    assert old_labels and not (old_labels & executed)
    # the old driver executed those (its run is not in this log)
    (tmp_path / "exec-log" / "labels-old-driver.log").write_text(" ".join(map(str, sorted(old_labels))) + "\n")
    check_invariants(cfg.directory, tmp_path / "exec-log")
