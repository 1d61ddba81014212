"""The Colmena backend: the registered functions as Colmena methods on a Colmena task server.

In Colmena's terms the campaign engine (``driver.campaign``) is the Thinker, the
registered functions (``remote_al.functions``) are the Doers, and this backend is the
client side of Colmena's queues in front of a task server:

- ``server="parsl"`` (default): ``ParslTaskServer`` with one local ``HighThroughputExecutor``
  per pool ("gpu" with ``gpu_slots`` workers, "cpu" with ``cpu_slots``), or the parsl
  ``Config`` that a user's importable function returns (executors labelled "gpu", "cpu");
- ``server="globus"``: Colmena's ``GlobusComputeTaskServer`` through the adapter for the
  installed SDK (``colmena_servers.GlobusComputeTaskServerAdapter``), each method sent to
  its pool's endpoint (``endpoints={"gpu": id, "cpu": id}``).

Queues: ``PipeQueues``, or ``RedisQueues`` when ``redis_url`` is given; topics per pool
(``TOPICS``), one topic per function, so the pool of a result is its topic's. Requests and
results travel as JSON (``serialization_method="json"``): the driver never unpickles a
result. A Colmena ``Result`` becomes the function's result dict, or ``TaskFailed``
(``result_value``); Colmena's own retries are off, the engine retries.

Durability: the campaign's state stays in the project's SQLite file; the engine writes a
task before ``submit`` and the Colmena task id (``backend_id``) right after. Results are
spooled to ``run_dir/spool/<task_key>.json`` the moment they arrive, so a driver killed
before recording one collects it on restart. The task server is the driver's child and
stops when the driver is gone (within a second): tasks running then are lost with it,
``reattach`` returns None for them and the engine resubmits. A task server that stops on
its own fails its tasks (``TaskServerLost``, retryable) and the next ``submit`` starts a
new one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from driver.backends.base import (
    FUNCTIONS,
    MAX_PAYLOAD_BYTES,
    Backend,
    Submission,
    load_function,
    resolve_future,
    venv_bin_on_path,
)
from driver.backends.globus_wire import as_json_ready
from driver.backends.spool import ResultSpool
from driver.errors import BackendUnavailable, PayloadTooLarge, TaskFailed

log = logging.getLogger(__name__)

# Colmena topics per pool: one per registered function, results come back by topic.
TOPICS: dict[str, tuple[str, ...]] = {"gpu": ("md", "uq", "train", "relax"),
                                      "cpu": ("label", "relax_label", "md_label")}


@dataclass
class _Waiting:
    task_key: str
    function: str
    future: Future


def result_value(result, function: str, task_key: str) -> dict:
    """The result dict of a Colmena ``Result``; ``TaskFailed`` when the task failed (retryable:
    the function raised, or its worker was lost) or returned no dict (not retryable)."""
    where = f"{function} task {result.task_id} ({task_key})"
    if not result.success:
        info = result.failure_info
        text = f"{info.exception}\n{info.traceback or ''}".strip() if info else "no failure information"
        raise TaskFailed(f"{where} failed on the Colmena task server:\n{text}", code="RemoteExecutionError")
    if result.serialization_method != "json":
        raise TaskFailed(f"{where}: the result is not JSON-serialized; the driver refuses it",
                         code="ResultNotJSON", retryable=False)
    value = result.value
    if not isinstance(value, dict):
        raise TaskFailed(f"{where} returned {type(value).__name__}, not a dict", code="ResultNotJSON",
                         retryable=False)
    return value


class ColmenaBackend(Backend):
    """Run the registered functions on a Colmena task server (see the module's docstring).

    ``functions``: name -> import path (a workload's own, e.g. the simulated one);
    ``parsl_config``: an importable function returning the parsl ``Config`` to use instead
    of the local one (executors labelled "gpu" and "cpu"; it runs in the task server's
    process). ``server="globus"`` logs in there as the SDK does (stored tokens, or
    ``GLOBUS_COMPUTE_CLIENT_ID``/``_SECRET``).
    """

    name = "colmena"

    def __init__(
        self,
        run_dir: str | os.PathLike,
        gpu_slots: int = 2,
        cpu_slots: int = 2,
        *,
        functions: dict[str, str] | None = None,
        server: str = "parsl",
        redis_url: str = "",
        parsl_config=None,
        endpoints: dict[str, str] | None = None,
        spool_dir: str | os.PathLike | None = None,
        stop_timeout_s: float = 30.0,
        restart_every_s: float = 30.0,
    ):
        if server not in ("parsl", "globus"):
            raise ValueError(f"unknown Colmena task server {server!r}: use 'parsl' or 'globus'")
        if server == "globus" and not all((endpoints or {}).get(pool) for pool in TOPICS):
            raise ValueError("the Globus Compute task server needs endpoints={'gpu': id, 'cpu': id}")
        self.run_dir = Path(run_dir)
        self.spool = ResultSpool(spool_dir or self.run_dir / "spool")
        self._slots = {"gpu": int(gpu_slots), "cpu": int(cpu_slots)}
        self.functions = dict(functions or FUNCTIONS)
        self.server_kind = server
        self.redis_url = redis_url
        self.parsl_config = parsl_config
        self.endpoints = dict(endpoints or {})
        self.stop_timeout_s = stop_timeout_s
        self.restart_every_s = restart_every_s
        self._next_restart = 0.0
        self._queues = None
        self._server = None
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners: list[threading.Thread] = []

    # ------------------------------------------------------------- lifecycle
    def served(self) -> dict[str, str]:
        """Function name -> pool, for the functions this backend serves."""
        return {fn: pool for pool, fns in TOPICS.items() for fn in fns if fn in self.functions}

    def _make_queues(self):
        topics = list(self.served())
        options = dict(serialization_method="json", keep_inputs=False)
        if not self.redis_url:
            from colmena.queue.python import PipeQueues

            return PipeQueues(topics, **options)
        from colmena.queue.redis import RedisQueues

        url = urlparse(self.redis_url)
        return RedisQueues(topics, hostname=url.hostname or "127.0.0.1", port=url.port or 6379,
                           prefix=f"remote-al-{os.getpid()}-{id(self):x}", **options)

    def start(self) -> None:
        if self._server is not None:
            return
        from driver.backends.colmena_servers import ServerSpec, serve

        self.run_dir.mkdir(parents=True, exist_ok=True)
        venv_bin_on_path()  # parsl starts process_worker_pool.py by name
        for fn in self.served():  # a missing function fails here, not in the server process
            load_function(fn, self.functions)
        spec = ServerSpec(self.server_kind, self.functions, self.served(), self._slots, str(self.run_dir),
                          os.getpid(), self.parsl_config, self.endpoints)
        queues = self._make_queues()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(spec, queues, str(self.run_dir / "task-server.log")),
            name="colmena-task-server", daemon=True)
        server.start()
        queues.set_role("client")
        self._queues, self._server = queues, server
        self._stop.clear()
        self._listeners = [threading.Thread(target=self._listen, args=(topic,), daemon=True,
                                            name=f"colmena-{topic}") for topic in self.served()]
        for thread in self._listeners:
            thread.start()

    def shutdown(self) -> None:
        """Stop the task server without waiting for tasks in flight; their futures stay pending."""
        server, self._server = self._server, None
        self._stop.set()
        if server is not None and server.is_alive():
            try:
                self._queues.send_kill_signal()
            except Exception as exc:  # a broken queue: stop the process instead
                log.warning("Colmena kill signal: %s", exc)
            server.join(self.stop_timeout_s)
            if server.is_alive():
                server.terminate()
                server.join(5)
        if server is not None:
            try:  # what the server started and left behind (interchanges), if it did not clean up
                os.killpg(server.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for thread in self._listeners:
            thread.join(timeout=2)
        self._listeners = []

    def slots(self, pool: str) -> int:
        return self._slots[pool]

    # ----------------------------------------------------------------- tasks
    def submit(self, pool: str, function: str, request, task_key: str) -> Submission:
        if self.served().get(function) != pool:
            raise ValueError(f"the colmena backend serves {function!r} on no pool {pool!r}; "
                             f"it serves {self.served()}")
        if self._server is None:
            raise BackendUnavailable("the colmena backend is not started")
        if not self._server.is_alive():
            self._restart()
        args = as_json_ready(request)
        size = len(json.dumps(args))
        if size > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                f"{function} request of {task_key} is {size / 1e6:.1f} MB, over the 10 MB task limit: "
                "pass paths to data on the endpoint's filesystem instead of the data")
        fut: Future = Future()
        with self._lock:  # a result cannot be read before its task is known
            task_id = self._queues.send_inputs(args, method=function, topic=function,
                                               task_info={"task_key": task_key})
            self._waiting[task_id] = _Waiting(task_key, function, fut)
        return Submission(backend_id=task_id, future=fut)

    def _listen(self, topic: str) -> None:
        from colmena.exceptions import TimeoutException

        watch = topic == next(iter(self.served()))  # one listener watches the server process
        while not self._stop.is_set():
            try:
                result = self._queues.get_result(topic, timeout=0.5)
            except TimeoutException:
                if watch:
                    self._check_server()
                continue
            except Exception as exc:  # a queue that failed (Redis restarting, ...): try again
                if self._stop.is_set():
                    return
                log.warning("reading Colmena's %s queue failed (will retry): %s", topic, exc)
                self._stop.wait(1.0)
                continue
            self._settle(result)

    def _settle(self, result) -> None:
        with self._lock:
            entry = self._waiting.pop(result.task_id, None)
        if entry is None:
            log.warning("a Colmena result for an unknown task %s", result.task_id)
            return
        try:
            value = result_value(result, entry.function, entry.task_key)
        except TaskFailed as exc:
            resolve_future(entry.future, exc=exc)
            return
        self.spool.write(entry.task_key, value)
        resolve_future(entry.future, value)

    def _check_server(self) -> None:
        """Fail the tasks of a task server that stopped on its own (retryable)."""
        server = self._server
        if server is None or server.is_alive() or self._stop.is_set():
            return
        with self._lock:
            lost, self._waiting = self._waiting, {}
        for task_id, entry in lost.items():
            resolve_future(entry.future, exc=TaskFailed(
                f"{entry.function} task {task_id} ({entry.task_key}): the Colmena task server stopped "
                f"(exit code {server.exitcode})", code="TaskServerLost"))

    def _restart(self) -> None:
        """A new task server in place of one that stopped (at most one try per ``restart_every_s``)."""
        exitcode = self._server.exitcode
        if time.monotonic() < self._next_restart:
            raise BackendUnavailable(f"the Colmena task server stopped (exit code {exitcode}); "
                                     "a new one starts soon")
        self._next_restart = time.monotonic() + self.restart_every_s
        log.warning("the Colmena task server stopped (exit code %s): starting a new one", exitcode)
        self._check_server()
        self.shutdown()
        try:
            self.start()
        except Exception as exc:
            raise BackendUnavailable(f"a new Colmena task server could not start: {exc}") from exc

    def reattach(self, pool: str, function: str, backend_id: str, task_key: str) -> Future | None:
        with self._lock:
            entry = self._waiting.get(backend_id)
        if entry is not None:
            return entry.future
        # None: the task died with the previous driver's task server, and the engine resubmits
        return self.spool.collect(task_key)

    def forget(self, task_key: str) -> None:
        """Drop a spooled result once the driver has recorded it."""
        self.spool.forget(task_key)

    def clean(self) -> None:
        self.spool.clean()
