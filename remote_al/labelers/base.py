"""The labeler contract.

Input: structures (ASE ``Atoms``) with their ids, settings (a mapping from the campaign
file), a workdir on the endpoint's filesystem. Output: one ``Label`` per structure with
energy (eV), forces (eV/A), stress (eV/A^3, Voigt) and magnetic moments where the method
gives them, and a status: ``ok`` or ``failed`` with a reason. A labeler never raises for
one bad structure: it returns a failed label and goes on, so nothing already computed is
lost. It raises ``LabelingError`` only when it cannot label anything (bad settings,
missing executable or pseudopotentials), before spending compute.

Every label goes through ``validate_label``: NaN/inf energies or forces, or forces of the
wrong shape, turn it into ``failed``, so they can never reach a training set.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from remote_al.errors import RemoteALError
from remote_al.records import Label

# name -> "module:Class"
LABELERS: dict[str, str] = {
    "chgnet": "remote_al.labelers.chgnet:CHGNetLabeler",
    "gpaw": "remote_al.labelers.gpaw:GPAWLabeler",
    "vasp": "remote_al.labelers.vasp:VaspLabeler",
}


class LabelingError(RemoteALError, RuntimeError):
    """The labeler cannot run at all (setup problem: settings, executable, pseudopotentials).
    Raised before any calculation; one bad structure gives a failed label instead."""


class Labeler(abc.ABC):
    name: str = "abstract"
    note: str = ""  # shown in every output, e.g. "DFT (VASP, PBE+U)" or the CHGNet stand-in note

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self.settings = dict(settings or {})

    @abc.abstractmethod
    def label(self, structures: Sequence, structure_ids: Sequence[int], workdir: Path) -> list[Label]:
        """Label each structure; return one Label per structure, in order."""

    def reusable(self, label: Label) -> bool:
        """Whether a rerun of the same request may reuse this finished label instead of
        computing it again (``remote_al.label_journal``). Yes for labels and for failures the
        structure and settings decide (an SCF that does not converge, invalid values); a
        labeler says no for failures that may come from the machine or from the kill of the
        task itself."""
        return True

    def relax_calculator(self, atoms, workdir: Path):
        """An ASE calculator (energy, forces, stress) for relaxing ``atoms`` with this
        labeler's method and settings: the check of the ensemble's relaxed volumes.
        ``atoms`` may be given initial magnetic moments in place."""
        raise LabelingError(
            f"the {self.name} labeler does not relax structures in remote-al; check the ensemble's "
            "volumes with labeler 'chgnet' or 'gpaw', or relax with it outside remote-al"
        )


def get_labeler(name: str, settings: Mapping[str, Any] | None = None) -> Labeler:
    if name not in LABELERS:
        raise LabelingError(f"unknown labeler {name!r}; choose one of {sorted(LABELERS)}")
    module, cls = LABELERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(settings)


def validate_label(label: Label, natoms: int) -> Label:
    """Turn a label with NaN/inf values or wrong shapes into a failed one, with the reason."""
    if label.status != "ok":
        return label
    problems = []
    if label.energy is None or not math.isfinite(label.energy):
        problems.append(f"energy is {label.energy!r}")
    if label.forces is None:
        problems.append("no forces")
    else:
        if len(label.forces) != natoms or any(len(f) != 3 for f in label.forces):
            problems.append(f"forces have shape ({len(label.forces)}, ?) for {natoms} atoms")
        elif not all(math.isfinite(c) for f in label.forces for c in f):
            problems.append("forces contain NaN or inf")
    if label.stress is not None and not all(math.isfinite(c) for c in label.stress):
        problems.append("stress contains NaN or inf")
    if not problems:
        return label
    return Label(
        structure_id=label.structure_id,
        status="failed",
        reason="invalid label: " + "; ".join(problems),
        wall_s=label.wall_s,
    )


def validated_settings(cls, settings: Mapping[str, Any], bounds=None, refusals=None):
    """``cls(**settings)`` for the settings dataclass ``cls`` of a labeler, once pydantic has
    checked every key: no unknown key (with a did-you-mean), the annotated types, strictly
    (no "4" for 4, no true for 1), finite numbers, and ``bounds`` ({field: {"ge": .., "le":
    ..}}). ``refusals(settings)`` yields (location, reason, fix) for well-typed values that
    cannot be used. Raises LabelingError from the pydantic ValidationError, whose locations
    are the field paths (the driver names them as ``labeler.settings.<path>``)."""
    import difflib
    import typing

    from pydantic import ConfigDict, Field, ValidationError, create_model
    from pydantic_core import InitErrorDetails, PydanticCustomError

    label = cls.__name__.removesuffix("Settings").lower()
    if not isinstance(settings, Mapping):
        raise LabelingError(f"{label} settings must be a table, got {type(settings).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: (hints[f.name], Field(f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                                      **(bounds or {}).get(f.name, {})))
        for f in dataclasses.fields(cls)
    }
    model = create_model(f"{cls.__name__}Check", __config__=ConfigDict(extra="forbid", strict=True,
                                                                      allow_inf_nan=False), **fields)
    try:
        model.model_validate(dict(settings))
        problems = [InitErrorDetails(type=PydanticCustomError("refused", "{problem}", {"problem": reason, "fix": fix}),
                                     loc=tuple(loc), input=settings)
                    for loc, reason, fix in (refusals(settings) if refusals else ())]
        if problems:
            raise ValidationError.from_exception_data(model.__name__, problems)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        hint = f" (fix: {err['ctx']['fix']})" if err["type"] == "refused" else ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(fields), n=1)
            hint = (f" (did you mean {close[0]!r}?)" if close else "") + f"; known settings: {sorted(fields)}"
        where = ".".join(str(p) for p in err["loc"])
        raise LabelingError(f"{label} settings: {where}: {err['msg']}{hint}") from exc
    return cls(**dict(settings))
