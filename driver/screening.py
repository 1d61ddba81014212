"""Each explored structure is screened once, when its MD result is recorded, and selection
reads what the screening found instead of parsing the structure again.

:func:`screen` gives what the state keeps with the structure (columns ``screen``,
``min_distance`` and ``fingerprint``): the structure filters that do not depend on the
campaign's settings (finite positions, cell lengths and angles: ``screen`` is their
reason, ``''`` when they pass), its smallest interatomic distance (the
``selection.min_distance_A`` filter is applied at selection, so a changed setting holds
for stored candidates too) and a compact form of its fingerprint
(:func:`fingerprint`: composition and sorted neighbour distances).

Compact form: the composition key, a NUL byte, then zlib of the sorted distances in units
of ``QUANTUM_A`` (1 micro-Angstrom) as uint32 differences, byte planes apart: about 0.65 kB
for 16 atoms, half the extxyz text. :class:`DuplicateIndex` finds, among the fingerprints
chosen so far, the first that a new one is a near-duplicate of, by :func:`near_duplicate`'s
rule (same composition and number of distances, every sorted distance closer than the
tolerance): from the compact forms, which decide every pair but those whose largest
difference lies within two quanta of the tolerance; those few (well under one in a
thousand) are compared exactly (the exact distances of both structures, from their
extxyz), so decisions are the same as with exact fingerprints.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

QUANTUM_A = 1e-6  # the unit of a compact fingerprint's distances
_PROBES = 8  # distances compared first, against every fingerprint of a group at once


@dataclass(frozen=True)
class Screen:
    """What :func:`screen` found: ``reason`` '' when the settings-free filters pass."""

    reason: str
    min_distance: float | None = None  # Angstrom (inf: no neighbour within 4 A)
    fingerprint: bytes | None = None  # compact form (:func:`encode`)

    def row(self) -> dict[str, Any]:
        """The structure columns it fills."""
        return {"screen": self.reason, "min_distance": self.min_distance, "fingerprint": self.fingerprint}


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """A fingerprint as selection compares it: composition key, sorted distances in
    ``QUANTUM_A`` (int32) and, when at hand, the exact sorted distances (Angstrom)."""

    key: str
    q: np.ndarray
    exact: np.ndarray | None = None


def screen(atoms) -> Screen:
    """Screen one structure: the settings-free filters, then (when they pass) its pair
    distances once, for the smallest distance and the fingerprint."""
    from remote_al.structures import check_structure, min_distance, pair_distances

    chk = check_structure(atoms, min_dist_A=0.0, distances=np.zeros(0))  # no distance filter here
    if not chk.ok:
        return Screen(chk.reason)
    d = pair_distances(atoms, 4.0)
    return Screen("", min_distance(atoms, d), encode(fingerprint(atoms, distances=d)))


def fingerprint(atoms, cutoff: float = 4.0, distances: np.ndarray | None = None) -> tuple:
    """Composition key and sorted neighbour distances: equal for periodic images/permutations
    (``distances``: ``pair_distances(atoms, cutoff)`` when the caller has it already)."""
    from remote_al.structures import pair_distances

    symbols = atoms.get_chemical_symbols()
    key = tuple(sorted((s, symbols.count(s)) for s in set(symbols)))
    d = np.sort(pair_distances(atoms, cutoff) if distances is None else distances)
    return (key, d)


def near_duplicate(a: tuple | None, b: tuple | None, tol: float) -> bool:
    if a is None or b is None or a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    if len(a[1]) == 0:
        return True
    return float(np.max(np.abs(a[1] - b[1]))) < tol


def key_text(key: tuple) -> str:
    """A fingerprint's composition key ((symbol, count), ...) as text."""
    return ",".join(f"{s}:{n}" for s, n in key)


def compact(fp: tuple) -> Fingerprint:
    """An exact fingerprint (key, sorted distances) as selection compares it."""
    d = np.asarray(fp[1], dtype=float)
    q = np.rint(d / QUANTUM_A)
    if q.size and q[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"fingerprint distance {d[-1]:.2f} A beyond the compact range")
    return Fingerprint(key_text(fp[0]), q.astype(np.int32), d)


def encode(fp: tuple) -> bytes:
    """The compact form of an exact fingerprint, to store."""
    c = compact(fp)
    steps = np.diff(c.q, prepend=np.int32(0)).astype("<u4")
    return c.key.encode() + b"\0" + zlib.compress(steps.view(np.uint8).reshape(-1, 4).T.tobytes(), 1)


def decode(blob: bytes) -> Fingerprint:
    key, _, packed = bytes(blob).partition(b"\0")
    planes = np.frombuffer(zlib.decompress(packed), dtype=np.uint8).reshape(4, -1)
    steps = np.ascontiguousarray(planes.T).view("<u4").ravel()
    return Fingerprint(key.decode(), np.cumsum(steps, dtype=np.int64).astype(np.int32))


class _Group:
    """The chosen fingerprints of one composition and number of distances, in order."""

    def __init__(self, n: int):
        self.cols = np.unique(np.linspace(0, n - 1, _PROBES).astype(int)) if n else np.zeros(0, int)
        self.rows = np.empty((8, n), dtype=np.int32)
        self.probes = np.empty((8, self.cols.size), dtype=np.int32)
        self.members: list[tuple[int, Fingerprint, Any]] = []

    def add(self, sid: int, fp: Fingerprint, item: Any) -> None:
        k = len(self.members)
        if k == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
            self.probes = np.concatenate([self.probes, np.empty_like(self.probes)])
        self.rows[k] = fp.q
        self.probes[k] = fp.q[self.cols]
        self.members.append((sid, fp, item))


class DuplicateIndex:
    """The fingerprints chosen so far; :meth:`first` is the first of them (in the order
    added) that a fingerprint is a near-duplicate of. ``exact(sid)``: the exact
    fingerprint (key, sorted distances) of a structure, for the pairs the compact forms
    cannot decide."""

    def __init__(self, tol: float, exact: Callable[[int], tuple | None]):
        self._tol = tol
        self._exact = exact
        self._exacts: dict[int, np.ndarray] = {}  # exact distances asked for, by structure id
        self._groups: dict[tuple[str, int], _Group] = {}
        t = tol / QUANTUM_A  # rounding moves each distance by at most half a quantum
        self._lo = t - 1 - 1e-6  # largest difference below: every distance within tol
        self._hi = t + 1 + 1e-6  # above: one distance at least tol apart

    def add(self, sid: int, fp: Fingerprint | None, item: Any) -> None:
        if fp is not None:
            group = self._groups.get((fp.key, fp.q.size))
            if group is None:
                group = self._groups[(fp.key, fp.q.size)] = _Group(fp.q.size)
            group.add(sid, fp, item)

    def first(self, sid: int, fp: Fingerprint | None) -> Any | None:
        """The item of the first near-duplicate of structure ``sid`` added so far, or None."""
        group = None if fp is None else self._groups.get((fp.key, fp.q.size))
        if group is None:
            return None
        if fp.q.size == 0:
            return group.members[0][2]
        n = len(group.members)
        q = fp.q
        near = np.flatnonzero(np.abs(group.probes[:n] - q[group.cols]).max(axis=1) <= self._hi)
        start, step = 0, 8  # in order, a few at a time: the first near-duplicate is often among the first
        while start < near.size:
            ks = near[start:start + step]
            gap = np.abs(group.rows[ks] - q).max(axis=1)
            for k, g in zip(ks.tolist(), gap.tolist()):
                if g <= self._hi:
                    other_sid, other, item = group.members[k]
                    if g < self._lo or self._exactly_near(sid, fp, other_sid, other):
                        return item
            start, step = start + step, step * 8
        return None

    def _exactly_near(self, sid: int, fp: Fingerprint, other_sid: int, other: Fingerprint) -> bool:
        a = fp.exact if fp.exact is not None else self._exact_of(sid)
        b = other.exact if other.exact is not None else self._exact_of(other_sid)
        return near_duplicate((fp.key, a), (other.key, b), self._tol)

    def _exact_of(self, sid: int) -> np.ndarray:
        if sid not in self._exacts:
            fp = self._exact(sid)
            if fp is None:
                raise ValueError(f"structure {sid} has a compact fingerprint but no exact one")
            self._exacts[sid] = np.asarray(fp[1], dtype=float)
        return self._exacts[sid]
