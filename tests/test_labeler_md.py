"""Initial data from MD driven by the labeler (``[initial]`` / ``[test]``
``n_md_per_structure``): round 0 asks for one labeler MD run per structure from the
labeler's relaxed structure, then labels its frames as training and held-out frames; the
registered function runs real CHGNet MD; the configuration refuses what cannot run."""

from __future__ import annotations

import numpy as np
import pytest

from driver.campaign import phases_sync, plan
from driver.campaign.tasks import TaskKind
from driver.config import load_config
from driver.dataset import frame_hash
from driver.errors import ConfigError
from driver.preflight import build_structure
from remote_al.structures import from_extxyz, to_extxyz
from test_durability import write_campaign
from test_planners import relax_by, round0_waiting_for_relaxations


def md_frames(atoms, n: int, seed: int) -> str:
    """``n`` frames as a labeler MD result would carry them: displaced copies of ``atoms``."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info["md_step"] = 10 * (k + 1)
        out.append(a)
    return to_extxyz(out)


def test_round0_runs_labeler_md_from_the_relaxed_structure_and_labels_its_frames(tmp_path):
    cfg, state, fresh_view = round0_waiting_for_relaxations(
        tmp_path, initial={"n_per_structure": 2, "n_md_per_structure": 3, "md_equil_steps": 50,
                           "md_interval_steps": 5},
        test={"n_initial_per_structure": 1, "n_md_per_structure": 2},
        exploration={"temperatures_K": [300.0]})
    built = relax_by(cfg, state, 1.1)
    ops = phases_sync.generate(fresh_view())
    tasks = [op.spec for op in ops if isinstance(op, plan.AddTask)]
    assert sorted(t.key for t in tasks) == sorted(f"md-label:{s.name}" for s in cfg.structures)
    assert not any(isinstance(op, plan.AddStructure) for op in ops)  # nothing before the MD frames
    for t in tasks:
        req = t.request
        assert t.kind == TaskKind.MD_LABEL and t.kind.pool == "cpu" and t.kind.function == "md_label"
        assert (req.labeler, req.model_path, req.temperature_K) == (cfg.labeler.kind, "", 300.0)
        assert (req.n_frames, req.steps, req.equil_steps) == (3 + 2, 5 * 5, 50)
        start = from_extxyz(req.structure_extxyz)[0]  # the labeler's minimum, not the built cell
        assert np.allclose(start.cell[:], built[t.key.split(":", 1)[1]].cell[:] * 1.1)
    assert len({t.request.seed for t in tasks}) == len(tasks)  # each structure its own velocities
    from driver.campaign.apply import Applier
    from driver.campaign.hooks import Hooks
    from driver.dataset import DatasetStore
    from driver.placement import Placement

    store = DatasetStore(state)
    Applier(state, store, Placement(cfg.directory, None, None), fresh_view(), print, Hooks()).apply(ops)
    assert phases_sync.generate(fresh_view()) == []  # waiting for the MD runs
    frames = {}
    for k, t in enumerate(tasks):
        frames[t.key] = md_frames(from_extxyz(t.request.structure_extxyz)[0], 5, k)
        state.mark_done(t.key, {"frames_extxyz": frames[t.key], "n_frames": 5, "mean_temperature_K": 301.0,
                                "stop_reason": ""})
    ops = [op for op in phases_sync.generate(fresh_view()) if isinstance(op, plan.AddStructure)]
    for spec in cfg.structures:
        key = f"md-label:{spec.name}"
        mine = [op for op in ops if op.row["spec"] == spec.name and op.row.get("source_task") == key]
        assert [op.row["split"] for op in mine] == ["test", "train", "train", "train", "test"]  # spread over the run
        assert [op.row["hash"] for op in mine] == [frame_hash(a) for a in from_extxyz(frames[key])]  # run order
        assert all(op.row["origin"] == "initial" and op.row["status"] == "selected" for op in mine)
        assert all("labeler MD at 301 K" in op.decision[2] for op in mine)
        others = [op for op in ops if op.row["spec"] == spec.name and "source_task" not in op.row]
        assert sum(op.row["split"] == "train" for op in others) == 2 and len(others) == 3  # rattled ones as before


def test_labeler_md_that_failed_leaves_the_rattled_frames_and_says_so(tmp_path):
    cfg, state, fresh_view = round0_waiting_for_relaxations(
        tmp_path, initial={"n_per_structure": 2, "n_md_per_structure": 2})
    relax_by(cfg, state, 1.0)
    from driver.campaign.apply import Applier
    from driver.campaign.hooks import Hooks
    from driver.dataset import DatasetStore
    from driver.placement import Placement

    said = []
    view = fresh_view()
    Applier(state, DatasetStore(state), Placement(cfg.directory, None, None), view, said.append, Hooks()).apply(
        phases_sync.generate(view))
    for spec in cfg.structures:
        state.mark_quarantined(f"md-label:{spec.name}", "CHGNet: out of memory")
    from driver.campaign.view import CampaignView

    view = CampaignView(cfg, state, DatasetStore(state), gpu_slots=2, say=said.append)
    ops = phases_sync.generate(view)
    assert any(f"labeler MD of {s.name} gave 0 of 2 frames (quarantined)" in m for s in cfg.structures
               for m in said), said
    rows = [op.row for op in ops if isinstance(op, plan.AddStructure)]
    assert rows and not any(r.get("source_task") for r in rows)
    assert sum(r["split"] == "train" for r in rows) == 2 * len(cfg.structures)
    assert any(isinstance(op, plan.SetPhase) for op in ops)  # round 0 goes on without them


def test_labeler_md_configuration_is_checked(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="initial.n_md_per_structure.*VASP-driven MD"):
        load_config(write_campaign(tmp_path / "a", initial={"n_md_per_structure": 4},
                                   labeler={"kind": "vasp", "settings": {}}))
    (tmp_path / "b").mkdir()  # labeler MD runs the labeler's relaxations: MD can start at its minimum
    cfg = load_config(write_campaign(tmp_path / "b", initial={"n_md_per_structure": 4},
                                     exploration={"md_start": "labeler_minimum"}))
    assert cfg.initial.md_equil_steps == 300 and cfg.initial.md_interval_steps == 10
    (tmp_path / "c").mkdir()  # its held-out frames are enough to calibrate on held-out frames only
    cfg = load_config(write_campaign(tmp_path / "c", test={"n_initial_per_structure": 0, "n_per_round": 0,
                                                           "n_md_per_structure": 4},
                                     selection={"calibration_frames": "held_out"}))
    assert cfg.test.n_md_per_structure == 4
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="md_interval_steps"):
        load_config(write_campaign(tmp_path / "d", initial={"n_md_per_structure": 4, "md_interval_steps": 0}))


def test_the_md_function_runs_chgnet_md_when_given_the_labeler(tmp_path):
    """The registered ``md_label`` function (``run_md`` with ``labeler``) on real CHGNet:
    the equilibration keeps no frame, the frames are spread over the rest."""
    from driver.backends.base import FUNCTIONS, load_function
    from driver.config_models import StructureSpec
    from remote_al.records import MDRequest

    assert FUNCTIONS["md_label"] == FUNCTIONS["md"]
    atoms = build_structure(StructureSpec(name="LiNiO2"))
    req = MDRequest(task_key="md-label:LiNiO2", workdir=str(tmp_path / "w"), model_path="",
                    structure_extxyz=to_extxyz(atoms), temperature_K=300.0, steps=6, n_frames=3, equil_steps=4,
                    seed=3, labeler="chgnet", ensemble="nvt")
    res = load_function("md_label")(req.to_dict())
    frames = from_extxyz(res["frames_extxyz"])
    assert res["n_frames"] == 3 and res["steps_done"] == 6 and res["stop_reason"] == ""
    assert [f.info["md_step"] for f in frames] == [2, 4, 6]
    moved = [float(np.abs(f.positions - atoms.positions).max()) for f in frames]
    assert all(0 < m < 0.5 for m in moved) and len(set(moved)) == 3
    assert res["mean_temperature_K"] > 0
    with pytest.raises(ValueError, match="model_path .* or labeler, not both"):
        load_function("md_label")({**req.to_dict(), "model_path": "/m.pth"})


def test_every_task_kind_has_its_recorders_and_md_label_keeps_its_frames():
    """A result of a kind without an entry could not be recorded (the engine retries it
    and quarantines it); round 0 reads the labeler MD frames from the stored result."""
    from driver.campaign.recorders import RECORDERS, slim

    assert set(RECORDERS) == set(TaskKind)
    assert slim(TaskKind.MD_LABEL, {"frames_extxyz": "x", "n_frames": 1})["frames_extxyz"] == "x"


@pytest.mark.slow
def test_a_campaign_labels_and_trains_on_its_labeler_md_frames(tmp_path, monkeypatch):
    """Through the engine and the local backend: the labeler relaxations and MD run for
    real (CHGNet), the rest of the loop on the simulated functions; the MD frames are
    labeled, trained on (training) and held out (test)."""
    import sqlite3

    from driver.backends import make_backend
    from driver.campaign import Campaign
    from test_durability import SIM_FUNCTIONS, sim_env

    for key, value in sim_env(tmp_path).items():
        if key.startswith("REMOTE_AL_SIM"):
            monkeypatch.setenv(key, value)
    cfg = load_config(write_campaign(
        tmp_path, campaign={"max_rounds": 1},
        initial={"n_md_per_structure": 2, "md_equil_steps": 4, "md_interval_steps": 2},
        test={"n_md_per_structure": 1}, volume={"enabled": False, "max_steps": 30}))
    functions = {**SIM_FUNCTIONS, "md_label": "remote_al.functions:run_md",
                 "relax_label": "remote_al.functions:relax_structure"}
    backend = make_backend("local", run_dir=cfg.directory / "engine", gpu_slots=2, cpu_slots=2, functions=functions)
    try:
        reason = Campaign(cfg, backend, say=lambda m: None, status_every_s=5).run()
    finally:
        backend.shutdown()
    assert reason.startswith("round budget"), reason
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    done = dict(db.execute("SELECT key, status FROM tasks WHERE function = 'md_label'").fetchall())
    assert done == {f"md-label:{s.name}": "done" for s in cfg.structures}
    rows = db.execute("SELECT s.spec, s.split, l.status FROM structures s JOIN labels l ON l.structure_id = s.id "
                      "WHERE s.source_task LIKE 'md-label:%'").fetchall()
    for spec in cfg.structures:
        mine = [r for r in rows if r[0] == spec.name]
        assert sorted(r[1] for r in mine) == ["test", "train", "train"] and all(r[2] == "ok" for r in mine)
    n_frames = db.execute("SELECT COUNT(*) FROM frames WHERE exploration LIKE 'md-label:%' AND split = 'train'"
                          ).fetchone()[0]
    assert n_frames == 2 * len(cfg.structures)  # in the exported training set
