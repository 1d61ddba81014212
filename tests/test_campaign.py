"""A one-round mini campaign end to end on the local backend, checked in SQLite."""

import json
import sqlite3
from pathlib import Path

import pytest

from remote_al.structures import from_extxyz

from driver.backends.local import LocalBackend
from driver.config import parse_config
from driver.errors import CampaignLocked
from driver.campaign import Campaign, CampaignLock

pytestmark = pytest.mark.slow

MINI = {
    "campaign": {"name": "mini", "type_map": ["Li", "Ni", "O"], "seed": 3, "max_rounds": 1},
    "backend": {"gpu_slots": 2, "cpu_slots": 1, "retry_backoff_s": 0.5},
    "structures": [{"name": "LiNiO2", "li_content": 1.0}],
    "initial": {"n_per_structure": 5, "rattle_A": 0.05, "strain": 0.02},
    "exploration": {"temperatures_K": [600.0], "steps": 30, "n_frames": 5},
    "selection": {"force_threshold": 0.0, "force_upper": 1000.0, "max_per_round": 2},
    "labeler": {"kind": "chgnet", "batch_size": 3},
    "training": {"ensemble_size": 2, "numb_steps": 60, "numb_steps_continue": 30},
    "test": {"n_initial_per_structure": 2, "n_per_round": 1},
    "steering": {},
}


def mini_config(tmp_path, **sections):
    data = json.loads(json.dumps(MINI))
    for k, v in sections.items():
        data[k].update(v)
    return parse_config(data, base_dir=tmp_path)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_one_round_mini_campaign(tmp_path, mode):
    # the calibration pairs weighted (selection.calibration_weighting): by energy in the
    # synchronous run (pooling each generation's pairs with the previous one's), held-out MD
    # frames only in the asynchronous one
    weighting = "thermal" if mode == "sync" else "md"
    # (the asynchronous one on held-out frames only: selection.calibration_frames)
    pool = 2 if mode == "sync" else 1
    cal_frames = "all" if mode == "sync" else "held_out"
    cfg = mini_config(tmp_path, steering={"mode": mode},
                      selection={"calibration_weighting": weighting, "calibration_pool": pool,
                                 "calibration_frames": cal_frames})
    lines = []
    backend = LocalBackend(cfg.directory / "engine", gpu_slots=2, cpu_slots=1)
    reason = Campaign(cfg, backend, say=lines.append, status_every_s=5).run()
    assert reason == "round budget of 1 rounds reached"

    db = sqlite3.connect(cfg.directory / "state.sqlite")
    db.row_factory = sqlite3.Row
    phases = [r["message"] for r in db.execute("SELECT message FROM events WHERE kind='phase' ORDER BY id")]
    if mode == "sync":
        assert phases == [
            "round 0: train", "round 0: evaluate", "round 1: explore", "round 1: select",
            "round 1: label", "round 1: train", "round 1: evaluate", "round 1: done",
        ]
    else:
        # the last round's generation moves the engine's label round past it; shown as the last
        assert phases == ["round 0: train", "round 0: evaluate", "round 1: async", "round 1: final_eval", "round 1: done"]
    assert db.execute("SELECT value FROM meta WHERE key='phase'").fetchone()[0] == "done"
    # every task finished; none left in flight
    assert {r[0] for r in db.execute("SELECT DISTINCT status FROM tasks")} == {"done"}
    fns = {r[0]: r[1] for r in db.execute("SELECT function, COUNT(*) FROM tasks GROUP BY function")}
    # async keeps the second GPU slot busy with a further exploration while the first runs
    assert fns["train"] == 4 and fns["label"] >= 3 and (fns["md"] == 1 if mode == "sync" else fns["md"] >= 1)

    # initial: 5 train + 2 test, labeled; round 1: 2 selected + 1 held-out
    n_initial = db.execute("SELECT COUNT(*) FROM structures WHERE origin='initial'").fetchone()[0]
    assert n_initial == 7
    dec = {r[0]: r[1] for r in db.execute("SELECT decision, COUNT(*) FROM decisions WHERE round=1 GROUP BY decision")}
    assert dec.get("label") == 2 and dec.get("test") == 1
    # threshold 0 -> everything else is uncertain: skipped by the cap or a near-duplicate, none confident
    assert "confident" not in dec
    labeled = db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
    assert labeled == 7 + 3
    # each selected structure labeled exactly once
    assert db.execute("SELECT COUNT(*) FROM structures WHERE status='labeled'").fetchone()[0] == labeled

    # two generations of two frozen models; generation 1 continued from generation 0
    models = db.execute("SELECT generation, member, path FROM models ORDER BY generation, member").fetchall()
    assert [(m[0], m[1]) for m in models] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(Path(m[2]).exists() for m in models)
    req = json.loads(db.execute("SELECT request FROM tasks WHERE key='train:g1:m0'").fetchone()[0])
    assert req["init_model"].endswith(".pt") and "train-g0-m0" in req["init_model"]

    # dataset versions: generation 1 trains on generation 0's frames plus the new labels, no test frames
    ds = {r["generation"]: json.loads(r["structure_ids"]) for r in db.execute("SELECT * FROM datasets")}
    assert set(ds[0]) < set(ds[1]) and len(ds[1]) == len(ds[0]) + 2
    test_ids = {r[0] for r in db.execute("SELECT id FROM structures WHERE split='test'")}
    assert not test_ids & set(ds[1])
    gen1 = cfg.directory / "datasets" / "gen-001"
    assert (gen1 / "train.extxyz").exists() and list((gen1 / "deepmd").glob("*/set.000/force.npy"))

    # per-round UQ numbers and the evaluation of every generation on the held-out set
    rm = {r["name"]: r["value"] for r in db.execute("SELECT * FROM metrics WHERE scope='round' AND idx=1")}
    assert rm["n_explored"] == 5 * fns["md"] and rm["force_width_median"] > 0
    final = {(r["idx"], r["name"]): r["value"] for r in db.execute("SELECT * FROM metrics WHERE scope='final'")}
    assert final[(0, "n_test")] == final[(1, "n_test")] == 3
    assert final[(0, "force_rmse_eV_A")] > 0 and final[(1, "force_rmse_eV_A")] > 0
    assert any("stopping: round budget" in line for line in lines)

    # each generation is calibrated on its held-out and out-of-bag frames; no member is
    # calibrated on a frame it trained on (in its generation or the one it continued from)
    from remote_al.calibration import read_calibration

    for g in (0, 1):
        cal = read_calibration(cfg.directory, g)
        assert cal is not None and cal.n_force_pairs > 0, cal
        # held_out: the out-of-bag frames are still evaluated (below) but not in the fit
        assert ("out-of-bag" in cal.source) == (cal_frames == "all") and "held-out test frames" in cal.source, cal
        # thermal: the engine handed the fit every evaluated frame with its labeler energy
        # (those of the generation pooled in too)
        assert cal.weighting == weighting and "unweighted:" not in cal.note, cal
        pooled = [0] if (pool == 2 and g == 1) else []
        assert cal.pooled_generations == pooled, cal
        if pooled:
            assert cal.n_frames == read_calibration(cfg.directory, 0).n_frames + sum(
                json.loads(db.execute("SELECT result FROM tasks WHERE key=?", (key,)).fetchone()[0])["n_frames"]
                for key in ("eval:g1", "oob:g1")), cal
        if weighting == "md":  # the round's one held-out frame is from its MD, tagged so in the
            # request, the initial copies are not (too few frames here for any fit: a fallback)
            ereq = json.loads(db.execute("SELECT request FROM tasks WHERE key=?", (f"eval:g{g}",)).fetchone()[0])
            tags = [a.info.get("held_out_md", "") for a in from_extxyz(ereq["frames_extxyz"])]
            assert sum(map(bool, tags)) == g and all(t.startswith("md:r1:") for t in tags if t), tags
            assert cal.effective_frames == g, cal
        oob = db.execute("SELECT request FROM tasks WHERE key=?", (f"oob:g{g}",)).fetchone()
        oreq = json.loads(oob[0])
        frames = from_extxyz(oreq["frames_extxyz"])
        assert len(frames) == len(oreq["oob_members"]) > 0
        from driver.dataset import frame_hash

        seen = {m: set() for m in range(2)}
        for k in range(g + 1):
            treq = {m: json.loads(db.execute("SELECT request, result FROM tasks WHERE key=?",
                                             (f"train:g{k}:m{m}",)).fetchone()[0]) for m in range(2)}
            tres = {m: json.loads(db.execute("SELECT result FROM tasks WHERE key=?",
                                             (f"train:g{k}:m{m}",)).fetchone()[0]) for m in range(2)}
            man = json.loads((cfg.directory / "datasets" / f"gen-{k:03d}" / "manifest.json").read_text())
            for m in range(2):
                for sysdir, held in zip(treq[m]["systems"], tres[m]["out_of_bag"]):
                    hs = man["systems"][Path(sysdir).name]
                    seen[m] |= {h for j, h in enumerate(hs) if j not in set(held)}
        for a, members in zip(frames, oreq["oob_members"]):
            for m in members:
                assert frame_hash(a) not in seen[m]

    # running a finished campaign again does nothing and says so
    again = Campaign(cfg, LocalBackend(cfg.directory / "engine", 1, 1), say=lines.append).run()
    assert again == reason
    assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == sum(fns.values())  # no new work


def test_second_driver_is_refused(tmp_path):
    lock = CampaignLock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(CampaignLocked, match="one driver per campaign"):
            CampaignLock(tmp_path).acquire()
    finally:
        lock.release()
    CampaignLock(tmp_path).acquire()  # free again
