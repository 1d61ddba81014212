"""Colmena task servers as the Colmena backend runs them.

- ``GlobusComputeTaskServerAdapter``: Colmena 0.7's ``GlobusComputeTaskServer`` builds
  ``Executor(funcx_client=...)``, which the current Globus Compute SDK refuses (``TypeError:
  'funcx_client' is an invalid argument for Executor``); the adapter builds the executor
  with ``client=`` and leaves the rest of Colmena's server as it is. Usable on its own by
  any Colmena application.
- ``ServerSpec`` and ``serve``: the server the backend runs, described by picklable data
  and built inside its own process, a child of the driver started with ``spawn`` (a
  forked child would inherit the campaign's ``driver.lock`` and hold it after the driver
  died; a parsl ``Config`` cannot be pickled, so it is built there too). The server
  (``DriverBoundParslServer``, ``DriverBoundGlobusServer``) stops when its driver is gone
  instead of waiting forever on a queue nobody writes to, and stops without waiting for
  tasks in flight (the driver's ``shutdown`` contract).
- ``local_parsl_config``: one ``HighThroughputExecutor`` per pool on this machine, labelled
  by pool, with the pool's worker count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from colmena.exceptions import KillSignalException, TimeoutException
from colmena.models import FailureInformation
from colmena.task_server.globus import GlobusComputeTaskServer
from colmena.task_server.parsl import ParslTaskServer

log = logging.getLogger(__name__)


class GlobusComputeTaskServerAdapter(GlobusComputeTaskServer):
    """Colmena's Globus Compute task server with the executor the installed SDK accepts.

    ``result_serializers``: import paths of the strategies the endpoint serializes results
    with (the SDK's default when empty). Colmena's ``Result`` records are Python objects,
    so its server needs a pickling strategy for them (the SDK's default does that).
    """

    def __init__(self, *args, result_serializers: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.result_serializers = list(result_serializers or [])

    def _setup(self):
        from globus_compute_sdk import Executor

        self.fx_exec = Executor(client=self.fx_client, batch_size=self._batch_options["batch_size"],
                                result_serializers=self.result_serializers or None)


class _DriverBound:
    """A task server process that ends with the driver that started it.

    Colmena's ``listen_and_launch`` blocks on the task queue without a timeout (or stops at
    the first timeout); this one wakes every ``poll_s`` seconds to check that its parent is
    still the driver, and returns when it is not.
    """

    poll_s = 1.0
    driver_pid: int = 0

    def listen_and_launch(self):
        while True:
            try:
                topic, task = self.queues.get_task(self.poll_s)
            except TimeoutException:
                if self.driver_pid and os.getppid() != self.driver_pid:
                    log.warning("driver %d is gone: the Colmena task server stops", self.driver_pid)
                    return
                continue
            except KillSignalException:
                return
            if task.method in self.method_names:
                self.process_queue(topic, task)
            else:
                task.success = False
                task.failure_info = FailureInformation.from_exception(
                    ValueError(f"method {task.method!r} is not served here: {sorted(self.method_names)}"))
                self.queues.send_result(task)


class DriverBoundParslServer(_DriverBound, ParslTaskServer):
    """``ParslTaskServer`` bound to its driver; stops its executors without waiting for tasks."""

    def _cleanup(self):
        import parsl

        try:
            parsl.dfk().cleanup()
        except Exception as exc:  # stopping must not raise over the reason for stopping
            log.warning("parsl cleanup: %s", exc)


class DriverBoundGlobusServer(_DriverBound, GlobusComputeTaskServerAdapter):
    """The Globus Compute adapter bound to its driver (tasks keep running on the endpoints)."""


def local_parsl_config(run_dir: str | os.PathLike, workers: dict[str, int]):
    """A parsl ``Config`` with one local ``HighThroughputExecutor`` per pool (label = pool
    name), each with that pool's number of workers whatever the number of cores."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    executors = [
        HighThroughputExecutor(
            label=pool,
            address="127.0.0.1",
            encrypted=False,
            max_workers_per_node=n,
            cores_per_worker=1e-3,  # the slots decide, not the cores
            heartbeat_period=2,
            heartbeat_threshold=10,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
        for pool, n in workers.items()
    ]
    return Config(executors=executors, run_dir=str(Path(run_dir)), strategy="none", retries=0)


@dataclass(frozen=True)
class ServerSpec:
    """What the task server process builds: ``kind`` "parsl" or "globus"; ``functions``:
    name -> import path; ``pools``: name -> pool; ``workers``: pool -> worker count;
    ``parsl_config``: an importable function returning a parsl ``Config`` with executors
    labelled by pool (default ``local_parsl_config``); ``endpoints``: pool -> endpoint id."""

    kind: str
    functions: dict[str, str]
    pools: dict[str, str]
    workers: dict[str, int]
    run_dir: str
    driver_pid: int
    parsl_config: Callable | None = None
    endpoints: dict[str, str] = field(default_factory=dict)


def build_server(spec: ServerSpec, queues):
    """The Colmena task server of ``spec``, bound to its driver (not started)."""
    from colmena.models.methods import PythonMethod

    from driver.backends.base import load_function

    methods = {fn: PythonMethod(load_function(fn, spec.functions), name=fn) for fn in spec.pools}
    if spec.kind == "parsl":
        config = (spec.parsl_config() if spec.parsl_config
                  else local_parsl_config(Path(spec.run_dir) / "parsl", spec.workers))
        server = DriverBoundParslServer([(m, {"executors": [spec.pools[fn]]}) for fn, m in methods.items()],
                                        queues, config)
    else:
        from globus_compute_sdk import Client

        by_endpoint = {m: spec.endpoints[spec.pools[fn]] for fn, m in methods.items()}
        server = DriverBoundGlobusServer(by_endpoint, funcx_client=Client(), queues=queues)
    server.driver_pid = spec.driver_pid
    return server


def serve(spec: ServerSpec, queues, log_path: str) -> None:
    """The task server process: build the server and run it until the kill signal or the
    driver's end. Its logging goes to ``log_path``. It leads a process group of its own,
    which parsl's interchanges join, so that the driver can end them all should the
    server die without cleaning up (``os.killpg``)."""
    os.setsid()
    logging.basicConfig(filename=log_path, level=logging.INFO, force=True,
                        format="%(asctime)s %(process)d %(name)s: %(message)s")
    build_server(spec, queues).run()
