"""Selection: which explored structures go to the labeler, as decisions with reasons.

Pure functions over plain values. ``select`` takes candidates (id, widths, a structure
check result, a fingerprint) and returns one ``Decision`` per candidate; the loop
stores and acts on them. Order of checks: structure filters (before spending a label),
trust window (above the upper bound: unphysical, not labeled), threshold (below: confident),
near-duplicates among those chosen, then the per-round cap on the highest widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

from driver.screening import DuplicateIndex, Fingerprint, compact, fingerprint, near_duplicate


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    energy_width: float | None  # eV/atom
    force_width: float | None  # eV/A
    filter_ok: bool = True
    filter_reason: str = ""
    fingerprint: tuple | Fingerprint | None = None  # (composition key, sorted distances array), or compact


@dataclass(frozen=True, slots=True)
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


class FingerprintSource(Protocol):
    """Where :func:`select` reads fingerprints from when the candidates do not carry them
    (the campaign's view: the compact forms the state keeps, in batches)."""

    def get(self, ids: Sequence[int]) -> Sequence[Fingerprint | None]: ...

    def exact(self, sid: int) -> tuple | None: ...


class _Carried:
    """The fingerprints the candidates carry (exact tuples or compact forms)."""

    def __init__(self, candidates: Iterable[Candidate]):
        self._fps = {c.id: c.fingerprint for c in candidates}

    def get(self, ids: Sequence[int]) -> list[Fingerprint | None]:
        return [self._compact(self._fps.get(i)) for i in ids]

    def exact(self, sid: int) -> tuple | None:
        fp = self._fps.get(sid)
        return fp if isinstance(fp, tuple) else None

    @staticmethod
    def _compact(fp) -> Fingerprint | None:
        return compact(fp) if isinstance(fp, tuple) else fp


_BATCH = 2048  # fingerprints read at a time, in the order the near-duplicate check needs them


def select(
    candidates: Sequence[Candidate],
    policy: SelectionPolicy,
    already_chosen: Sequence[Candidate] = (),
    fingerprints: FingerprintSource | None = None,
) -> list[Decision]:
    """One decision per candidate. ``already_chosen``: structures selected earlier in the
    same round (asynchronous selection batch by batch); they count against the cap and
    are compared against for near-duplicates. ``fingerprints``: where the fingerprints
    come from (default: what each candidate carries). The checks up to the threshold run
    on arrays; only the uncertain candidates, highest width first, are compared for
    near-duplicates (``driver.screening.DuplicateIndex``)."""
    n = len(candidates)
    ids = np.fromiter((c.id for c in candidates), np.int64, n)
    fw = np.fromiter((np.nan if c.force_width is None else c.force_width for c in candidates), float, n)
    ew = np.fromiter((np.nan if c.energy_width is None else c.energy_width for c in candidates), float, n)
    ok = np.fromiter((c.filter_ok for c in candidates), bool, n)
    scored = ok & np.isfinite(fw)
    sane = scored & ~(fw > policy.force_upper)
    over = (fw > policy.force_threshold) | ((ew > policy.energy_threshold) if policy.energy_threshold > 0 else False)
    decisions: list[Decision | None] = [None] * n
    texts: dict[str, str] = {}
    shared = texts.setdefault  # one string per distinct reason: rounds of 10^6 frames repeat them
    for i in np.flatnonzero(~ok).tolist():
        decisions[i] = Decision(candidates[i].id, "filtered", candidates[i].filter_reason)
    for i in np.flatnonzero(ok & ~scored).tolist():
        decisions[i] = Decision(candidates[i].id, "skipped", "no uncertainty available (UQ task failed)")
    for i in np.flatnonzero(scored & ~sane).tolist():
        w = candidates[i].force_width
        reason = f"force CI width {w:.3f} eV/A above the trust bound {policy.force_upper:g}"
        decisions[i] = Decision(candidates[i].id, "unphysical", shared(reason, reason))
    for i in np.flatnonzero(sane & ~over).tolist():
        w = candidates[i].force_width
        reason = f"force CI width {w:.3f} eV/A within {policy.force_threshold:g}"
        decisions[i] = Decision(candidates[i].id, "confident", shared(reason, reason))
    uncertain = np.flatnonzero(sane & over)
    uncertain = uncertain[np.lexsort((ids[uncertain], -fw[uncertain]))]
    source = fingerprints or _Carried([*candidates, *already_chosen])
    index = DuplicateIndex(policy.dedup_tolerance_A, source.exact)
    for c, fp in zip(already_chosen, source.get([c.id for c in already_chosen])):
        index.add(c.id, fp, c)
    n_chosen = len(already_chosen)
    for start in range(0, len(uncertain), _BATCH):
        batch = uncertain[start:start + _BATCH].tolist()
        for i, fp in zip(batch, source.get([candidates[i].id for i in batch])):
            c = candidates[i]
            dup = index.first(c.id, fp)
            if dup is not None:
                reason = f"near-duplicate of structure {dup.id}"
                decisions[i] = Decision(c.id, "duplicate", shared(reason, reason))
                continue
            if n_chosen >= policy.max_per_round:
                decisions[i] = Decision(
                    c.id, "skipped", f"uncertain ({c.force_width:.3f} eV/A) but over "
                    + (policy.cap_note or f"the cap of {policy.max_per_round} per round")
                )
                continue
            index.add(c.id, fp, c)
            n_chosen += 1
            what = f"force CI width {c.force_width:.3f} eV/A above {policy.force_threshold:g}"
            if c.energy_width is not None and policy.energy_threshold > 0 and c.energy_width > policy.energy_threshold:
                what += (f"; energy CI width {c.energy_width * 1000:.1f} meV/atom above "
                         f"{policy.energy_threshold * 1000:g}")
            decisions[i] = Decision(c.id, "label", what)
    return decisions  # type: ignore[return-value]  # every candidate decided


__all__ = ["Candidate", "Decision", "FingerprintSource", "SelectionPolicy", "fingerprint", "near_duplicate", "select"]
