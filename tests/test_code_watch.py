"""remote-al upgraded under a running driver (driver/code_watch.py): the driver stops
before it records anything with two versions of its code, and starts itself again on the
new code once the files are still; nothing is lost or repeated.

The end-to-end tests run the CLI from a copy of the packages (PYTHONPATH) on the simulated
workload and edit the copy while the campaign runs, as an upgrade would."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driver.code_watch import CodeChanged, CodeWatch
from test_durability import check_invariants, sim_env, write_campaign

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def _touch(path: Path, text: str = "\n# edited\n") -> None:
    with open(path, "a") as f:
        f.write(text)
    st = path.stat()  # a later mtime even on a coarse clock
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_watch_sees_rewritten_added_and_removed_files_and_nothing_else(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("a.py", "sub/b.py", "sub/c.py"):
        (pkg / name).write_text("x = 1\n")
    (pkg / "data.txt").write_text("not code\n")
    clock = Clock()
    watch = CodeWatch([pkg], every_s=1.0, clock=clock)
    assert watch.changed(force=True) == []
    (pkg / "data.txt").write_text("changed, but not code\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert watch.changed(force=True) == []
    _touch(pkg / "sub" / "b.py")
    assert watch.changed() == []  # looked less than every_s ago
    clock.t += 1.0
    assert watch.changed() == ["pkg/sub/b.py"]
    (pkg / "d.py").write_text("y = 2\n")
    (pkg / "sub" / "c.py").unlink()
    assert watch.changed() == ["pkg/sub/b.py"]  # the first change is what it reports from then on
    fresh = CodeWatch([pkg], clock=clock)
    (pkg / "d.py").unlink()
    (pkg / "e.py").write_text("")
    assert fresh.changed(force=True) == ["pkg/d.py", "pkg/e.py"]
    with pytest.raises(CodeChanged, match=r"changed on disk.*pkg/d\.py, pkg/e\.py.*start the same `remote-al run`"):
        fresh.check()


def test_wait_still_waits_for_quiet_files_and_gives_up_on_busy_ones(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("")
    clock = Clock()
    watch = CodeWatch([pkg], clock=clock)
    edits = iter(range(3))

    def sleep_and_edit(s):  # an upgrade writing a file in each of the first 3 seconds
        clock.sleep(s)
        if next(edits, None) is not None:
            _touch(pkg / "a.py")

    assert watch.wait_still(quiet_s=5, timeout_s=60, sleep=sleep_and_edit)
    assert 7 <= clock.t <= 9  # the last edit at 3 s, then 5 s still

    def always_edit(s):
        clock.sleep(s)
        _touch(pkg / "a.py")

    assert not watch.wait_still(quiet_s=5, timeout_s=20, sleep=always_edit)


def _copy_packages(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for pkg in ("driver", "remote_al"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _start_and_edit_mid_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Start the driver from a copy of the packages, edit the copy once generation 0's
    training is recorded, wait for the driver to end."""
    src = _copy_packages(tmp_path)
    toml = write_campaign(tmp_path)
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="0.05", REMOTE_AL_CODE_QUIET_S="1",
                  PYTHONPATH=os.pathsep.join([str(src), str(ROOT)]))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = [sys.executable, "-m", "driver.cli", "run", str(toml), "--status-every", "1", *extra]
    db_path = tmp_path / "camp" / "state.sqlite"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(argv, env=env, stdout=fo, stderr=fe, cwd=tmp_path)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if db_path.exists():
                db = sqlite3.connect(db_path, timeout=10)
                try:
                    n = db.execute("SELECT COUNT(*) FROM tasks WHERE key LIKE 'train:g0:%' AND status='done'").fetchone()[0]
                except sqlite3.OperationalError:  # tables not created yet
                    n = 0
                db.close()
                if n:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, "the campaign ended before it could be edited: " + out.read_text()[-2000:]
        _touch(src / "driver" / "calibrate.py", "\n# an upgrade\n")
        proc.wait(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, out.read_text(), err.read_text()), toml


@pytest.mark.slow
def test_driver_restarts_itself_on_new_code_and_finishes_the_campaign(tmp_path):
    r, _ = _start_and_edit_mid_run(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "code changed on disk while this driver ran (driver/calibrate.py)" in r.stdout
    assert "restarting the driver on the new code" in r.stdout
    assert r.stdout.count("campaign sim: resuming at round") == 1 and "done: round budget" in r.stdout
    stats = check_invariants(tmp_path / "camp", tmp_path / "exec-log")
    assert stats["labels"] > 0
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='code-changed'").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM tasks WHERE status='quarantined'").fetchone()[0] == 0


@pytest.mark.slow
def test_on_code_change_stop_exits_75_and_the_next_run_resumes(tmp_path):
    r, toml = _start_and_edit_mid_run(tmp_path, "--on-code-change", "stop")
    assert r.returncode == 75, r.stdout[-3000:] + r.stderr[-3000:]
    assert "start the same `remote-al run` again" in r.stdout and "restarting" not in r.stdout
    db = sqlite3.connect(tmp_path / "camp" / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='phase'").fetchone()[0] != "done"
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="0.05",
                  PYTHONPATH=os.pathsep.join([str(tmp_path / "src"), str(ROOT)]))
    r2 = subprocess.run([sys.executable, "-m", "driver.cli", "run", str(toml), "--status-every", "1"], env=env,
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    check_invariants(tmp_path / "camp", tmp_path / "exec-log")


def test_an_idle_service_on_other_code_is_restarted_and_a_busy_one_kept(tmp_path, caplog):
    """The local engine service records the code it started on; a driver on other code (an
    upgrade since) restarts it when it has no task, and leaves it, saying so, when it has."""
    import json as _json

    from driver.backends.local_detached import DetachedLocalBackend
    from driver.backends.local_service import ServiceDir
    from driver.code_watch import code_digest
    from remote_al.simulated import FUNCTIONS as SIM_FUNCTIONS

    def backend():
        return DetachedLocalBackend(tmp_path / "run", gpu_slots=1, cpu_slots=1, functions=SIM_FUNCTIONS)

    first = backend()
    first.start()
    sdir = ServiceDir(tmp_path / "run")
    try:
        info = sdir.info()
        assert info["code"] == code_digest()
        first.shutdown()  # the driver detaches; the service goes on
        same = backend()
        same.start()  # the same code: attached as it is
        assert same.service_pid == info["pid"]
        same.shutdown()
        # the service as an older remote-al would have left it: another digest
        sdir.info_path.write_text(_json.dumps({**info, "code": "older"}))
        (sdir.running / "x.task").write_text("{}\n")  # a task of its own in flight
        busy = backend()
        busy.start()
        assert busy.service_pid == info["pid"] and sdir.alive()
        assert "has 1 tasks: they and the tasks handed to it run on its code" in caplog.text
        busy.shutdown()
        (sdir.running / "x.task").unlink()
        idle = backend()
        idle.start()
        assert idle.service_pid != info["pid"] and sdir.alive()
        assert sdir.info()["code"] == code_digest()
        assert "started on other remote-al code and is idle: restarting it" in caplog.text
        idle.finish()
    finally:
        sdir.stop()
    assert not sdir.alive()
