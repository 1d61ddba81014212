"""Run a campaign whose driver kills itself with SIGKILL at the N-th visit of one of the
engine's named points (``driver.campaign.hooks.POINTS``), through the engine's hook seam.

    python tests/crash_driver.py CAMPAIGN.toml POINT:N

Used by tests/test_durability.py to prove that no moment loses or duplicates work.
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


def main(toml: str, spec: str) -> int:
    from remote_al.simulated import FUNCTIONS

    point, _, nth = spec.partition(":")
    cfg = load_config(toml)
    backend = make_backend("local", run_dir=cfg.directory / "engine", gpu_slots=cfg.backend.gpu_slots,
                           cpu_slots=cfg.backend.cpu_slots, engine=cfg.backend.engine, functions=FUNCTIONS)
    Campaign(cfg, backend, status_every_s=2, hooks=KillAt(point, int(nth or 1))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
