"""Selection: which explored structures go to the labeler, as decisions with reasons.

Pure functions over plain values. ``select`` takes candidates (id, widths, a structure
check result, a fingerprint) and returns one ``Decision`` per candidate; the loop
stores and acts on them. Order of checks: structure filters (before spending a label),
trust window (above the upper bound: unphysical, not labeled), threshold (below: confident),
near-duplicates among those chosen, then the per-round cap: on the highest widths
(``strategy="topk"``), or on the frames a batch strategy of ``driver.strategies`` picks
among the uncertain ones when they are more than the cap (``SelectionPolicy.strategy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

from driver import strategies
from driver.candidates import Candidates, SelectionInputError
from driver.screening import DuplicateIndex, Fingerprint, compact, fingerprint, near_duplicate

# selection.strategy in the campaign file -> the rule of driver.strategies
STRATEGY_RULES = {"topk": "topk", "random": "dpgen_window", "kmeans": "kmeans_uncertain", "fps": "fps_uncertain",
                  "lcmd": "lcmd", "maxdet": "maxdet"}
NEEDS_FEATURES = frozenset({"kmeans", "fps", "lcmd", "maxdet"})


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
    strategy: str = "topk"  # selection.strategy (STRATEGY_RULES)
    quota: bool = False  # share the cap equally over the conditions (SelectionExtras.groups)
    seed: int = 0  # the random choices of a strategy (deterministic per campaign, round and batch)


class FingerprintSource(Protocol):
    """Where :func:`select` reads fingerprints from when the candidates do not carry them
    (the campaign's view: the compact forms the state keeps, in batches)."""

    def get(self, ids: Sequence[int]) -> Sequence[Fingerprint | None]: ...

    def exact(self, sid: int) -> tuple | None: ...


class SelectionExtras(Protocol):
    """What a batch strategy reads besides the widths (the campaign's view: from the state)."""

    def features(self, ids: Sequence[int]) -> dict[int, np.ndarray]: ...

    def groups(self, ids: Sequence[int]) -> dict[int, str]: ...


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
    extras: SelectionExtras | None = None,
) -> list[Decision]:
    """One decision per candidate. ``already_chosen``: structures selected earlier in the
    same round (asynchronous selection batch by batch); they count against the cap and
    are compared against for near-duplicates. ``fingerprints``: where the fingerprints
    come from (default: what each candidate carries). The checks up to the threshold run
    on arrays; only the uncertain candidates, highest width first, are compared for
    near-duplicates (``driver.screening.DuplicateIndex``). With a batch strategy
    (``policy.strategy``) and more uncertain candidates than the cap leaves room for, the
    strategy's picks come first, in its order (``extras``: their features and conditions);
    a pick found to be a near-duplicate gives its place to the next uncertain frame."""
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
    picked: dict[int, str] = {}
    room = policy.max_per_round - len(already_chosen)
    if policy.strategy != "topk" and 0 < room < len(uncertain):
        picked = _strategy_picks(candidates, uncertain, room, policy, extras, already_chosen)
        uncertain = np.array([*picked, *(i for i in uncertain.tolist() if i not in picked)], dtype=np.int64)
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
                cap = policy.cap_note or f"the cap of {policy.max_per_round} per round"
                decisions[i] = Decision(
                    c.id, "skipped", f"uncertain ({c.force_width:.3f} eV/A) but over {cap}" if not picked else
                    f"uncertain ({c.force_width:.3f} eV/A), not picked by {policy.strategy} within {cap}")
                continue
            index.add(c.id, fp, c)
            n_chosen += 1
            what = f"force CI width {c.force_width:.3f} eV/A above {policy.force_threshold:g}"
            if i in picked:
                what += f"; {policy.strategy}: {picked[i]}"
            if c.energy_width is not None and policy.energy_threshold > 0 and c.energy_width > policy.energy_threshold:
                what += (f"; energy CI width {c.energy_width * 1000:.1f} meV/atom above "
                         f"{policy.energy_threshold * 1000:g}")
            decisions[i] = Decision(c.id, "label", what)
    return decisions  # type: ignore[return-value]  # every candidate decided


def _strategy_picks(candidates: Sequence[Candidate], uncertain: np.ndarray, room: int, policy: SelectionPolicy,
                    extras: SelectionExtras | None, already_chosen: Sequence[Candidate]) -> dict[int, str]:
    """index into ``candidates`` -> reason, for the frames ``policy.strategy`` picks among
    ``uncertain`` (at most ``room``), in its order."""
    if policy.strategy not in STRATEGY_RULES:
        raise SelectionInputError(f"unknown selection strategy {policy.strategy!r}; "
                                  f"choose from {', '.join(STRATEGY_RULES)}")
    sids = [candidates[i].id for i in uncertain.tolist()]
    u = np.array([candidates[i].force_width for i in uncertain.tolist()], dtype=float)
    x = lx = groups = None
    if policy.strategy in NEEDS_FEATURES:
        if extras is None:
            raise SelectionInputError(f"strategy {policy.strategy!r} needs the frames' features")
        found = extras.features(sids + [c.id for c in already_chosen])
        missing = [sid for sid in sids if sid not in found]
        if missing:  # scored before the campaign file asked for a feature strategy: the widths decide
            why = (f"highest width ({len(missing)} of {len(sids)} uncertain frames have no features: scored "
                   f"before selection.strategy = {policy.strategy!r})")
            return {int(i): why for i in uncertain[:room].tolist()}
        x = np.array([found[sid] for sid in sids], dtype=float)
        have = [found[c.id] for c in already_chosen if c.id in found]
        lx = np.array(have, dtype=float) if have else None
    if policy.quota:
        if extras is None:
            raise SelectionInputError("a quota per condition needs the frames' conditions")
        cond = extras.groups(sids)
        groups = tuple(cond.get(sid, "") for sid in sids)
    c = Candidates(u, x, groups, labeled_features=lx)
    rng = np.random.default_rng([policy.seed, min(sids)])
    choices = strategies.select(STRATEGY_RULES[policy.strategy], c, room, rng, quota=policy.quota and len(
        set(groups or ())) > 1, share="equal")
    return {int(uncertain[ch.index]): ch.reason for ch in choices}


__all__ = ["Candidate", "Decision", "FingerprintSource", "SelectionExtras", "SelectionPolicy", "STRATEGY_RULES", "fingerprint", "near_duplicate", "select"]
