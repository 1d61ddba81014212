"""The durable campaign state: one SQLite file per campaign (WAL, one transaction per change).

Tables: ``meta`` (key/value), ``tasks`` (every remote call, written *before* submission
with a unique key), ``structures`` (every explored or generated structure with its status),
``labels`` (one row per labeled structure; failed labels kept with their reason, never
exported), ``models`` (per generation and member), ``datasets`` (the frames each
generation trained on), ``decisions`` (selection records with reasons), ``metrics`` and
``events``; the dataset store adds ``frames`` and ``dataset_versions``. A ``kill -9`` at
any moment loses nothing committed and duplicates no row. All SQL of the driver lives in
this package (``driver/state/``); the schema and its migrations in ``schema.py``.
"""

from __future__ import annotations

from driver.state.base import StateBase, StateMeta
from driver.state.frames import FrameTable
from driver.state.schema import CONVERGED_MARK, SCHEMA_VERSION, StateVersionError
from driver.state.science import ModelTable, StructureTable
from driver.state.tasks import TaskTable


class State(TaskTable, StructureTable, ModelTable, FrameTable, StateBase):
    """One campaign's state file. Use ``with state.transaction():`` around changes that
    belong together."""


__all__ = ["State", "StateMeta", "SCHEMA_VERSION", "StateVersionError", "CONVERGED_MARK"]
