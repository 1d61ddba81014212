"""Phases and recorders decide; only the engine changes the state. A planner reads a view
and returns operations (decisions as data): calling it leaves the state file untouched,
and what it decided can be read before anything is applied."""

from __future__ import annotations

import numpy as np
import pytest

from driver.campaign import phases_async, phases_sync, plan, recorders
from driver.campaign.apply import Applier
from driver.campaign.hooks import Hooks
from driver.campaign.tasks import ScoreContext, Task, TaskKind
from driver.campaign.view import CampaignView
from driver.config import load_config
from driver.dataset import DatasetStore, frame_hash
from driver.placement import Placement
from driver.preflight import build_structure
from driver.state import State
from remote_al.structures import composition_label, from_extxyz, to_extxyz
from test_durability import write_campaign


@pytest.fixture
def campaign(tmp_path):
    cfg = load_config(write_campaign(tmp_path, steering={"mode": "sync"}))
    state = State(cfg.directory / "state.sqlite")
    store = DatasetStore(state)
    said: list[str] = []
    view = CampaignView(cfg, state, store, gpu_slots=2, say=said.append)
    applier = Applier(state, store, Placement(cfg.directory, None, None), view, said.append, Hooks())
    return cfg, state, view, applier, said


def add_explored(state, cfg, widths, round_=1):
    """MD frames of round ``round_`` (rattled copies of the first structure) with force widths."""
    rng = np.random.default_rng(0)
    base = build_structure(cfg.structures[0])
    ids = []
    for w in widths:
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        ids.append(state.add_structure(
            hash=frame_hash(a), origin="md", split="train", round=round_, generation=round_ - 1,
            spec=cfg.structures[0].name, composition=composition_label(a), natoms=len(a), extxyz=to_extxyz(a),
            status="candidate", source_task="md:r1:x", energy_width=0.001, force_width=w))
    return ids


def snapshot(state):
    return {t: state.db.execute(f"SELECT * FROM {t}").fetchall()
            for t in ("meta", "tasks", "structures", "decisions", "metrics", "events")}


def test_select_phase_decides_without_writing(campaign):
    cfg, state, view, applier, said = campaign
    ids = add_explored(state, cfg, [0.05, 0.3, 0.4, 0.5, 0.9])  # threshold 0.15, upper 0.6
    state.set_meta("phase", "select")
    state.set_meta("round", "1")
    before = snapshot(state)
    ops = phases_sync.select_round(view)
    assert snapshot(state) == before  # a planner never writes
    decisions = {op.structure_id: op.decision for op in ops if isinstance(op, plan.Decide)}
    assert set(decisions) == set(ids)
    tests = [sid for sid, d in decisions.items() if d == "test"]  # 2 random sane frames held out
    assert len(tests) == 2 and ids[4] not in tests
    assert decisions[ids[4]] == "unphysical"  # above the trust bound
    assert decisions[ids[0]] in ("confident", "test")  # below the threshold
    assert all(decisions[i] in ("label", "test") for i in ids[1:4])  # uncertain: labeled unless held out
    assert ops[-1] == plan.SetPhase(plan.Phase.LABEL)
    assert not said
    applier.apply(ops)
    assert view.phase == plan.Phase.LABEL
    assert state.decision_counts(1) == {**{d: list(decisions.values()).count(d) for d in set(decisions.values())}}
    assert view.metrics("round")[1]["n_explored"] == 5
    assert any(m.startswith("round 1: 5 frames explored") for m in said)


def test_confident_round_stops_as_converged(campaign):
    cfg, state, view, applier, said = campaign
    add_explored(state, cfg, [0.01] * 6)
    state.set_meta("phase", "select")
    state.set_meta("round", "1")
    ops = phases_sync.select_round(view)
    stop = ops[-1]
    assert isinstance(stop, plan.Stop) and stop.kind == plan.StopKind.CONVERGED
    assert stop.phase == plan.Phase.FINAL_EVAL and "converged" in stop.reason


def test_md_result_becomes_candidates_then_one_scoring_task(campaign):
    cfg, state, view, applier, said = campaign
    frames = [build_structure(cfg.structures[0]) for _ in range(2)]
    frames[1].positions[0] += 0.2
    md_row = dict(key="md:r1:LiNiO2:T600:w0", kind=TaskKind.MD.value, round=1, generation=0, status="submitted",
                  attempts=1, request=_md_request(view), context='{"spec": "LiNiO2"}', result=None)
    task = Task.from_row(md_row)
    result = {"frames_extxyz": to_extxyz(frames)}
    ops = recorders.record_md(view, task, result)
    assert [type(op) for op in ops] == [plan.AddStructure, plan.AddStructure]
    assert all(op.row["status"] == "candidate" and op.row["source_task"] == task.key for op in ops)
    assert all(op.row["screen"] == "" and op.row["min_distance"] > 1 and op.row["fingerprint"] for op in ops)
    assert recorders.score_exploration(view, task, result) == []  # nothing stored yet: nothing to score
    applier.apply(ops)
    (add,) = recorders.score_exploration(view, task, result)
    assert add.spec.kind == TaskKind.SCORE and add.spec.key == f"uq:{task.key}"
    assert isinstance(add.spec.context, ScoreContext) and len(add.spec.context.structure_ids) == 2


def test_async_phase_fills_free_gpu_slots_with_explorations(tmp_path):
    cfg = load_config(write_campaign(tmp_path))  # async, 2 gpu slots
    state = State(cfg.directory / "state.sqlite")
    view = CampaignView(cfg, state, DatasetStore(state), gpu_slots=2, say=lambda m: None)
    state.add_model(0, 0, "train:g0:m0", "/m0.pth")
    state.add_model(0, 1, "train:g0:m1", "/m1.pth")
    state.set_meta("phase", "async")
    state.set_meta("round", "1")
    (op,) = phases_async.async_phase(view)
    assert isinstance(op, plan.AddTask) and op.spec.kind == TaskKind.MD and op.spec.round == 1
    assert op.spec.request.model_path in ("/m0.pth", "/m1.pth")


def _md_request(view) -> str:
    import json

    from remote_al.records import MDRequest

    return json.dumps(MDRequest(task_key="md:r1:LiNiO2:T600:w0", workdir=view.task_dir("md:r1"), model_path="/m.pth",
                                structure_extxyz="").to_dict())


def test_lock_file_is_gone_after_release_and_a_stale_open_does_not_split_the_lock(tmp_path):
    """No stale driver.lock after a run; a driver that opened the file just before the
    holder removed it does not end up holding a lock on a file nobody else sees."""
    from driver.campaign import CampaignLock
    from driver.errors import CampaignLocked

    first = CampaignLock(tmp_path)
    first.acquire()
    assert "driver pid" in first.path.read_text()
    with pytest.raises(CampaignLocked, match="one driver per campaign"):
        CampaignLock(tmp_path).acquire()
    first.release()
    assert not first.path.exists()
    second, third = CampaignLock(tmp_path), CampaignLock(tmp_path)
    second.acquire()
    stale = open(second.path, "a+")  # opened before the holder leaves
    second.release()
    stale.close()
    third.acquire()  # a fresh file, one holder
    assert third.path.exists()
    with pytest.raises(CampaignLocked):
        CampaignLock(tmp_path).acquire()
    third.release()


def test_training_requests_carry_the_continuation_settings(tmp_path):
    """A continued generation's members get the campaign's continue_prefactors and
    deepmd_continue; generation 0 trains from scratch."""
    from driver.campaign import requests as rq

    toml = write_campaign(tmp_path, training={"continue_prefactors": "restart"})
    toml.write_text(toml.read_text() + "[training.deepmd_continue.learning_rate]\nstart_lr = 0.0005\n")
    cfg = load_config(toml)
    state = State(cfg.directory / "state.sqlite")
    view = CampaignView(cfg, state, DatasetStore(state), gpu_slots=2, say=lambda m: None)
    specs0, _ = rq.training(view, 0, ("/data/sys",))
    assert all(s.request.init_model is None for s in specs0)
    for m in range(2):
        state.add_model(0, m, f"train:g0:m{m}", f"/g0m{m}.pth", checkpoint=f"/g0m{m}.ckpt.pt")
    specs1, what = rq.training(view, 1, ("/data/sys",))
    assert "(continued)" in what
    assert [s.request.init_model for s in specs1] == ["/g0m0.ckpt.pt", "/g0m1.ckpt.pt"]
    assert all(s.request.continue_prefactors == "restart" for s in specs1)
    assert all(s.request.deepmd_continue == {"learning_rate": {"start_lr": 0.0005}} for s in specs1)


def round0_waiting_for_relaxations(tmp_path, **sections):
    """A sync campaign whose round 0 asked the labeler to relax every structure and now
    waits: returns ``(cfg, state, fresh_view)``, ``fresh_view()`` a view of the state as
    it is now. The first ``generate`` asks for the relaxations and nothing else."""
    cfg = load_config(write_campaign(tmp_path, steering={"mode": "sync"}, **sections))
    state = State(cfg.directory / "state.sqlite")
    store, said = DatasetStore(state), []

    def fresh_view():
        return CampaignView(cfg, state, store, gpu_slots=2, say=said.append)

    applier = Applier(state, store, Placement(cfg.directory, None, None), fresh_view(), said.append, Hooks())
    ops = phases_sync.generate(fresh_view())
    assert sorted(op.spec.key for op in ops if isinstance(op, plan.AddTask)) == sorted(
        f"relax-label:{s.name}" for s in cfg.structures)
    assert not any(isinstance(op, plan.AddStructure) for op in ops)  # nothing labeled before the relaxations
    applier.apply(ops)
    assert phases_sync.generate(fresh_view()) == []  # still waiting
    return cfg, state, fresh_view


def relax_by(cfg, state, scale: float) -> dict:
    """The labeler's relaxations come back as the built cells scaled by ``scale``;
    returns each structure's built cell."""
    built = {}
    for spec in cfg.structures:
        a = build_structure(spec)
        built[spec.name] = a.copy()
        a.set_cell(a.cell[:] * scale, scale_atoms=True)
        state.mark_done(f"relax-label:{spec.name}", {"relaxed_extxyz": to_extxyz(a)})
    return built


def selected_rows(fresh_view) -> list[dict]:
    return [op.row for op in phases_sync.generate(fresh_view())
            if isinstance(op, plan.AddStructure) and op.row["status"] == "selected"]


def test_initial_frames_also_around_the_labeler_relaxation(tmp_path):
    """``[initial] n_relaxed_per_structure``: round 0 waits for the labeler's relaxation of
    each structure, then adds that many training frames around the relaxed cell on top of
    those around the built one (which the MD keeps starting from)."""
    import io

    from ase.io import read

    cfg, state, fresh_view = round0_waiting_for_relaxations(
        tmp_path, initial={"n_per_structure": 3, "n_relaxed_per_structure": 2})
    # a "relaxed" cell 33 % larger in volume: its frames cannot be mistaken for the built ones
    built_volume = {name: a.get_volume() for name, a in relax_by(cfg, state, 1.1).items()}
    rows = selected_rows(fresh_view)
    for spec in cfg.structures:
        mine = [r for r in rows if r["spec"] == spec.name]
        ratio = {r["hash"]: read(io.StringIO(r["extxyz"]), format="extxyz").get_volume() / built_volume[spec.name]
                 for r in mine}
        near_relaxed = [r for r in mine if ratio[r["hash"]] > 1.2]
        assert len(near_relaxed) == 2 and all(r["split"] == "train" for r in near_relaxed)
        assert sum(r["split"] == "train" for r in mine) == 3 + 2
        assert all(ratio[r["hash"]] < 1.1 for r in mine if r not in near_relaxed)  # the rest: around the built cell
    assert fresh_view().start_structure(cfg.structures[0]).get_volume() == pytest.approx(
        built_volume[cfg.structures[0].name])  # relax = false: MD still starts from the built structure


def test_held_out_frames_around_the_labeler_relaxation(tmp_path):
    """``[test] n_relaxed_per_structure``: held-out (calibration) frames around the labeler's
    relaxed cell, unstrained, beside the held-out frames around the built one; alone it is
    enough to make round 0 wait for the relaxations, and no training frame comes from it."""
    import io

    from ase.io import read

    cfg, state, fresh_view = round0_waiting_for_relaxations(
        tmp_path, initial={"n_per_structure": 3, "strain": 0.05},
        test={"n_initial_per_structure": 1, "n_relaxed_per_structure": 3})
    relaxed_cell = {name: a.cell[:] * 1.1 for name, a in relax_by(cfg, state, 1.1).items()}
    ops = [op for op in phases_sync.generate(fresh_view()) if isinstance(op, plan.AddStructure)]
    rows = [op.row for op in ops if op.row["status"] == "selected"]
    notes = {op.row["hash"]: op.decision[2] for op in ops}
    for spec in cfg.structures:
        mine = [r for r in rows if r["spec"] == spec.name]
        cells = {r["hash"]: read(io.StringIO(r["extxyz"]), format="extxyz").cell[:] for r in mine}
        near = [r for r in mine if np.allclose(cells[r["hash"]], relaxed_cell[spec.name], atol=1e-6)]
        assert len(near) == 3 and all(r["split"] == "test" for r in near)  # exactly the relaxed cell: unstrained
        assert all(notes[r["hash"]].endswith("unstrained, around the labeler's relaxed structure") for r in near)
        assert all("strained 0.05" in notes[r["hash"]] for r in mine if r not in near)
        assert sum(r["split"] == "train" for r in mine) == 3 and sum(r["split"] == "test" for r in mine) == 1 + 3


def test_initial_relaxation_that_failed_leaves_only_the_built_frames(tmp_path):
    cfg = load_config(write_campaign(tmp_path, initial={"n_per_structure": 3, "n_relaxed_per_structure": 2},
                                     steering={"mode": "sync"}))
    state = State(cfg.directory / "state.sqlite")
    store, said = DatasetStore(state), []
    view = CampaignView(cfg, state, store, gpu_slots=2, say=said.append)
    Applier(state, store, Placement(cfg.directory, None, None), view, said.append, Hooks()).apply(
        phases_sync.generate(view))
    for spec in cfg.structures:
        state.mark_quarantined(f"relax-label:{spec.name}", "labeler relaxation did not converge")
    view = CampaignView(cfg, state, store, gpu_slots=2, say=said.append)
    ops = phases_sync.generate(view)
    train = [op.row for op in ops if isinstance(op, plan.AddStructure) and op.row["split"] == "train"]
    assert len(train) == 3 * len(cfg.structures)
    assert any("no labeler relaxation of" in m and "quarantined" in m for m in said), said


def test_md_can_start_at_the_labeler_minimum_while_the_initial_data_stay_built(tmp_path):
    """``exploration.md_start = "labeler_minimum"``: the NPT/NVT runs start from the labeler's
    relaxed structure, the initial data and the ensemble relaxations from the built one; the
    option needs a labeler relaxation, and says so when the campaign runs none (as
    ``selection.calibration_frames = "held_out"`` does when no frame is held out)."""
    from driver.campaign import requests as rq
    from driver.errors import ConfigError

    cfg, state, fresh_view = round0_waiting_for_relaxations(
        tmp_path, initial={"n_per_structure": 3}, test={"n_relaxed_per_structure": 1},
        exploration={"md_start": "labeler_minimum", "relax": True, "temperatures_K": [300.0]})
    built = relax_by(cfg, state, 1.1)
    for m in range(2):
        state.add_model(0, m, f"train:g0:m{m}", f"/models/g0m{m}.pth")
    view = fresh_view()
    for spec in cfg.structures:
        assert np.allclose(view.md_start_structure(spec).cell[:], built[spec.name].cell[:] * 1.1)
        assert np.allclose(view.start_structure(spec).cell[:], built[spec.name].cell[:])
    md = [rq.exploration(view, 1, 0, index=i) for i in range(len(view.sweep()))]
    assert {s.request.ensemble for s in md} == {"relax", "nvt"}
    for s in md:
        start = from_extxyz(s.request.structure_extxyz)[0]
        name = s.context.spec
        expected = built[name].cell[:] * (1.0 if s.request.ensemble == "relax" else 1.1)
        assert np.allclose(start.cell[:], expected), s.key
    (tmp_path / "held").mkdir()
    with pytest.raises(ConfigError, match="selection.calibration_frames.*holds none out"):
        load_config(write_campaign(tmp_path / "held", selection={"calibration_frames": "held_out"},
                                   test={"n_initial_per_structure": 0, "n_per_round": 0}))
    with pytest.raises(ConfigError, match="exploration.md_start.*runs none"):
        (tmp_path / "none").mkdir()
        load_config(write_campaign(tmp_path / "none", exploration={"md_start": "labeler_minimum"}))
