"""Typed tasks: what each task is for (its kind) and the driver's data about it (its
context), kept apart from the request the remote function receives."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from remote_al.records import LabelRequest, MDRequest, RelaxRequest, TrainRequest, UQRequest


class TaskKind(str, Enum):
    """What the driver does with a task's result. ``function`` is the registered function
    that runs it; one function (``uq``) serves several kinds."""

    MD = "md"                    # an exploration: its frames become candidates
    SCORE = "score"              # the ensemble's widths on an exploration's frames
    EVAL = "eval"                # a generation on the held-out test frames (metrics, calibration)
    OOB = "oob"                  # a generation on its out-of-bag training frames (calibration)
    FINAL_EVAL = "final_eval"    # every generation on the final held-out set
    RECHECK = "recheck"          # queued selections re-scored with a newer generation
    LABEL = "label"
    TRAIN = "train"
    RELAX = "relax"              # ensemble relaxations of the volume curve
    RELAX_LABEL = "relax_label"  # relaxations with the labeler
    MD_LABEL = "md_label"        # round 0: MD driven by the labeler, its frames labeled as initial data

    @property
    def function(self) -> str:
        return _FUNCTION.get(self, self.value)

    @property
    def pool(self) -> str:
        return POOL_OF[self.function]


_FUNCTION = {TaskKind.SCORE: "uq", TaskKind.EVAL: "uq", TaskKind.OOB: "uq", TaskKind.FINAL_EVAL: "uq",
             TaskKind.RECHECK: "uq"}
POOL_OF = {"md": "gpu", "uq": "gpu", "train": "gpu", "label": "cpu", "relax": "gpu", "relax_label": "cpu",
           "md_label": "cpu"}
REQUEST_OF = {"md": MDRequest, "uq": UQRequest, "train": TrainRequest, "label": LabelRequest,
              "relax": RelaxRequest, "relax_label": RelaxRequest, "md_label": MDRequest}


@dataclass(frozen=True)
class Context:
    """The driver's data about a task; each kind that needs some has its subclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExploreContext(Context):
    spec: str  # the structure spec the MD started from


@dataclass(frozen=True)
class ScoreContext(Context):
    structure_ids: tuple[int, ...]  # the frames of the request, in order


@dataclass(frozen=True)
class RecheckContext(Context):
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # label task key -> its stale ids


_CONTEXT_OF = {TaskKind.MD: ExploreContext, TaskKind.SCORE: ScoreContext, TaskKind.RECHECK: RecheckContext}


def context_from_dict(kind: TaskKind, data: Mapping[str, Any]) -> Context:
    cls = _CONTEXT_OF.get(kind, Context)
    if cls is ScoreContext:
        return ScoreContext(tuple(data["structure_ids"]))
    if cls is RecheckContext:
        return RecheckContext({k: tuple(v) for k, v in data["groups"].items()})
    return cls(**data)


@dataclass(frozen=True)
class TaskSpec:
    """A task to create: written to the state before it is ever submitted."""

    key: str
    kind: TaskKind
    round: int
    generation: int
    request: Any  # the remote_al.records request of the kind's function
    context: Context = Context()


@dataclass(frozen=True)
class Task:
    """A task row read back: its typed request, context and (when done) result dict."""

    key: str
    kind: TaskKind
    round: int
    generation: int
    status: str
    attempts: int
    request: Any
    context: Context
    result: dict | None

    @classmethod
    def from_row(cls, row) -> "Task":
        kind = TaskKind(row["kind"])
        return cls(
            key=row["key"], kind=kind, round=row["round"], generation=row["generation"], status=row["status"],
            attempts=row["attempts"], request=REQUEST_OF[kind.function].from_dict(json.loads(row["request"])),
            context=context_from_dict(kind, json.loads(row["context"])),
            result=json.loads(row["result"]) if row["result"] else None,
        )


def is_relaxation(key: str) -> bool:
    """Whether a task key (an exploration's, or its scoring's ``uq:<key>``) is an ensemble
    relaxation (``driver.campaign.requests.exploration``) rather than MD at a temperature."""
    return ":relax:m" in key


def task_dir_name(key: str) -> str:
    """A task's folder name under the campaign's ``work/``."""
    return key.replace(":", "-")
