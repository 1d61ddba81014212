"""The local endpoint engine as a process of its own, which outlives the driver.

On a Globus Compute endpoint the tasks keep running when the driver dies; the local
backend behaves the same way when its engines run here, in a service process that the
driver starts on its first ``run`` and finds again through files in the engine folder:

- ``service.lock``: held (``flock``) by the live service for its whole life, so a dead
  one is known at once, whatever became of its pid;
- ``service.json``: the service's pid, start time, pools and engine;
- ``inbox/NAME.task``: a task the driver hands over (a JSON header line, then the task
  exactly as the cloud delivers it: ``LocalBackend.pack``), written by atomic rename;
- ``running/NAME.task``: a task the service has taken (renamed from the inbox);
- ``results/NAME.result``: its outcome (a JSON header line, then the engine's packed
  ``Result``), written by atomic rename before the running file is removed;
- ``executions.jsonl``: one line per start, end and requeue of a task (what ran, when);
- ``heartbeat``: touched by a driver attached to the service.

A task is always in exactly one of inbox, running or results (or forgotten by the driver
after it recorded the result), so a driver restarted at any moment knows each task's
fate from the files alone. A service that finds ``running/`` files at start (its
predecessor died with them) runs them again; the functions resume what they had kept
(a training from its checkpoint, a label batch from its journal).

The service ends on SIGTERM/SIGINT (``remote-al stop``, or the driver when the campaign
is done), or after ``idle_exit_s`` with no task and no driver heartbeat.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from driver.code_watch import code_digest

log = logging.getLogger("remote_al.local_service")

IDLE_EXIT_S = 900.0  # a service with no task and no driver for 15 min ends


def task_name(task_key: str) -> str:
    return task_key.replace("/", "_")


def _write_atomic(path: Path, header: dict, body: bytes = b"") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(header).encode() + b"\n" + body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_message(path: Path) -> tuple[dict, bytes]:
    """(header, body) of a task or result file."""
    data = path.read_bytes()
    head, _, body = data.partition(b"\n")
    return json.loads(head), body


class ServiceDir:
    """The files through which a driver and the service of one campaign meet."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.inbox, self.running, self.results = (self.root / d for d in ("inbox", "running", "results"))
        self.lock_path = self.root / "service.lock"
        self.info_path = self.root / "service.json"
        self.log_path = self.root / "service.log"
        self.heartbeat = self.root / "heartbeat"

    def make(self) -> None:
        for d in (self.inbox, self.running, self.results):
            d.mkdir(parents=True, exist_ok=True)

    def alive(self) -> bool:
        """Whether a service holds the lock (a shared probe: it never blocks the service)."""
        try:
            fh = open(self.lock_path, "a+")
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def info(self) -> dict | None:
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None

    def where(self, task_key: str) -> str | None:
        """'results', 'running' or 'inbox' for a task the service knows, else None."""
        name = task_name(task_key)
        for place, suffix in (("results", ".result"), ("running", ".task"), ("inbox", ".task")):
            if (self.root / place / f"{name}{suffix}").exists():
                return place
        return None

    def counts(self) -> dict[str, int]:
        return {place: sum(1 for p in (self.root / place).glob("*.*") if not p.name.startswith("."))
                if (self.root / place).is_dir() else 0 for place in ("inbox", "running", "results")}

    def hand_over(self, pool: str, task_key: str, body: bytes) -> None:
        _write_atomic(self.inbox / f"{task_name(task_key)}.task", {"key": task_key, "pool": pool}, body)

    def result_path(self, task_key: str) -> Path:
        return self.results / f"{task_name(task_key)}.result"

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Ask a live service to end (SIGTERM) and wait for it; True when none is left."""
        info = self.info()
        if not self.alive():
            return True
        if info and info.get("pid"):
            try:
                os.kill(int(info["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + timeout_s
        while time.time() < end:
            if not self.alive() and not pid_alive(info.get("pid") if info else None):
                return True
            time.sleep(0.1)
        return not self.alive()


def execution_stats(directory: Path) -> dict:
    """What the service ran, from ``executions.jsonl``: ``task_s`` (seconds of every
    execution), ``lost_s`` (seconds of executions whose work was thrown away: cut short by
    the service's end, or followed by another execution of the same task) and
    ``lost_share``, ``executions``, ``tasks``, ``repeated`` (tasks run more than once).
    An execution cut short ran until its task was started again, else until the log ends."""
    runs: dict[str, list[list[float | None]]] = {}
    last = 0.0
    path = Path(directory) / "executions.jsonl"
    for line in path.read_text().splitlines() if path.exists() else ():
        e = json.loads(line)
        last = max(last, e["t"])
        if e["event"] == "start":
            runs.setdefault(e["key"], []).append([e["t"], None])
        elif e["event"] == "end" and runs.get(e["key"]) and runs[e["key"]][-1][1] is None:
            runs[e["key"]][-1][1] = e["t"]
    task_s = lost_s = 0.0
    for execs in runs.values():
        for i, (start, end) in enumerate(execs):
            stop = end if end is not None else (execs[i + 1][0] if i + 1 < len(execs) else last)
            task_s += stop - start
            if i + 1 < len(execs) or end is None:
                lost_s += stop - start
    return {"task_s": task_s, "lost_s": lost_s, "lost_share": lost_s / task_s if task_s else 0.0,
            "executions": sum(map(len, runs.values())), "tasks": len(runs),
            "repeated": sum(1 for e in runs.values() if len(e) > 1)}


def service_status(run_dir: Path) -> dict | None:
    """The campaign's local engine service, for ``remote-al status``: None when it has none."""
    sdir = ServiceDir(Path(run_dir))
    if not sdir.lock_path.exists():
        return None
    return {"alive": sdir.alive(), "pid": (sdir.info() or {}).get("pid"), **sdir.counts()}


class Service:
    """The loop of the service process: take tasks from the inbox, run them on the local
    engines, write their results."""

    def __init__(self, sdir: ServiceDir, gpu_slots: int, cpu_slots: int, engine: str,
                 functions: dict[str, str] | None, idle_exit_s: float = IDLE_EXIT_S, poll_s: float = 0.05):
        self.sdir = sdir
        self.slots = {"gpu": gpu_slots, "cpu": cpu_slots}
        self.engine_kind = engine
        self.functions = functions
        self.idle_exit_s = idle_exit_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._active: set[str] = set()
        self._mutex = threading.Lock()
        self._journal = None

    def _note(self, **entry) -> None:
        with self._mutex:
            self._journal.write(json.dumps({"t": time.time(), **entry}) + "\n")
            self._journal.flush()

    def run(self) -> int:
        from driver.backends.local import LocalBackend

        self.sdir.make()
        lock = open(self.sdir.lock_path, "a+")
        for _ in range(100):  # a driver's liveness probe holds a shared lock for microseconds
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            log.info("another service holds %s: nothing to do", self.sdir.lock_path)
            return 0
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self._journal = open(self.sdir.root / "executions.jsonl", "a")
        backend = LocalBackend(self.sdir.root, gpu_slots=self.slots["gpu"], cpu_slots=self.slots["cpu"],
                               engine=self.engine_kind, functions=self.functions)
        backend.start()
        info = {"pid": os.getpid(), "started": time.time(), "gpu_slots": self.slots["gpu"],
                "cpu_slots": self.slots["cpu"], "engine": self.engine_kind, "functions": self.functions,
                "python": sys.executable, "host": os.uname().nodename, "code": code_digest()}
        _write_atomic(self.sdir.info_path, info)
        log.info("local engine service %d up: %s", os.getpid(), info)
        try:
            for path in sorted(self.sdir.running.glob("*.task"), key=lambda p: p.stat().st_mtime):
                self._note(event="requeue", key=read_message(path)[0].get("key"))
                self._start(backend, path)
            last_work = time.time()
            while not self._stop.is_set():
                for path in sorted(self.sdir.inbox.glob("*.task"), key=lambda p: p.stat().st_mtime):
                    taken = self.sdir.running / path.name
                    try:
                        os.replace(path, taken)
                    except FileNotFoundError:
                        continue
                    self._start(backend, taken)
                if self._active:
                    last_work = time.time()
                elif self._idle_since(last_work) > self.idle_exit_s:
                    log.info("no task and no driver for %.0f s: the service ends", self.idle_exit_s)
                    break
                self._stop.wait(self.poll_s)
        finally:
            log.info("local engine service %d ends (%d tasks still running)", os.getpid(), len(self._active))
            backend.shutdown()
            # now, not when the tasks are done (the executor's exit handler would wait for
            # them): the workers go, and with them their `dp` processes (PR_SET_PDEATHSIG)
            for child in multiprocessing.active_children():
                child.kill()
            self.sdir.info_path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        return 0

    def _idle_since(self, last_work: float) -> float:
        try:
            beat = self.sdir.heartbeat.stat().st_mtime
        except OSError:
            beat = 0.0
        return time.time() - max(last_work, beat)

    def _start(self, backend, taken: Path) -> None:
        try:
            header, body = read_message(taken)
        except (OSError, ValueError) as exc:  # a torn file cannot be a task the driver handed over
            log.warning("unreadable task file %s (%s): removed", taken, exc)
            taken.unlink(missing_ok=True)
            return
        key, pool = header["key"], header["pool"]
        result_path = self.sdir.result_path(key)
        t0 = time.time()

        def done(fut) -> None:
            try:
                out = ({"key": key, "kind": "result"}, fut.result())
            except BaseException as exc:  # engine-level failure: the driver turns it into TaskFailed
                out = ({"key": key, "kind": "engine_error", "message": f"{type(exc).__name__}: {exc}"}, b"")
            _write_atomic(result_path, *out)
            taken.unlink(missing_ok=True)
            with self._mutex:
                self._active.discard(key)
            self._note(event="end", key=key, pool=pool, seconds=round(time.time() - t0, 3), outcome=out[0]["kind"])

        with self._mutex:
            self._active.add(key)
        self._note(event="start", key=key, pool=pool)
        try:
            backend.submit_body(pool, body, uuid.uuid4(), done)
        except Exception as exc:
            with self._mutex:
                self._active.discard(key)
            _write_atomic(result_path, {"key": key, "kind": "engine_error", "message": str(exc)})
            taken.unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="remote-al's local engine service (started by the driver)")
    ap.add_argument("directory")
    ap.add_argument("--gpu-slots", type=int, default=2)
    ap.add_argument("--cpu-slots", type=int, default=2)
    ap.add_argument("--engine", default="process")
    ap.add_argument("--functions", default="", help="JSON map of function name to module:function")
    ap.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
    service = Service(ServiceDir(Path(args.directory)), args.gpu_slots, args.cpu_slots, args.engine,
                      json.loads(args.functions) if args.functions else None, args.idle_exit_s)
    code = service.run()
    logging.shutdown()
    os._exit(code)  # not sys.exit: no exit handler may wait for the killed workers' futures


if __name__ == "__main__":
    sys.exit(main())
