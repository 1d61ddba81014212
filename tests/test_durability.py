"""Durability and faults of the steering driver, on the local backend with the simulated
workload (the functions' real contracts through the real serializer and engine, with
sleeps instead of physics, so a whole campaign takes seconds).

The driver runs as a separate process and is killed with SIGKILL — by itself at the
engine's named points (a hook passed to the engine: tests/crash_driver.py), and from
outside at random moments — then restarted, until the campaign completes. Nothing may be
lost and no label stored twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from driver.backends.local import LocalBackend
from driver.errors import BackendUnavailable
from driver.campaign import Campaign
from remote_al.simulated import FUNCTIONS as SIM_FUNCTIONS

SIM = {
    "campaign": {"name": "sim", "type_map": ["Li", "Ni", "O"], "seed": 5, "max_rounds": 2},
    "backend": {"gpu_slots": 2, "cpu_slots": 2, "retry_backoff_s": 0.2, "workload": "simulated"},
    "structures": [{"name": "LiNiO2"}, {"name": "Li0.75NiO2", "li_content": 0.75}],
    "initial": {"n_per_structure": 3},
    "exploration": {"temperatures_K": [600.0], "walkers": 1, "n_frames": 4, "guard": False},
    "selection": {"force_threshold": 0.15, "force_upper": 0.6, "max_per_round": 4},
    "labeler": {"batch_size": 2},
    "training": {"ensemble_size": 2},
    "test": {"n_initial_per_structure": 1, "n_per_round": 2},
    "steering": {"mode": "async"},
}


def write_campaign(tmp_path: Path, **sections) -> Path:
    data = json.loads(json.dumps(SIM))
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    lines = []
    for section, values in data.items():
        if section == "structures":
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for s in data["structures"]:
        lines.append("[[structures]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in s.items()]
    lines.insert(lines.index("[campaign]") + 1, f'workdir = "{tmp_path / "camp"}"')
    path = tmp_path / "sim.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def sim_env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(REMOTE_AL_SIM_UNIT_S="0.01", REMOTE_AL_SIM_LOG_DIR=str(tmp_path / "exec-log"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


CRASH_DRIVER = Path(__file__).parent / "crash_driver.py"


def run_driver(toml: Path, env: dict, timeout: float = 300, crash_at: str = "",
               backend: str = "local") -> subprocess.CompletedProcess:
    """Run the driver to its end (or its SIGKILL at ``crash_at``, POINT:N) on ``backend``
    (the CLI; tests/crash_driver.py when it kills itself). Output goes through files, not
    pipes: a worker process that outlives a killed driver must not keep the test waiting
    for EOF."""
    out, err = toml.with_suffix(".out"), toml.with_suffix(".err")
    if crash_at:
        argv = [sys.executable, str(CRASH_DRIVER), str(toml), crash_at, backend]
    else:
        argv = [sys.executable, "-m", "driver.cli", "run", str(toml), "--status-every", "2", "--backend", backend]
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.run(argv, env=env, stdout=fo, stderr=fe, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def check_invariants(camp: Path, exec_log: Path, generations: int = 3) -> dict:
    db = sqlite3.connect(camp / "state.sqlite")
    db.row_factory = sqlite3.Row
    assert db.execute("SELECT value FROM meta WHERE key='phase'").fetchone()[0] == "done"
    open_tasks = db.execute("SELECT key, status FROM tasks WHERE status NOT IN ('done')").fetchall()
    assert not open_tasks, [tuple(r) for r in open_tasks]
    # every structure chosen for labeling (or as a held-out frame) has exactly one label row
    chosen = {r[0] for r in db.execute("SELECT structure_id FROM decisions WHERE decision IN ('label','test')")}
    labels = Counter(r[0] for r in db.execute("SELECT structure_id FROM labels"))
    assert chosen and chosen <= set(labels), chosen - set(labels)
    assert all(n == 1 for n in labels.values())
    assert not db.execute("SELECT COUNT(*) FROM structures WHERE status IN ('selected','labeling')").fetchone()[0]
    # the dataset store holds every good label once
    n_ok = db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
    assert db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == n_ok
    # generations: complete ensembles, growing training sets without held-out frames
    gens = {}
    for g, ids in db.execute("SELECT generation, structure_ids FROM datasets ORDER BY generation"):
        gens[g] = set(json.loads(ids))
    assert sorted(gens) == list(range(generations))
    assert all(gens[g - 1] <= gens[g] for g in range(1, generations))
    test_ids = {r[0] for r in db.execute("SELECT id FROM structures WHERE split='test'")}
    assert not (test_ids & gens[generations - 1])
    for g in gens:
        assert db.execute("SELECT COUNT(*) FROM models WHERE generation=?", (g,)).fetchone()[0] == 2
    # label executions: every labeled structure ran at least once
    executed = Counter()
    for f in exec_log.glob("*.log"):
        for line in f.read_text().splitlines():
            executed.update(int(x) for x in line.split())
    assert set(labels) <= set(executed)
    return {"labels": len(labels), "re_executions": sum(n - 1 for n in executed.values())}


@pytest.mark.slow
def test_sigkill_at_named_points_then_resume(tmp_path):
    """With the engine inside the driver (``engine_lifetime = "driver"``): the tasks in
    flight die with it and are submitted again (tests/test_local_service.py: the default)."""
    toml = write_campaign(tmp_path, backend={"engine_lifetime": "driver"})
    points = ["after_submit:3", "before_record:4", "in_record:5", "after_record:7",
              "after_export:2", "phase:3", "after_submit:25", "in_record:30"]
    kill_at_points_then_resume(toml, sim_env(tmp_path), points, min_kills=5)


def kill_at_points_then_resume(toml: Path, env: dict, points: list[str], min_kills: int,
                               backend: str = "local") -> dict:
    """SIGKILL the driver at each named point in turn (until a run ends by itself), resume
    it to its end, and check that nothing was lost or labeled twice."""
    kills = 0
    for point in points:
        r = run_driver(toml, env, crash_at=point, backend=backend)
        if r.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert r.returncode == 0, r.stderr[-3000:]
            break
    assert kills >= min_kills, f"only {kills} crash points were reached"
    r = run_driver(toml, env, backend=backend)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    stats = check_invariants(toml.parent / "camp", Path(env["REMOTE_AL_SIM_LOG_DIR"]))
    # resubmission only for work in flight at a crash: bounded by the slots per crash
    assert stats["re_executions"] <= kills * 2 * SIM["labeler"]["batch_size"]
    return stats


@pytest.mark.slow
def test_sigkill_from_outside_at_random_moments(tmp_path):
    toml = write_campaign(tmp_path, campaign={"seed": 9})
    kill_at_random_moments_then_resume(toml, sim_env(tmp_path), random.Random(42), 6, (1.5, 5.0))


def kill_at_random_moments_then_resume(toml: Path, env: dict, rng: random.Random, runs: int,
                                       seconds: tuple[float, float], backend: str = "local") -> dict:
    """Start the driver ``runs`` times and SIGKILL it from outside after a random number of
    ``seconds`` each time (until a run ends by itself), resume it to its end, and check
    that nothing was lost or labeled twice."""
    argv = [sys.executable, "-m", "driver.cli", "run", str(toml), "--backend", backend]
    kills = 0
    for _ in range(runs):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*seconds))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    r = run_driver(toml, env, backend=backend)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills >= 3
    return check_invariants(toml.parent / "camp", Path(env["REMOTE_AL_SIM_LOG_DIR"]))


@pytest.mark.slow
def test_failing_functions_are_retried_and_nan_labels_quarantined(tmp_path):
    toml = write_campaign(tmp_path)
    env = sim_env(tmp_path, REMOTE_AL_SIM_FAIL_ONCE="train:g1:m0,label:r0:1-,md:r1",
                  REMOTE_AL_SIM_FAIL_ONCE_DIR=str(tmp_path / "faults"), REMOTE_AL_SIM_NAN_IDS="2")
    r = run_driver(toml, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "failed (attempt 1/3)" in r.stdout
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    attempts = dict(db.execute("SELECT key, attempts FROM tasks WHERE key IN ('train:g1:m0', 'label:r0:1-2')"))
    assert attempts == {"train:g1:m0": 2, "label:r0:1-2": 2}
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='retry'").fetchone()[0] >= 3
    # structure 2 came back with NaN forces: kept with its reason, absent from every training set
    status, reason = db.execute("SELECT status, reason FROM labels WHERE structure_id=2").fetchone()
    assert status == "failed" and "NaN" in reason
    assert db.execute("SELECT status FROM structures WHERE id=2").fetchone()[0] == "label_failed"
    for (ids,) in db.execute("SELECT structure_ids FROM datasets"):
        assert 2 not in json.loads(ids)
    assert db.execute("SELECT COUNT(*) FROM frames WHERE structure_id=2").fetchone()[0] == 0
    exported = (tmp_path / "camp" / "datasets" / "gen-002" / "train.extxyz").read_text()
    assert "nan" not in exported.lower()


@pytest.mark.slow
def test_task_failing_every_time_is_quarantined_with_its_error(tmp_path):
    toml = write_campaign(tmp_path, backend={"max_attempts": 1})
    env = sim_env(tmp_path, REMOTE_AL_SIM_FAIL_ONCE="label:r0:3-", REMOTE_AL_SIM_FAIL_ONCE_DIR=str(tmp_path / "f"))
    r = run_driver(toml, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "quarantined after 1 attempts" in r.stdout
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    status, error = db.execute("SELECT status, error FROM tasks WHERE key LIKE 'label:r0:3-%'").fetchone()
    assert status == "quarantined" and "simulated failure" in error
    rows = db.execute("SELECT status, reason FROM labels WHERE structure_id IN (3, 4)").fetchall()
    assert rows and all(s == "failed" and "quarantined" in why for s, why in rows)
    out = subprocess.run([sys.executable, "-m", "driver.cli", "status", str(tmp_path / "camp")],
                         capture_output=True, text=True)
    assert "quarantined" in out.stdout and "label:r0:3-4" in out.stdout


@pytest.mark.slow
def test_a_failed_training_stops_cleanly_and_retry_quarantined_takes_it_up_again(tmp_path):
    """A training quarantined (max_attempts 1) stops the campaign once, with exit status 1
    and the way out; `run --retry-quarantined` queues it again and the campaign ends by
    its own budget. A quarantined label task stays quarantined (its structures are failed
    labels with the reason)."""
    toml = write_campaign(tmp_path, backend={"max_attempts": 1})
    env = sim_env(tmp_path, REMOTE_AL_SIM_FAIL_ONCE="train:g1:m0,label:r0:3-",
                  REMOTE_AL_SIM_FAIL_ONCE_DIR=str(tmp_path / "f"))
    r = run_driver(toml, env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "cannot make progress" not in r.stderr and r.stdout.count("stopping: training of generation 1 failed") == 1
    assert "--retry-quarantined" in r.stdout
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    assert db.execute("SELECT status FROM tasks WHERE key='train:g1:m0'").fetchone()[0] == "quarantined"
    # the final evaluation skips the generation whose training failed
    assert db.execute("SELECT COUNT(*) FROM tasks WHERE key='final-eval:g1'").fetchone()[0] == 0
    argv = [sys.executable, "-m", "driver.cli", "run", str(toml), "--status-every", "2", "--retry-quarantined"]
    r2 = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "1 quarantined task(s) queued again (train:g1:m0)" in r2.stdout
    assert "1 label task(s) stay quarantined" in r2.stdout and "round budget of 2 rounds reached" in r2.stdout
    rows = dict(db.execute("SELECT key, status FROM tasks WHERE key LIKE 'train:g1:%' OR key LIKE 'label:r0:3-%' "
                           "OR key LIKE 'final-eval:%'"))
    assert rows.pop("train:g1:m0") == "done" and all(v == "done" for k, v in rows.items() if k.startswith(("train", "final")))
    assert {"final-eval:g0", "final-eval:g1", "final-eval:g2"} <= set(rows)
    assert [v for k, v in rows.items() if k.startswith("label")] == ["quarantined"]
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='retry' AND message LIKE '%lifted%'").fetchone()[0] == 1
    # a campaign that ended by its budget has nothing to retry
    r3 = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert r3.returncode == 0 and "nothing queued again" in r3.stdout


class OfflineForAWhile(LocalBackend):
    """The local endpoint refusing its first submissions (an endpoint offline for a while)."""

    def __init__(self, *args, refuse_first: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_refuse = refuse_first
        self.refused = 0

    def submit(self, pool, function, request, task_key):
        if self.refused < self.to_refuse:
            self.refused += 1
            raise BackendUnavailable(f"endpoint for {pool} is offline")
        return super().submit(pool, function, request, task_key)


@pytest.mark.slow
def test_endpoint_offline_for_a_while(tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0.01")
    toml = write_campaign(tmp_path, campaign={"max_rounds": 1}, backend={"retry_backoff_s": 0.5})
    from driver.config import load_config

    cfg = load_config(toml)
    backend = OfflineForAWhile(cfg.directory / "engine", 2, 2, functions=SIM_FUNCTIONS, refuse_first=2)
    lines: list[str] = []
    reason = Campaign(cfg, backend, say=lines.append, status_every_s=1).run()
    assert reason.startswith("round budget")
    assert backend.refused == 2
    assert any("endpoint unavailable" in line and "queued work kept" in line for line in lines)
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='offline'").fetchone()[0] >= 2
    assert {r[0] for r in db.execute("SELECT DISTINCT status FROM tasks")} == {"done"}


@pytest.mark.slow
def test_calibrated_threshold_is_used_for_selection(tmp_path, monkeypatch):
    """selection.force_threshold_mode = "calibrated": each generation's evaluation on
    held-out frames sets the width threshold the next selections use."""
    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0.01")
    toml = write_campaign(
        tmp_path, campaign={"max_rounds": 1},
        selection={"force_threshold_mode": "calibrated", "target_force_error": 0.01, "calibration_min_frames": 5},
        test={"n_initial_per_structure": 4},
    )
    from driver.config import load_config
    from remote_al.calibration import conformal_scale, read_calibration

    cfg = load_config(toml)
    backend = LocalBackend(cfg.directory / "engine", 2, 2, functions=SIM_FUNCTIONS)
    Campaign(cfg, backend, say=lambda m: None).run()
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    thr0 = db.execute("SELECT value FROM metrics WHERE scope='generation' AND idx=0 AND name='force_threshold'").fetchone()
    assert thr0 is not None and 0 < thr0[0] < 0.6
    res = json.loads(db.execute("SELECT result FROM tasks WHERE key='eval:g0'").fetchone()[0])
    cal = read_calibration(cfg.directory, 0)  # calibration/g0.json, fitted on the eval's per-atom pairs
    assert cal.force_calibrated and cal.n_force_pairs == sum(res["natoms"])
    assert cal.force_scale == pytest.approx(conformal_scale(res["atom_force_width"], res["atom_force_error"], 0.95))
    assert thr0[0] == pytest.approx(0.01 / cal.force_scale)
    used = db.execute("SELECT value FROM metrics WHERE scope='round' AND idx=1 AND name='force_threshold'").fetchone()
    assert used[0] == pytest.approx(thr0[0]) and used[0] != 0.15
    reasons = [r[0] for r in db.execute("SELECT reason FROM decisions WHERE round=1 AND decision='label'")]
    assert reasons and all(f"above {thr0[0]:g}" in r for r in reasons)
