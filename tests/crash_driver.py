"""Run a campaign whose driver kills itself with SIGKILL at the N-th visit of one of the
engine's named points (``driver.campaign.hooks.POINTS``), through the engine's hook seam.

    python tests/crash_driver.py CAMPAIGN.toml POINT:N [BACKEND]

POINT:N "none" runs the campaign to its end; BACKEND is "local" (default) or "colmena".
Used by tests/test_durability.py and tests/test_colmena_backend.py to prove that no
moment loses or duplicates work.
"""

from __future__ import annotations

import os
import signal
import sys

from driver.backends import make_backend
from driver.campaign import Campaign, Hooks
from driver.campaign.hooks import POINTS
from driver.config import load_config


class KillAt(Hooks):
    """SIGKILL the driver at the ``nth`` visit of ``point``."""

    def __init__(self, point: str, nth: int):
        if point not in POINTS:
            raise ValueError(f"unknown engine point {point!r}; known: {POINTS}")
        self.point, self.nth, self.visits = point, nth, 0

    def at(self, point: str) -> None:
        if point != self.point:
            return
        self.visits += 1
        if self.visits == self.nth:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main(toml: str, spec: str, kind: str = "local") -> int:
    from remote_al.simulated import FUNCTIONS

    cfg = load_config(toml)
    slots = dict(gpu_slots=cfg.backend.gpu_slots, cpu_slots=cfg.backend.cpu_slots, functions=FUNCTIONS)
    if kind == "local":
        backend = make_backend("local", run_dir=cfg.directory / "engine", engine=cfg.backend.engine,
                               lifetime=cfg.backend.engine_lifetime, **slots)
    else:
        backend = make_backend(kind, run_dir=cfg.directory / f"engine-{kind}", **slots)
    point, _, nth = spec.partition(":")
    hooks = None if spec == "none" else KillAt(point, int(nth or 1))
    Campaign(cfg, backend, status_every_s=2, hooks=hooks).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
