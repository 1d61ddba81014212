"""Selection: which explored structures go to the labeler, as decisions with reasons.

Pure functions over plain values. ``select`` takes candidates (id, widths, a structure
check result, a fingerprint) and returns one ``Decision`` per candidate; the loop
stores and acts on them. Order of checks: structure filters (before spending a label),
trust window (above the upper bound: unphysical, not labeled), threshold (below: confident),
near-duplicates among those chosen, then the per-round cap on the highest widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Candidate:
    id: int
    energy_width: float | None  # eV/atom
    force_width: float | None  # eV/A
    filter_ok: bool = True
    filter_reason: str = ""
    fingerprint: tuple | None = None  # (composition key, sorted distances array)


@dataclass(frozen=True)
class Decision:
    id: int
    decision: str  # label | confident | unphysical | filtered | duplicate | skipped
    reason: str


@dataclass(frozen=True)
class SelectionPolicy:
    force_threshold: float
    force_upper: float
    energy_threshold: float = 0.0  # 0: energy width not used
    max_per_round: int = 12
    dedup_tolerance_A: float = 0.05
    cap_note: str = ""  # what the cap is, when not the per-round cap (for the decisions' reasons)


def select(
    candidates: Sequence[Candidate],
    policy: SelectionPolicy,
    already_chosen: Sequence[Candidate] = (),
) -> list[Decision]:
    """One decision per candidate. ``already_chosen``: structures selected earlier in the
    same round (asynchronous selection batch by batch); they count against the cap and
    are compared against for near-duplicates."""
    decisions: dict[int, Decision] = {}
    uncertain: list[Candidate] = []
    for c in candidates:
        if not c.filter_ok:
            decisions[c.id] = Decision(c.id, "filtered", c.filter_reason)
            continue
        if c.force_width is None or not np.isfinite(c.force_width):
            decisions[c.id] = Decision(c.id, "skipped", "no uncertainty available (UQ task failed)")
            continue
        if c.force_width > policy.force_upper:
            decisions[c.id] = Decision(
                c.id,
                "unphysical",
                f"force CI width {c.force_width:.3f} eV/A above the trust bound {policy.force_upper:g}",
            )
            continue
        over_f = c.force_width > policy.force_threshold
        over_e = (
            policy.energy_threshold > 0
            and c.energy_width is not None
            and c.energy_width > policy.energy_threshold
        )
        if over_f or over_e:
            uncertain.append(c)
        else:
            decisions[c.id] = Decision(
                c.id,
                "confident",
                f"force CI width {c.force_width:.3f} eV/A within {policy.force_threshold:g}",
            )
    uncertain.sort(key=lambda c: (-(c.force_width or 0.0), c.id))
    chosen: list[Candidate] = list(already_chosen)
    for c in uncertain:
        dup = next((k for k in chosen if near_duplicate(c.fingerprint, k.fingerprint, policy.dedup_tolerance_A)), None)
        if dup is not None:
            decisions[c.id] = Decision(c.id, "duplicate", f"near-duplicate of structure {dup.id}")
            continue
        if len(chosen) >= policy.max_per_round:
            decisions[c.id] = Decision(
                c.id, "skipped", f"uncertain ({c.force_width:.3f} eV/A) but over "
                + (policy.cap_note or f"the cap of {policy.max_per_round} per round")
            )
            continue
        chosen.append(c)
        what = f"force CI width {c.force_width:.3f} eV/A above {policy.force_threshold:g}"
        if c.energy_width is not None and policy.energy_threshold > 0 and c.energy_width > policy.energy_threshold:
            what += f"; energy CI width {c.energy_width * 1000:.1f} meV/atom above {policy.energy_threshold * 1000:g}"
        decisions[c.id] = Decision(c.id, "label", what)
    return [decisions[c.id] for c in candidates]


def fingerprint(atoms, cutoff: float = 4.0) -> tuple:
    """Composition key and sorted neighbour distances: equal for periodic images/permutations."""
    from remote_al.structures import pair_distances

    symbols = atoms.get_chemical_symbols()
    key = tuple(sorted((s, symbols.count(s)) for s in set(symbols)))
    d = np.sort(pair_distances(atoms, cutoff))
    return (key, d)


def near_duplicate(a: tuple | None, b: tuple | None, tol: float) -> bool:
    if a is None or b is None or a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    if len(a[1]) == 0:
        return True
    return float(np.max(np.abs(a[1] - b[1]))) < tol

