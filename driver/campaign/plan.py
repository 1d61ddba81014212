"""Decisions as data: what phases and result recorders ask the engine to do.

A planner (a phase, or a recorder of one task kind) reads a ``CampaignView`` and returns
a list of these operations; ``driver.campaign.engine`` applies them in order, in one
transaction, and is the only code that changes the campaign's state. Each operation is a
small frozen record, so a planner's output can be inspected and tested without a state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Union

from driver.campaign.tasks import TaskSpec


class Phase(str, Enum):
    """Where a campaign is. Per round r (generation g = r is trained in round r):
    r = 0: generate -> label -> train -> evaluate; r > 0: explore -> select -> label ->
    train -> evaluate (synchronous) or one pipelined ``async`` phase; then final_eval ->
    volume (when enabled) -> done."""

    GENERATE = "generate"
    LABEL = "label"
    TRAIN = "train"
    EVALUATE = "evaluate"
    EXPLORE = "explore"
    SELECT = "select"
    ASYNC = "async"
    FINAL_EVAL = "final_eval"
    VOLUME = "volume"
    DONE = "done"


class StopKind(str, Enum):
    """How a campaign stopped; the CLI's exit status follows it (1 for ``failed``)."""

    CONVERGED = "converged"  # its own criterion
    BUDGET = "budget"        # rounds, labels, wall time, or no more work
    FAILED = "failed"        # a generation could not be trained, no training data


@dataclass(frozen=True)
class AddTask:
    spec: TaskSpec


@dataclass(frozen=True)
class SetPhase:
    phase: Phase
    round: int | None = None
    logged: bool = True  # a "phase" event (round 0's generate -> label is part of generating)


@dataclass(frozen=True)
class Stop:
    """Record the stop and its kind; the campaign goes to ``phase`` (asynchronous
    campaigns drain their tasks in flight in ``async`` first)."""

    reason: str
    kind: StopKind
    phase: Phase


@dataclass(frozen=True)
class MakeCurrent:
    """Generation ``generation`` is the ensemble new explorations use."""

    generation: int


@dataclass(frozen=True)
class AddStructure:
    """Store a structure (ignored when its hash is stored already); ``decision`` =
    (round, decision, reason) is recorded for it when it was new."""

    row: Mapping[str, Any]
    decision: tuple[int, str, str] | None = None


@dataclass(frozen=True, slots=True)  # one per candidate of a round: small
class Decide:
    round: int
    structure_id: int
    decision: str
    reason: str


@dataclass(frozen=True, slots=True)  # one per candidate of a round: small
class UpdateStructure:
    structure_id: int
    values: Mapping[str, Any]


@dataclass(frozen=True)
class SetStructureStatus:
    structure_ids: tuple[int, ...]
    status: str


@dataclass(frozen=True)
class SetWidths:
    rows: tuple[tuple[int, float, float], ...]  # (structure id, energy width, force width)
    # the scoring's per-frame features for batch selection: (structure id, vector)
    features: tuple[tuple[int, tuple[float, ...]], ...] = ()
    generation: int = -1  # whose evaluation gave them
    kind: str = ""  # selection.features


@dataclass(frozen=True)
class StoreLabel:
    """A good label: into the dataset store (which may still refuse it: then it is a
    failed label with the store's reason) and the labels table."""

    structure_id: int
    task_key: str
    labeler: str
    labeler_note: str
    settings: Mapping[str, Any]
    frame: Any  # the labeled frame: ase.Atoms with its energy, forces and stress
    energy: float


@dataclass(frozen=True)
class FailLabel:
    structure_id: int
    task_key: str
    labeler: str
    reason: str


@dataclass(frozen=True)
class AddModel:
    generation: int
    member: int
    task_key: str
    result: Mapping[str, Any]  # the TrainResult


@dataclass(frozen=True)
class CarryModels:
    """No new data: generation ``target`` is generation ``source`` unchanged."""

    source: int
    target: int


@dataclass(frozen=True)
class StartTraining:
    """Export generation ``generation``'s training set and create its member tasks;
    ``next_round`` moves the label round in the same transaction."""

    generation: int
    next_round: int | None = None


@dataclass(frozen=True)
class Calibrate:
    """Fit generation ``generation``'s calibration once its test and out-of-bag
    evaluations are both in (the one not given is read back from its task)."""

    generation: int
    test_result: Mapping[str, Any] | None = None
    oob_result: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SetMetrics:
    scope: str
    idx: int
    values: Mapping[str, float | None]


@dataclass(frozen=True)
class UpdateRoundMetrics:
    """Recompute round ``round``'s numbers (widths, decisions, confident share)."""

    round: int


@dataclass(frozen=True)
class RewriteRequest:
    """A pending task's request, changed before it was ever submitted."""

    key: str
    request: Any


@dataclass(frozen=True)
class FinishTask:
    """A pending task left with nothing to do is done with this result."""

    key: str
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    kind: str
    message: str


@dataclass(frozen=True)
class Say:
    message: str


Op = Union[AddTask, SetPhase, Stop, MakeCurrent, AddStructure, Decide, UpdateStructure, SetStructureStatus,
           SetWidths, StoreLabel, FailLabel, AddModel, CarryModels, StartTraining, Calibrate, SetMetrics,
           UpdateRoundMetrics, RewriteRequest, FinishTask, Event, Say]
