"""The label journal: every finished label kept on the endpoint's disk as soon as it is done.

A label task that is killed part-way (a lost worker, a preempted node, a driver restart
that resubmits the task) and run again with the same request picks up the labels the
first run finished and labels only the rest: no finished first-principles calculation
is done twice.

One file a structure, ``<workdir>/labels/<structure_id>.json``, written atomically (a
temporary file in the same folder, fsync, ``os.replace``) right after the structure is
labeled. It holds the label and the key it was computed for: a SHA-256 of the structure
(atomic numbers, positions, cell, pbc, bit for bit), the labeler's name and its settings.
An entry is used only when its key is that of the structure asked for now and its
digest matches its content; anything else (another structure, labeler or settings under
the same id, a torn, truncated or edited file, another format) is ignored, the structure
labeled again and its entry replaced.

Failed labels are kept too (an SCF that did not converge after the retry is as expensive
to repeat as a label, and gives the same answer), except those the labeler calls
transient (``Labeler.reusable``: a VASP run that ended without an ionic step may have been
killed with the task). Delete ``labels/<id>.json`` to have one structure labeled again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from remote_al.labelers.base import Labeler, validate_label
from remote_al.records import Label

FORMAT = 1
DIRNAME = "labels"


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know in settings: mappings, numpy values, the rest by repr."""
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def label_key(atoms, labeler: str, settings: Mapping[str, Any]) -> str:
    """What a label was computed for: the structure (numbers, positions, cell, pbc, exactly),
    the labeler's name and its settings, as a SHA-256 hex digest."""
    h = hashlib.sha256(_canonical({"format": FORMAT, "labeler": labeler, "settings": settings}).encode())
    for array, dtype in ((atoms.numbers, "<i8"), (atoms.positions, "<f8"), (atoms.cell.array, "<f8"),
                         (atoms.pbc, "|b1")):
        a = np.ascontiguousarray(array, dtype=dtype)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class LabelJournal:
    """The finished labels of one task's workdir, for one labeler and its settings."""

    def __init__(self, workdir: Path | str, labeler: str, settings: Mapping[str, Any]):
        self.dir = Path(workdir) / DIRNAME
        self.labeler = labeler
        self.settings = settings

    def path(self, sid: int) -> Path:
        return self.dir / f"{int(sid)}.json"

    def load(self, sid: int, atoms) -> Label | None:
        """The kept label of structure ``sid`` when its entry is intact and was computed for
        this very structure, labeler and settings; else None."""
        try:
            entry = json.loads(self.path(sid).read_text())
            body = {k: v for k, v in entry.items() if k != "digest"}
            if (entry["format"] != FORMAT or entry["digest"] != _digest(body)
                    or entry["key"] != label_key(atoms, self.labeler, self.settings)):
                return None
            label = Label.from_dict(entry["label"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # missing, torn, not ours
        if label.structure_id != int(sid) or label.status not in ("ok", "failed"):
            return None
        return label if validate_label(label, len(atoms)).status == label.status else None

    def keep(self, sid: int, atoms, label: Label) -> Path:
        """Write the entry of ``label`` atomically: a reader sees the old file or the new one."""
        if label.structure_id != int(sid):
            raise ValueError(f"the label of structure {label.structure_id} kept as structure {sid}")
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT, "structure_id": int(sid), "labeler": self.labeler,
                "key": label_key(atoms, self.labeler, self.settings), "label": label.to_dict()}
        path = self.path(sid)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({**body, "digest": _digest(body)}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def forget(self, sid: int) -> None:
        self.path(sid).unlink(missing_ok=True)


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def label_with_journal(labeler: Labeler, structures: Sequence, structure_ids: Sequence[int], workdir: Path,
                       settings: Mapping[str, Any]) -> tuple[list[Label], int]:
    """One label per structure, in order, and how many came from the journal.

    Kept labels are read first; the other structures are labeled one at a time, in the
    given order, each journaled as soon as it is done (when the labeler calls it reusable).
    """
    journal = LabelJournal(workdir, labeler.name, settings)
    labels = [journal.load(sid, atoms) for atoms, sid in zip(structures, structure_ids)]
    reused = sum(label is not None for label in labels)
    for i, (atoms, sid) in enumerate(zip(structures, structure_ids)):
        if labels[i] is not None:
            continue
        (labels[i],) = labeler.label([atoms], [sid], workdir)
        if labeler.reusable(labels[i]):
            journal.keep(sid, atoms, labels[i])
        else:
            journal.forget(sid)
    return labels, reused
