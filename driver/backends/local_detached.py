"""The local backend with its engines in a service process that outlives the driver.

The driver packs each task as ``LocalBackend`` does (the real Globus Compute serializer)
and hands it to the campaign's local engine service (``driver.backends.local_service``)
through the engine folder; a watcher thread turns the service's result files into the
tasks' futures. A driver killed, stopped with Ctrl-C or asleep leaves the service running
its tasks, as a Globus Compute endpoint would; the next driver finds it again through
the folder and reattaches to every task, finished or not. When the service has died too,
its successor, started by the next driver, runs the tasks it had taken again.

The service ends when the campaign is done (``finish``), with ``remote-al stop``, or
after ``local_service.IDLE_EXIT_S`` with no task and no driver.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from driver.backends.base import Submission, resolve_future
from driver.backends.local import LocalBackend
from driver.backends.local_service import IDLE_EXIT_S, ServiceDir, read_message, task_name
from driver.code_watch import code_digest
from driver.errors import BackendUnavailable, TaskFailed

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # the service imports the Globus Compute engine before it says it is up


class DetachedLocalBackend(LocalBackend):
    """``LocalBackend`` whose engines live in the campaign's engine service."""

    name = "local"

    def __init__(self, run_dir, gpu_slots: int = 2, cpu_slots: int = 2, engine: str = "process",
                 spool_dir=None, functions: dict[str, str] | None = None, idle_exit_s: float = IDLE_EXIT_S,
                 poll_s: float = 0.05):
        super().__init__(run_dir, gpu_slots=gpu_slots, cpu_slots=cpu_slots, engine=engine,
                         spool_dir=spool_dir, functions=functions)
        self.sdir = ServiceDir(self.run_dir)
        self.idle_exit_s = idle_exit_s
        self.poll_s = poll_s
        self._pending: dict[str, tuple[str, Future]] = {}  # task_key -> (file name, future)
        self._mutex = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._halt = threading.Event()
        self._started = False
        self.service_pid: int | None = None

    # ------------------------------------------------------------------ service
    def _spawn(self) -> None:
        self.sdir.make()
        cmd = [sys.executable, "-m", "driver.backends.local_service", str(self.run_dir.resolve()),
               "--gpu-slots", str(self._slots["gpu"]), "--cpu-slots", str(self._slots["cpu"]),
               "--engine", self.engine_kind, "--idle-exit-s", str(self.idle_exit_s),
               "--functions", json.dumps(self.functions)]
        with open(self.sdir.log_path, "ab") as logf:
            # a session of its own: Ctrl-C in the driver's terminal does not reach it; no
            # inherited descriptors: it must not hold the campaign's driver.lock
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=os.getcwd())
        end = time.time() + START_TIMEOUT_S
        while time.time() < end:
            info = self.sdir.info()
            if info and info.get("pid") == proc.pid and self.sdir.alive():
                self.service_pid = proc.pid
                log.info("local engine service started (pid %d, log %s)", proc.pid, self.sdir.log_path)
                return
            if proc.poll() is not None and not self.sdir.alive():
                break
            time.sleep(0.1)
        tail = "\n".join(self.sdir.log_path.read_text(errors="replace").splitlines()[-15:])
        raise BackendUnavailable(f"the local engine service did not start (log {self.sdir.log_path}):\n{tail}")

    def _ensure_service(self) -> None:
        if self.sdir.alive():
            info = self.sdir.info() or {}
            self.service_pid = info.get("pid")
            wanted = {"gpu_slots": self._slots["gpu"], "cpu_slots": self._slots["cpu"], "engine": self.engine_kind}
            differs = {k: info.get(k) for k, v in wanted.items() if info.get(k) != v}
            if differs:
                log.warning("the running local engine service has %s, the campaign asks for %s: it keeps its "
                            "settings until it is restarted (remote-al stop, then run)", differs, wanted)
            if info.get("code") == code_digest():
                return
            busy = self.sdir.counts()
            if busy["inbox"] or busy["running"]:  # an upgrade under it: its tasks finish on the code they started
                log.warning("the running local engine service (pid %s) started on other remote-al code than this "
                            "driver's and has %d tasks: they and the tasks handed to it run on its code until it is "
                            "restarted (remote-al stop, then run)", self.service_pid, busy["inbox"] + busy["running"])
                return
            log.warning("the local engine service (pid %s) started on other remote-al code and is idle: "
                        "restarting it on this driver's", self.service_pid)
            if not self.sdir.stop():
                raise BackendUnavailable(f"the idle local engine service (pid {self.service_pid}) on older code did "
                                         "not end within 30 s: end it (remote-al stop), then run again")
        self._spawn()

    def start(self) -> None:
        if self._started:
            return
        from driver.backends.local import make_serializer

        self._serde = make_serializer()
        self._ensure_service()
        self._halt.clear()
        self._watcher = threading.Thread(target=self._watch, name="local-service-watcher", daemon=True)
        self._watcher.start()
        self._started = True

    def shutdown(self) -> None:
        """Detach: the service goes on with the tasks in flight (``finish`` ends it)."""
        if not self._started:
            return
        self._halt.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._started = False
        running = self.sdir.counts()
        if self.sdir.alive() and (running["inbox"] or running["running"]):
            log.warning("the local engine service (pid %s) goes on with %d tasks; the next `remote-al run` "
                        "collects them, `remote-al stop` ends them", self.service_pid,
                        running["inbox"] + running["running"])

    def finish(self) -> None:
        """The campaign is done: end the service."""
        self.shutdown()
        if not self.sdir.stop():
            log.warning("the local engine service did not end within 30 s (pid %s)", self.service_pid)

    # --------------------------------------------------------------------- tasks
    def submit(self, pool: str, function: str, request, task_key: str) -> Submission:
        if pool not in self._slots:
            raise ValueError(f"unknown pool {pool!r}: the local backend has 'gpu' and 'cpu'")
        if not self._started:
            raise BackendUnavailable("local backend is not started")
        body, task_id = self.pack(function, request)
        fut = self._expect(task_key)
        if self.sdir.where(task_key) is not None:
            # handed over by a driver killed before it noted the submission: the same request
            # is queued, running or done there (failed outcomes are removed when delivered)
            log.info("task %s is already in the local engine service: attached to it", task_key)
            return Submission(backend_id=str(task_id), future=fut)
        try:
            self.sdir.hand_over(pool, task_key, body)
        except OSError as exc:
            with self._mutex:
                self._pending.pop(task_key, None)
            raise BackendUnavailable(f"cannot hand the task to the local engine service: {exc}") from exc
        return Submission(backend_id=str(task_id), future=fut)

    def _expect(self, task_key: str) -> Future:
        fut: Future = Future()
        with self._mutex:
            self._pending[task_key] = (f"{task_name(task_key)}.result", fut)
        return fut

    def reattach(self, pool: str, function: str, backend_id: str, task_key: str) -> Future | None:
        if self.sdir.where(task_key) is not None:
            return self._expect(task_key)  # finished, running or queued in the service
        return self.spool.collect(task_key)  # a result kept by an in-process engine

    def forget(self, task_key: str) -> None:
        self.sdir.result_path(task_key).unlink(missing_ok=True)
        self.spool.forget(task_key)

    # ------------------------------------------------------------------- watcher
    def _watch(self) -> None:
        last_beat = last_check = 0.0
        while not self._halt.is_set():
            now = time.time()
            if now - last_beat > 1.0:
                self.sdir.heartbeat.touch()
                last_beat = now
            with self._mutex:
                pending = dict(self._pending)
            if pending:
                try:
                    present = set(os.listdir(self.sdir.results))
                except FileNotFoundError:
                    present = set()
                for key, (name, fut) in pending.items():
                    if name in present:
                        self._deliver(key, fut)
            if now - last_check > 2.0:  # also with nothing pending: a service that idled out
                last_check = now        # while this machine slept is back before the next task
                self._revive()
            self._halt.wait(self.poll_s)

    def _revive(self) -> None:
        """A service that died under the driver (killed, out of memory) is started again;
        it runs the tasks it had taken again."""
        if self.sdir.alive():
            return
        log.warning("the local engine service (pid %s) is gone: starting it again", self.service_pid)
        try:
            self._spawn()
        except BackendUnavailable as exc:
            log.error("%s", exc)

    def _deliver(self, key: str, fut: Future) -> None:
        try:
            header, body = read_message(self.sdir.result_path(key))
        except (OSError, ValueError):
            return  # forgotten meanwhile, or being replaced: the next poll sees it
        with self._mutex:
            self._pending.pop(key, None)
        try:
            if header.get("kind") == "engine_error":
                raise TaskFailed(header.get("message", "engine error"), code="EngineError")
            value = self._resolve(body)
        except Exception as exc:
            # a failed outcome is not kept: the retry (or a restarted driver) runs the task again
            self.sdir.result_path(key).unlink(missing_ok=True)
            if not isinstance(exc, TaskFailed):  # an unreadable result fails the task, never hangs it
                exc = TaskFailed(f"unreadable result: {type(exc).__name__}: {exc}", code="EngineError")
            resolve_future(fut, exc=exc)
            return
        resolve_future(fut, value)

