"""The backend seam: submit ``fn(request)`` to a pool, get a Future of a JSON dict.

A backend knows functions by name (``FUNCTIONS``) and partitions by pool name
("gpu", "cpu"). The steering loop writes a task row *before* calling ``submit`` and
stores the returned ``backend_id`` right after; on restart it calls ``reattach`` for
tasks in flight, which returns a Future, or ``None`` when the backend has no record of
the task (then, and only then, the loop resubmits).

Futures resolve to the function's JSON-serializable result (a ``dict``) or raise
``driver.errors.TaskFailed``. ``submit`` raises ``BackendUnavailable`` when the
endpoint cannot take work now, and ``PayloadTooLarge`` before sending an oversized task.
"""

from __future__ import annotations

import abc
import importlib
import os
import sys
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

# Registered function names -> import path of the function on the endpoint.
FUNCTIONS: dict[str, str] = {
    "md": "remote_al.functions:run_md",
    "uq": "remote_al.functions:evaluate_uncertainty",
    "label": "remote_al.functions:label_structures",
    "train": "remote_al.functions:train_member",
    "probe": "remote_al.functions:probe_environment",
    "relax": "remote_al.functions:relax_structure",  # with the ensemble (GPU endpoint)
    "relax_label": "remote_al.functions:relax_structure",  # with the labeler (CPU endpoint)
    "md_label": "remote_al.functions:run_md",  # MD with the labeler (CPU endpoint): initial data
}

# Globus Compute rejects task payloads and results over 10 MB.
MAX_PAYLOAD_BYTES = 10 * 1000 * 1000


def load_function(name: str, functions: dict[str, str] | None = None):
    """The function registered as ``name`` (``functions``: a workload's own name -> path map)."""
    module, attr = (functions or FUNCTIONS)[name].split(":")
    return getattr(importlib.import_module(module), attr)


def venv_bin_on_path() -> None:
    """Put this interpreter's ``bin`` first on PATH: local engines start their workers by
    command name (``globus-compute-endpoint python-exec``, parsl's ``process_worker_pool.py``)."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def resolve_future(fut: Future, result=None, exc: BaseException | None = None) -> None:
    """Set a task's result or error, unless the caller cancelled it meanwhile."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass


@dataclass(frozen=True)
class Submission:
    backend_id: str  # task id in the backend (Globus task UUID, local task id)
    future: Future


class Backend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def start(self) -> None:
        """Start pools / executors. Idempotent."""

    @abc.abstractmethod
    def submit(self, pool: str, function: str, request, task_key: str) -> Submission:
        """Submit ``function(request)`` to ``pool``; ``task_key`` is the driver's unique key."""

    @abc.abstractmethod
    def reattach(self, pool: str, function: str, backend_id: str, task_key: str) -> Future | None:
        """Future of a task submitted by an earlier driver, or None if the backend lost it."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop without waiting for tasks: remote ones keep running and can be reattached."""

    def finish(self) -> None:
        """The campaign is done: end what was started for it and outlives a driver (the
        local engine service). ``shutdown`` first; the default does only that."""
        self.shutdown()

    def slots(self, pool: str) -> int:
        """How many tasks the pool runs at once (used to keep it busy, not overfilled)."""
        return 1

    def require_functions(self, names) -> None:
        """Raise ConfigError if the backend cannot run one of ``names`` (checked before a
        campaign starts). Backends that import the functions themselves run all of them."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
