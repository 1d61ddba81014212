"""The local engine service (``backend.engine_lifetime = "campaign"``, the default): the
local backend's engines run in a process that outlives the driver, so a killed driver
throws no task away, and a killed service's tasks are run again by its successor.

The driver runs the simulated workload (real serializer and engine, sleeps instead of
physics) and is killed with SIGKILL from outside or at the engine's named points; the
lost work is measured from the service's own execution log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driver.backends.local_service import ServiceDir, pid_alive, execution_stats
from test_durability import (
    check_invariants,
    kill_at_points_then_resume,
    run_driver,
    sim_env,
    write_campaign,
)


def _engine(tmp_path: Path) -> ServiceDir:
    return ServiceDir(tmp_path / "camp" / "engine")


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_campaign_ends_its_service_and_every_task_runs_once(tmp_path):
    toml = write_campaign(tmp_path)
    r = run_driver(toml, sim_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    sdir = _engine(tmp_path)
    assert not sdir.alive(), "the service must end with the campaign"
    assert not sdir.info_path.exists()
    assert sdir.counts() == {"inbox": 0, "running": 0, "results": 0}, "recorded results are forgotten"
    stats = execution_stats(sdir.root)
    assert stats["tasks"] > 20 and stats["repeated"] == 0 and stats["lost_s"] == 0.0
    check_invariants(tmp_path / "camp", tmp_path / "exec-log")


@pytest.mark.slow
def test_sigkill_of_the_driver_throws_no_task_away(tmp_path):
    """The driver killed from outside 5 times at random moments and restarted at once: no
    execution of any task is repeated or cut short (lost work 0), nothing is lost or
    labeled twice, and each restart collects what finished meanwhile."""
    toml = write_campaign(tmp_path, campaign={"seed": 9})
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="0.04")
    rng = random.Random(7)
    argv = [sys.executable, "-m", "driver.cli", "run", str(toml)]
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 8.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert _engine(tmp_path).alive(), "the service must outlive the killed driver"
    r = run_driver(toml, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills >= 3
    stats = check_invariants(tmp_path / "camp", Path(env["REMOTE_AL_SIM_LOG_DIR"]))
    assert stats["re_executions"] == 0, "a label was computed twice"
    work = execution_stats(_engine(tmp_path).root)
    assert work["repeated"] == 0 and work["lost_share"] == 0.0, work
    assert not _engine(tmp_path).alive()


@pytest.mark.slow
def test_sigkill_at_named_points_repeats_no_task(tmp_path):
    """The driver killed at each of the engine's named points (among them: right after
    handing tasks over, before noting them as submitted): the restarted driver attaches to
    the tasks already in the service instead of handing them over again."""
    toml = write_campaign(tmp_path)
    points = ["after_submit:1", "after_submit:3", "before_record:4", "in_record:5", "after_record:7",
              "after_export:2", "phase:3", "after_submit:25"]
    stats = kill_at_points_then_resume(toml, sim_env(tmp_path), points, min_kills=5)
    assert stats["re_executions"] == 0
    work = execution_stats(_engine(tmp_path).root)
    assert work["repeated"] == 0, work


@pytest.mark.slow
def test_a_killed_service_is_started_again_and_reruns_what_it_had_taken(tmp_path):
    toml = write_campaign(tmp_path)
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="0.04")
    out = (tmp_path / "run.out").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "driver.cli", "run", str(toml)], env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    sdir = _engine(tmp_path)
    _wait_for(lambda: sdir.alive() and sdir.counts()["running"] > 0, 120, "a task running in the service")
    first = sdir.info()["pid"]
    os.killpg(first, signal.SIGKILL)  # the service and its workers, as an out-of-memory kill would
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.out").read_text()[-3000:]
    events = [json.loads(line) for line in (sdir.root / "executions.jsonl").read_text().splitlines()]
    assert any(e["event"] == "requeue" for e in events), "the successor must run the taken tasks again"
    assert "is gone: starting it again" in (tmp_path / "run.out").read_text()
    work = execution_stats(sdir.root)
    assert work["repeated"] >= 1 and 0 < work["lost_share"] < 0.5, work
    check_invariants(tmp_path / "camp", Path(env["REMOTE_AL_SIM_LOG_DIR"]))


def test_stop_refuses_while_a_driver_runs_then_ends_the_service(tmp_path):
    toml = write_campaign(tmp_path)
    # 1 s per simulated unit: the campaign (97 s to its end at 0.2 s) is far from done when
    # Ctrl-C comes; the return code checks that Ctrl-C is what ended the driver
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="1.0")
    proc = subprocess.Popen([sys.executable, "-m", "driver.cli", "run", str(toml)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sdir = _engine(tmp_path)
    try:
        _wait_for(lambda: sdir.alive() and sdir.counts()["running"] > 0, 120, "a task running in the service")
        stop = [sys.executable, "-m", "driver.cli", "stop", str(tmp_path / "camp")]
        refused = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "stop the driver first" in refused.stderr
        assert sdir.alive()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the driver ends, the service goes on
        proc.wait(timeout=180)  # on 2 cores busy with other work it once took over 60 s
    assert proc.returncode != 0, "the campaign finished before Ctrl-C: nothing was interrupted"
    assert sdir.alive() and sdir.counts()["running"] + sdir.counts()["inbox"] > 0
    status = [sys.executable, "-m", "driver.cli", "status", str(tmp_path / "camp")]
    shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
    assert f"local engine service: up (pid {sdir.info()['pid']})" in shown, shown
    done = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stopped the local engine service" in done.stdout and "submits them again" in done.stdout
    assert not sdir.alive()
    pid = int(done.stdout.split("(pid ")[1].split(")")[0])
    assert not pid_alive(pid), "the service must be gone at once, not after its tasks"
    shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "local engine service: not running;" in shown and "submitted again" in shown, shown
    again = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "no local engine service is running" in again.stdout
    r = run_driver(toml, sim_env(tmp_path))  # the abandoned tasks are submitted again
    assert r.returncode == 0, r.stderr[-3000:]
    check_invariants(tmp_path / "camp", tmp_path / "exec-log")


def test_engine_lifetime_driver_keeps_the_engine_in_the_driver(tmp_path):
    toml = write_campaign(tmp_path, backend={"engine_lifetime": "driver"})
    r = run_driver(toml, sim_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _engine(tmp_path).lock_path.exists() and not (tmp_path / "camp" / "engine" / "inbox").exists()
    check_invariants(tmp_path / "camp", tmp_path / "exec-log")
