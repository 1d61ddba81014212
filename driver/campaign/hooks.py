"""The engine's named points, for whoever needs to act at them (the durability tests kill
the driver there to prove that no moment loses or duplicates work)."""

from __future__ import annotations

# where the engine calls ``Hooks.at``: each is a moment between two durable steps
POINTS = (
    "phase",          # before a phase change is committed
    "after_submit",   # a task was submitted, its backend id not yet stored
    "before_record",  # a result arrived, nothing of it stored yet
    "in_record",      # inside the transaction that stores a result
    "after_record",   # a result stored, the backend not yet told to forget it
    "after_export",   # a generation's training set exported, its tasks not yet stored
)


class Hooks:
    """No-op hooks; pass a subclass to ``Campaign(hooks=...)`` to act at the engine's points."""

    def at(self, point: str) -> None:
        """Called at each of ``POINTS``."""
