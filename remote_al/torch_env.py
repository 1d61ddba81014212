"""The thread and device environment of DeePMD-kit and PyTorch, in one place.

DeePMD-kit reads ``OMP_NUM_THREADS`` and ``DP_INTRA/INTER_OP_PARALLELISM_THREADS`` when
it is imported, and CUDA reads ``CUDA_VISIBLE_DEVICES`` when it starts, so these are
environment variables, not arguments. Ensemble members and tasks run as parallel
single-thread processes (docs: one thread per member is what was measured fastest), so
every variable here says "one thread".
"""

from __future__ import annotations

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "DP_INTRA_OP_PARALLELISM_THREADS": "1",
    "DP_INTER_OP_PARALLELISM_THREADS": "1",
}


def single_thread_torch() -> None:
    """One intra-op thread for PyTorch in this process (where torch is installed)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
