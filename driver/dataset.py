"""The dataset store: every labeled frame once, with its lineage, in the campaign's SQLite.

Tables (created here, next to :mod:`driver.state`'s):

- ``frames``: one row per distinct labeled frame, keyed by its content hash (species,
  positions and cell at fixed precision, see :func:`frame_hash`), with its lineage: the
  structure id, composition, labeler and its settings, the label task, the exploration
  that found it (an MD task key, or ``initial``), the model generation that explored it,
  the split (``train`` or held-out ``test``) and the labeled frame as extxyz text;
- ``frame_duplicates``: how often a frame already stored was added again;
- ``dataset_versions``: the ordered frame hashes each generation trained on.

Only finite, successful labels get in: :meth:`DatasetStore.add` raises
:class:`LabelRejected` (with the reason) for a failed label, NaN/inf energies, forces or
stresses, or a frame without energy and forces. A generation's set is written once
(:meth:`record_version`) and exported from the stored extxyz text
(:meth:`export`), so exporting it again, later or elsewhere, gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from driver.errors import RemoteALError
from driver.state import State

HASH_DECIMALS = 6  # Angstrom: positions and cell rounded to 1e-6 before hashing
FORMATS = ("deepmd", "extxyz")
EXTXYZ_NAME = "train.extxyz"
MANIFEST_NAME = "manifest.json"

class LabelRejected(RemoteALError, ValueError):
    """Raised by ``DatasetStore.add`` for a label that must never enter a training set
    (failed, NaN, missing); the loop records the label as failed instead."""


class DatasetError(RemoteALError):
    """Raised when a dataset version is inconsistent with the store (an unknown frame, a
    held-out frame in a training set, a recorded training set that would change)."""


@dataclass(frozen=True)
class AddResult:
    hash: str
    added: bool  # False: the frame was stored already (counted as a duplicate)


@dataclass(frozen=True)
class ExportResult:
    path: str
    systems: tuple[str, ...]  # deepmd/npy system directories
    extxyz: str | None
    n_frames: int
    digest: str


# ---------------------------------------------------------------- pure helpers
def _fixed(values: np.ndarray, decimals: int) -> str:
    arr = np.round(np.asarray(values, dtype=float), decimals) + 0.0  # -0.0 -> 0.0
    return " ".join(f"{v:.{decimals}f}" for v in arr.reshape(-1))


def frame_hash(atoms, decimals: int = HASH_DECIMALS) -> str:
    """sha256 of species (in order), positions and cell at ``decimals`` places."""
    text = "\n".join([" ".join(atoms.get_chemical_symbols()),
                      _fixed(atoms.get_positions(), decimals),
                      _fixed(np.asarray(atoms.get_cell()), decimals)])
    return hashlib.sha256(text.encode()).hexdigest()


def label_problem(atoms) -> str | None:
    """Why a labeled frame may not be trained on, or None if it may."""
    n = len(atoms)
    if n == 0:
        return "frame has no atoms"
    if not np.all(np.isfinite(atoms.get_positions())) or not np.all(np.isfinite(np.asarray(atoms.get_cell()))):
        return "positions or cell contain NaN or inf"
    results = getattr(atoms.calc, "results", None) or {}
    if results.get("energy") is None or results.get("forces") is None:
        return "frame has no energy/forces label"
    try:
        energy = float(results["energy"])
        forces = np.asarray(results["forces"], dtype=float)
    except (TypeError, ValueError) as exc:
        return f"label is not numeric: {exc}"
    if not np.isfinite(energy):
        return f"energy is {energy}"
    if forces.shape != (n, 3):
        return f"forces have shape {forces.shape}, expected {(n, 3)}"
    if not np.all(np.isfinite(forces)):
        return f"forces contain NaN or inf ({int(np.sum(~np.isfinite(forces)))} components)"
    stress = results.get("stress")
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.size not in (6, 9):
            return f"stress has {s.size} components, expected 6 or 9"
        if not np.all(np.isfinite(s)):
            return "stress contains NaN or inf"
    return None


def _canonical_extxyz(atoms, frame_id: str) -> str:
    """The frame as stored and exported: structure, energy, forces, stress, its hash."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.structures import to_extxyz

    res = atoms.calc.results
    clean = Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions(), cell=atoms.get_cell(),
                  pbc=atoms.get_pbc(), info={"frame_hash": frame_id})
    labels = {"energy": float(res["energy"]), "forces": np.asarray(res["forces"], dtype=float)}
    if res.get("stress") is not None:
        labels["stress"] = np.asarray(res["stress"], dtype=float)
    clean.calc = SinglePointCalculator(clean, **labels)
    return to_extxyz(clean)


def hashes_digest(hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


# ----------------------------------------------------------------------- store
class DatasetStore:
    """Labeled frames and dataset versions over a campaign's :class:`State`."""

    def __init__(self, state: State):
        self.state = state  # its frames tables: driver.state.frames

    # -- frames
    def add(
        self,
        atoms,
        *,
        labeler: str,
        task_key: str,
        structure_id: int | None = None,
        labeler_settings: Mapping[str, Any] | None = None,
        exploration: str = "initial",
        model_generation: int = -1,
        split: str = "train",
        round_: int = 0,
        status: str = "ok",
        reason: str = "",
    ) -> AddResult:
        """Store a labeled frame (``atoms`` with a calculator holding its labels).

        A frame already stored (same hash) is not stored again; its duplicate count goes
        up. Raises :class:`LabelRejected` for ``status != "ok"`` and for labels that are
        missing or not finite.
        """
        if status != "ok":
            raise LabelRejected(f"label of structure {structure_id} failed: {reason or 'no reason given'}")
        problem = label_problem(atoms)
        if problem:
            raise LabelRejected(f"label of structure {structure_id} ({task_key}) refused: {problem}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        from remote_al.structures import composition_label

        h = frame_hash(atoms)
        now = time.time()
        row = dict(hash=h, structure_id=structure_id, composition=composition_label(atoms),
                   species=" ".join(atoms.get_chemical_symbols()), natoms=len(atoms), split=split, round=round_,
                   labeler=labeler, labeler_settings_json=json.dumps(dict(labeler_settings or {}), sort_keys=True),
                   task_key=task_key, exploration=exploration, model_generation=model_generation,
                   energy=float(atoms.calc.results["energy"]), extxyz=_canonical_extxyz(atoms, h), created=now)
        with self.state.transaction():
            if self.state.insert_frame(row):
                return AddResult(h, True)
            self.state.count_duplicate(h, task_key, now)
        return AddResult(h, False)

    def frame(self, h: str):
        return self.state.frame(h)

    def duplicates(self, h: str) -> int:
        return self.state.duplicate_count(h)

    def select(self, split: str = "train", max_round: int | None = None) -> list[str]:
        """Hashes of stored frames of ``split`` (up to ``max_round``), in insertion order."""
        return self.state.frame_hashes(split, max_round)

    def lineage(self, h: str) -> dict[str, Any]:
        """Where a frame came from and which generations trained on it."""
        row = self.frame(h)
        if row is None:
            raise DatasetError(f"no frame {h} in the store")
        out = {k: row[k] for k in row.keys() if k != "extxyz"}
        out["labeler_settings"] = json.loads(out.pop("labeler_settings_json"))
        out["duplicates"] = self.duplicates(h)
        out["generations"] = [g for g, hs in self._versions() if h in hs]
        return out

    # -- versions
    def record_version(self, generation: int, hashes: Iterable[str]) -> str:
        """Record the frames ``generation`` trains on (order kept); return the digest.

        Recording the same set again is a no-op; a different set for a recorded
        generation, an unknown hash or a held-out frame raise :class:`DatasetError`.
        """
        hashes = list(dict.fromkeys(hashes))
        digest = hashes_digest(hashes)
        with self.state.transaction():
            rows = {r["hash"]: r["split"] for r in self._rows(hashes)}
            unknown = [h for h in hashes if h not in rows]
            if unknown:
                raise DatasetError(f"generation {generation}: {len(unknown)} frames not in the store "
                                   f"(first {unknown[0]})")
            held_out = [h for h in hashes if rows[h] != "train"]
            if held_out:
                raise DatasetError(f"generation {generation}: {len(held_out)} held-out test frames may not "
                                   f"be trained on (first {held_out[0]})")
            old = self.state.version_row(generation)
            if old is not None:
                if old["digest"] != digest:
                    raise DatasetError(f"generation {generation} has a recorded training set already "
                                       "and it differs; a generation's set never changes")
                return digest
            self.state.insert_version(generation, hashes, digest)
        return digest

    def version(self, generation: int) -> list[str]:
        row = self.state.version_row(generation)
        if row is None:
            raise DatasetError(f"no dataset version recorded for generation {generation}")
        return json.loads(row["hashes_json"])

    def _versions(self) -> list[tuple[int, set[str]]]:
        return [(r["generation"], set(json.loads(r["hashes_json"]))) for r in self.state.version_rows()]

    def _rows(self, hashes: Sequence[str]) -> list:
        return self.state.frames_of(hashes)

    # -- export
    def system_names(self, generation: int, groups) -> dict[tuple[str, ...], str]:
        """The deepmd/npy system names of ``generation``'s export (``groups``: its frames by
        species sequence): by composition and cell (``remote_al.deepmd_data.system_names``),
        unless the campaign recorded this generation's systems under the names of earlier
        versions (``Li3Ni4O8-cf324732``): then those, so that the paths its training tasks
        hold stay valid when the generation is exported again on resume."""
        from remote_al.deepmd_data import legacy_system_name, system_names

        legacy = {symbols: legacy_system_name(symbols) for symbols in groups}
        row = self.state.dataset(generation)
        if row is not None and {Path(p).name for p in json.loads(row["systems"])} == set(legacy.values()):
            return legacy
        return system_names(groups)

    def export(self, generation: int, outdir: str | os.PathLike, type_map: Sequence[str] | None = None,
               formats: Sequence[str] = FORMATS) -> ExportResult:
        """Write generation ``generation``'s recorded set under ``outdir``.

        ``deepmd``: ``outdir/deepmd/<system>/`` deepmd/npy, one system per atom order
        (needs ``type_map``); ``extxyz``: ``outdir/train.extxyz``. Always also
        ``outdir/manifest.json`` (frame hashes per system, in frame order). Built in a
        temporary directory and renamed into place; the same generation exports to the
        same bytes every time.
        """
        from remote_al.deepmd_data import group_frames, write_systems
        from remote_al.structures import from_extxyz

        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown formats {sorted(unknown)}; use {list(FORMATS)}")
        if "deepmd" in formats and not type_map:
            raise ValueError("the deepmd format needs the campaign's type_map")
        hashes = self.version(generation)
        by_hash = {r["hash"]: r for r in self._rows(hashes)}
        texts = [by_hash[h]["extxyz"] for h in hashes]
        final = Path(outdir)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        systems: list[str] = []
        frames = [from_extxyz(t)[0] for t in texts]
        names = self.system_names(generation, group_frames(frames))
        if "deepmd" in formats:
            systems = [Path(p).name for p in write_systems(frames, tmp / "deepmd", type_map, names)]
        if "extxyz" in formats:
            (tmp / EXTXYZ_NAME).write_text("".join(texts))
        per_system: dict[str, list[str]] = defaultdict(list)
        for h in hashes:
            per_system[names[tuple(by_hash[h]["species"].split())]].append(h)
        manifest = {"generation": generation, "n_frames": len(hashes), "digest": hashes_digest(hashes),
                    "type_map": list(type_map or []), "formats": list(formats),
                    "systems": {name: per_system[name] for name in sorted(per_system)}}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return ExportResult(
            path=str(final), systems=tuple(str(final / "deepmd" / s) for s in systems),
            extxyz=str(final / EXTXYZ_NAME) if "extxyz" in formats else None,
            n_frames=len(hashes), digest=manifest["digest"],
        )


__all__ = ["DatasetStore", "AddResult", "ExportResult", "LabelRejected", "DatasetError", "frame_hash",
           "label_problem", "hashes_digest"]
