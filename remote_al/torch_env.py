"""The thread and device environment of DeePMD-kit and PyTorch, in one place.

DeePMD-kit reads ``OMP_NUM_THREADS`` and ``DP_INTRA/INTER_OP_PARALLELISM_THREADS`` when
it is imported, and CUDA reads ``CUDA_VISIBLE_DEVICES`` when it starts, so these are
environment variables, not arguments. Ensemble members and tasks run as parallel
single-thread processes (one thread per member is what was measured fastest), so every
variable here says "one thread".

- :func:`deepmd_env`: the environment of a DeePMD-kit subprocess (``dp train``).
- :func:`task_environment`: the same variables in this process for the duration of one
  registered function (DeePMD-kit and torch are imported inside it), and on a CPU
  DeePMD-kit's inference batch size (:data:`CPU_INFER_BATCH_SIZE`).
- :func:`single_thread_torch`, :func:`device_name`: torch's thread count and device.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "DP_INTRA_OP_PARALLELISM_THREADS": "1",
    "DP_INTER_OP_PARALLELISM_THREADS": "1",
}
# DeePMD-kit's inference batch (atoms per call) on a CPU. Without a GPU its AutoBatchSize
# never grows past its initial 1024 atoms, and unless DP_INFER_BATCH_SIZE is set it logs a
# notice each time a model is loaded (123 lines in one demo's workers.log). Setting the
# same 1024 changes no batch and leaves the log clean. On a GPU the batch grows by itself
# and nothing is logged, so the variable stays unset there.
CPU_INFER_BATCH_SIZE = "1024"


def deepmd_env(device: str = "auto", base: Mapping[str, str] | None = None) -> dict:
    """Environment of a DeePMD-kit subprocess: ``base`` (this process's environment by
    default) with one thread, no DataLoader workers and, for ``device="cpu"``, no GPU."""
    env = dict(os.environ if base is None else base)
    env.update(THREAD_ENV)
    # DeePMD-kit's PyTorch DataLoader otherwise forks min(4, ncpu) loader processes per
    # epoch; with small per-member datasets and one thread per member they cost more
    # than they give. Parallelism comes from members in separate processes.
    env.setdefault("NUM_WORKERS", "0")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@contextlib.contextmanager
def task_environment(device: str = "auto") -> Iterator[None]:
    """This process's environment for one task: the thread variables where the endpoint
    has not set them, and no GPU for ``device="cpu"``; restored on exit.

    Why the environment and not arguments: a registered function imports DeePMD-kit and
    torch inside its body, in the worker's own process, and both read these variables
    only there (at import, and when CUDA starts). Why restored: a worker runs many tasks;
    one task's ``device="cpu"`` must not hide the GPU from the next task's subprocesses
    (``dp train`` builds its environment from this one). What the imports did with the
    variables (torch's thread count, a CUDA context) stays for the process's lifetime.
    """
    wanted = {k: v for k, v in THREAD_ENV.items() if k not in os.environ}
    if device == "cpu":
        wanted["CUDA_VISIBLE_DEVICES"] = ""
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)  # before device_name(): torch reads the thread count at import
    if "DP_INFER_BATCH_SIZE" not in os.environ and (device == "cpu" or device_name() == "cpu"):
        saved["DP_INFER_BATCH_SIZE"] = None
        os.environ["DP_INFER_BATCH_SIZE"] = CPU_INFER_BATCH_SIZE
    try:
        yield
    finally:
        restore_environ(saved)


def restore_environ(saved: Mapping[str, str | None]) -> None:
    """Put back environment variables saved as ``{name: value}`` (``None``: it was unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def single_thread_torch() -> None:
    """One intra-op thread for PyTorch in this process (where torch is installed)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def device_name() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"`` (also without torch)."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"
