"""The local backend: the real Globus Compute code path without the cloud.

Each task is packed exactly as the cloud path packs it — the function serialized with
``ComputeSerializer`` (by reference to its importable module, ``DillCode``), the request
serialized and packed with ``pack_buffers``, wrapped in a ``messagepack`` ``Task`` — and
handed to a ``globus_compute_endpoint`` engine (``ProcessPoolEngine`` by default,
``GlobusComputeEngine`` with parsl's ``LocalProvider`` as the HPC-faithful option). The
packed ``Result`` is unpacked and its JSON data deserialized by a serializer that only
allows JSON. So what passes locally is what the cloud path serializes and executes.

Two pools, "gpu" (MD, UQ, training) and "cpu" (labeling), each its own engine with its
own number of worker processes. Results are spooled to ``spool_dir/<task_key>.json``
(atomic rename) the moment they arrive, so a driver killed before recording a finished
result collects it on restart instead of recomputing it (``reattach``). Tasks that were
still running when the driver died are gone with its worker processes: ``reattach``
returns None for them and the loop resubmits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from concurrent.futures import Future, wait
from pathlib import Path

from driver.backends.base import (
    FUNCTIONS,
    MAX_PAYLOAD_BYTES,
    Backend,
    Submission,
    load_function,
    venv_bin_on_path,
)
from driver.backends.spool import ResultSpool
from driver.errors import BackendUnavailable, PayloadTooLarge, TaskFailed

log = logging.getLogger(__name__)

JSON_RESULT = "globus_compute_sdk.serialize.JSONData"


def _init_worker(log_path: str) -> None:
    """Worker start-up: send the worker's stdout/stderr to a log file, not the driver's terminal."""
    from remote_al.training import die_with_parent

    parent = os.getppid()
    die_with_parent()
    if parent == 1:  # the driver died while this worker was starting: nobody will send work
        os._exit(0)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")


def make_serializer():
    """The serializer for tasks: functions by reference to their module (``DillCode``),
    arguments as JSON (``JSONData``), as the endpoint templates' ``allowed_serializers`` require."""
    from globus_compute_sdk.serialize import ComputeSerializer, DillCode, JSONData

    return ComputeSerializer(strategy_code=DillCode(), strategy_data=JSONData())


def deserialize_json_result(data: str):
    """Deserialize a result only if it was serialized as JSON: never unpickle remote data."""
    from globus_compute_sdk.serialize import JSONData

    strategy = JSONData()
    if not data.startswith(strategy.identifier):
        raise TaskFailed(
            "result is not JSON-serialized; refusing to deserialize it "
            "(the endpoint must run tasks with result_serializers=[JSONData])",
            code="UnsafeResult",
            retryable=False,
        )
    return strategy.deserialize(data)


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        run_dir: str | os.PathLike,
        gpu_slots: int = 2,
        cpu_slots: int = 2,
        engine: str = "process",
        spool_dir: str | os.PathLike | None = None,
        functions: dict[str, str] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.spool_dir = Path(spool_dir) if spool_dir else self.run_dir / "spool"
        self.spool = ResultSpool(self.spool_dir)
        self._slots = {"gpu": int(gpu_slots), "cpu": int(cpu_slots)}
        if engine not in ("process", "gce"):
            raise ValueError(f"unknown local engine {engine!r}: use 'process' or 'gce'")
        self.engine_kind = engine
        # name -> "module:function"; the registered functions unless a workload replaces them
        self.functions = dict(functions or FUNCTIONS)
        self._engines: dict = {}
        self._fn_buffers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._serde = None  # driver side: serializes tasks

    # ---------------------------------------------------------------- engines
    def _make_engine(self, pool: str):
        n = self._slots[pool]
        if self.engine_kind == "process":
            from globus_compute_endpoint.engines import ProcessPoolEngine

            log_path = self.run_dir / f"engine-{pool}" / "workers.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            return ProcessPoolEngine(
                max_workers=n,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(log_path),),
            )
        from globus_compute_endpoint.engines import GlobusComputeEngine
        from parsl.providers import LocalProvider

        venv_bin_on_path()  # the engine starts `globus-compute-endpoint python-exec` workers
        return GlobusComputeEngine(
            address="127.0.0.1",
            encrypted=False,
            max_workers_per_node=n,
            heartbeat_period=2,
            heartbeat_threshold=30,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            label=f"remote-al-{pool}",
        )

    def start(self) -> None:
        if self._engines:
            return
        self._serde = make_serializer()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for pool in self._slots:
            engine = self._make_engine(pool)
            pool_dir = self.run_dir / f"engine-{pool}"
            pool_dir.mkdir(parents=True, exist_ok=True)
            engine.start(endpoint_id=uuid.uuid4(), run_dir=str(pool_dir))
            self._engines[pool] = engine

    def slots(self, pool: str) -> int:
        return self._slots[pool]

    def shutdown(self) -> None:
        for engine in self._engines.values():
            try:
                engine.shutdown(block=False)
            except TypeError:
                engine.shutdown()
            except Exception as exc:  # shutting down must not raise over the real error
                log.warning("engine shutdown: %s", exc)
        self._engines.clear()

    # ------------------------------------------------------------------- tasks
    def _function_buffer(self, function: str) -> str:
        if function not in self._fn_buffers:
            fn = load_function(function, self.functions)
            self._fn_buffers[function] = self._serde.pack_buffers([self._serde.serialize(fn)])
        return self._fn_buffers[function]

    def pack(self, function: str, request) -> bytes:
        """The endpoint-bound message body, exactly as the cloud delivers it."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task

        if self._serde is None:
            self._serde = make_serializer()
        payload = self._serde.pack_buffers([self._serde.serialize((request,)), self._serde.serialize({})])
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                f"{function} request is {len(payload) / 1e6:.1f} MB, over the 10 MB task limit: "
                "pass paths to data on the endpoint's filesystem instead of the data"
            )
        task = Task(task_id=uuid.uuid4(), task_buffer=self._function_buffer(function) + payload)
        return messagepack.pack(task), task.task_id

    def _resolve(self, packed: bytes) -> dict:
        from globus_compute_common import messagepack

        result = messagepack.unpack(packed)
        if result.is_error:
            code = result.error_details.code if result.error_details else "RemoteExecutionError"
            raise TaskFailed(str(result.data), code=code)
        return deserialize_json_result(result.data)

    def submit(self, pool: str, function: str, request, task_key: str) -> Submission:
        body, task_id = self.pack(function, request)
        out: Future = Future()

        def _done(f: Future) -> None:
            # Whatever happens here, `out` must resolve: a future left pending would hang the loop.
            try:
                value = self._resolve(f.result())
            except TaskFailed as exc:
                out.set_exception(exc)
                return
            except BaseException as exc:  # engine-level failure (broken pool, cancelled, ...)
                out.set_exception(TaskFailed(f"{type(exc).__name__}: {exc}", code="EngineError"))
                return
            self.spool.write(task_key, value)
            out.set_result(value)

        self.submit_body(pool, body, task_id, _done)
        return Submission(backend_id=str(task_id), future=out)

    def submit_body(self, pool: str, body: bytes, task_id, on_done) -> None:
        """Hand a packed task (``pack``) to ``pool``'s engine; ``on_done(future)`` gets the
        engine's future of the packed ``Result`` (or of its exception) when it finishes."""
        from globus_compute_endpoint.engines.base import GCFuture

        if pool not in self._slots:
            raise ValueError(f"unknown pool {pool!r}: the local backend has 'gpu' and 'cpu'")
        if not self._engines:
            raise BackendUnavailable("local backend is not started")
        gcf = GCFuture(task_id)
        gcf.add_done_callback(on_done)
        try:
            self._engines[pool].submit(gcf, body, resource_specification={}, result_serializers=[JSON_RESULT])
        except Exception as exc:
            raise BackendUnavailable(f"local {pool} engine refused the task: {exc}") from exc

    def warm_up(self, timeout_s: float = 600.0) -> dict[str, list[int]]:
        """Start every worker of every pool and import the functions' modules in it (an
        endpoint that has been running for a while is in this state): one ``warm_up`` task
        per slot, each holding its worker for a second so that no worker takes two. Returns
        the worker pids per pool; raises BackendUnavailable if they are not up in time."""
        self.start()
        self.functions.setdefault("__warm_up__", "remote_al.functions:warm_up")
        modules = sorted({v.split(":")[0] for k, v in self.functions.items() if k != "__warm_up__"})
        subs = {
            (pool, i): self.submit(pool, "__warm_up__", {"modules": modules, "hold_s": 1.0}, f"__warm_up__-{pool}-{i}")
            for pool, n in self._slots.items() for i in range(n)
        }
        done, not_done = wait([s.future for s in subs.values()], timeout=timeout_s)
        if not_done:
            raise BackendUnavailable(f"local workers not started within {timeout_s:.0f} s")
        pids: dict[str, list[int]] = {}
        for (pool, i), sub in subs.items():
            pids.setdefault(pool, []).append(sub.future.result()["pid"])
            self.forget(f"__warm_up__-{pool}-{i}")
        return pids

    def reattach(self, pool: str, function: str, backend_id: str, task_key: str) -> Future | None:
        # None: the worker died with the previous driver, and the engine resubmits
        return self.spool.collect(task_key)

    def forget(self, task_key: str) -> None:
        """Drop a spooled result once the driver has recorded it."""
        self.spool.forget(task_key)

    def clean(self) -> None:
        self.spool.clean()
