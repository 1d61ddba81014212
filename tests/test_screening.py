"""Screening once at record time (driver.screening): the compact fingerprints decide
near-duplicates as the exact ones do, pairs within two quanta of the tolerance included;
selection on arrays decides as the loop over candidates did (the fixture campaign of
tests/test_state_migration.py checks the same through the view, with and without stored
screening; tests/test_planners.py that the MD recorder stores it)."""

from __future__ import annotations

import numpy as np
import pytest

from driver.screening import QUANTUM_A, DuplicateIndex, compact, decode, encode, fingerprint, near_duplicate, screen
from driver.selection import Candidate, Decision, SelectionPolicy, select
from remote_al.structures import cathode_cell

KEY = (("Li", 4), ("Ni", 4), ("O", 8))


def test_compact_form_round_trips():
    a = cathode_cell(1.0)
    fp = fingerprint(a)
    got = decode(encode(fp))
    assert got.key == "Li:4,Ni:4,O:8" and got.q.dtype == np.int32
    assert np.array_equal(got.q, np.rint(fp[1] / QUANTUM_A).astype(np.int32))
    assert len(encode(fp)) < 2 * fp[1].size  # under two bytes a distance (8 exact)


def test_index_agrees_with_the_exact_rule_near_the_tolerance():
    """Pairs whose largest difference lies on either side of the tolerance, some within the
    quanta the compact form cannot decide: the index asks for the exact fingerprints of
    just those and answers as near_duplicate does."""
    rng = np.random.default_rng(3)
    tol = 0.05
    base = np.linspace(1.5, 4.0, 20)  # 0.13 A apart: the changes below keep the order
    asked: list[int] = []
    for trial in range(400):
        other = base + rng.uniform(-0.01, 0.01, base.size)
        j = rng.integers(base.size)
        largest = tol + rng.uniform(-4, 4) * QUANTUM_A if trial % 2 else rng.uniform(0, 2 * tol)
        other[j] = base[j] + largest * rng.choice([-1, 1])
        a, b = (KEY, base), (KEY, other)
        exact = {1: a, 2: b}
        index = DuplicateIndex(tol, lambda sid: (asked.append(sid), exact[sid])[1])
        index.add(1, decode(encode(a)), "first")
        found = index.first(2, decode(encode(b)))
        assert (found == "first") == near_duplicate(a, b, tol), trial
    assert asked and len(asked) < 400  # the exact form was needed, for a few pairs only


def test_index_returns_the_first_near_duplicate_of_its_group():
    rng = np.random.default_rng(4)
    d = np.sort(rng.uniform(1.5, 4.0, 50))
    index = DuplicateIndex(0.05, lambda sid: None)
    index.add(1, compact((KEY, d + 0.2)), "far")
    index.add(2, compact((KEY, d[:-1])), "shorter")
    index.add(3, compact(((("Li", 5),), d)), "other composition")
    index.add(4, compact((KEY, d + 0.01)), "near")
    index.add(5, compact((KEY, d)), "same")
    assert index.first(9, compact((KEY, d))) == "near"
    assert index.first(9, None) is None
    empty = DuplicateIndex(0.05, lambda sid: None)
    empty.add(1, compact((KEY, np.zeros(0))), "no distances")
    assert empty.first(2, compact((KEY, np.zeros(0)))) == "no distances"


def _reference_select(candidates, policy, already_chosen=()):
    """The selection before screening was stored (commit 167fe2d): a loop over candidates."""
    decisions, uncertain = {}, []
    for c in candidates:
        if not c.filter_ok:
            decisions[c.id] = Decision(c.id, "filtered", c.filter_reason)
        elif c.force_width is None or not np.isfinite(c.force_width):
            decisions[c.id] = Decision(c.id, "skipped", "no uncertainty available (UQ task failed)")
        elif c.force_width > policy.force_upper:
            decisions[c.id] = Decision(c.id, "unphysical", f"force CI width {c.force_width:.3f} eV/A above the "
                                                           f"trust bound {policy.force_upper:g}")
        elif c.force_width > policy.force_threshold or (policy.energy_threshold > 0 and c.energy_width is not None
                                                          and c.energy_width > policy.energy_threshold):
            uncertain.append(c)
        else:
            decisions[c.id] = Decision(c.id, "confident", f"force CI width {c.force_width:.3f} eV/A within "
                                                          f"{policy.force_threshold:g}")
    chosen = list(already_chosen)
    for c in sorted(uncertain, key=lambda c: (-(c.force_width or 0.0), c.id)):
        dup = next((k for k in chosen if near_duplicate(c.fingerprint, k.fingerprint, policy.dedup_tolerance_A)), None)
        if dup is not None:
            decisions[c.id] = Decision(c.id, "duplicate", f"near-duplicate of structure {dup.id}")
        elif len(chosen) >= policy.max_per_round:
            decisions[c.id] = Decision(c.id, "skipped", f"uncertain ({c.force_width:.3f} eV/A) but over "
                                       + (policy.cap_note or f"the cap of {policy.max_per_round} per round"))
        else:
            chosen.append(c)
            what = f"force CI width {c.force_width:.3f} eV/A above {policy.force_threshold:g}"
            if c.energy_width is not None and policy.energy_threshold > 0 and c.energy_width > policy.energy_threshold:
                what += (f"; energy CI width {c.energy_width * 1000:.1f} meV/atom above "
                         f"{policy.energy_threshold * 1000:g}")
            decisions[c.id] = Decision(c.id, "label", what)
    return [decisions[c.id] for c in candidates]


@pytest.mark.parametrize("cap, energy_threshold", [(5, 0.0), (40, 0.004), (1000, 0.0)])
def test_select_decides_as_the_loop_did(cap, energy_threshold):
    rng = np.random.default_rng(cap)
    base = np.sort(rng.uniform(1.5, 4.0, 120))
    centres = [np.sort(base + rng.normal(0, 0.2, base.size)) for _ in range(6)]
    cands = []
    for i in range(400):
        fp = (KEY, np.sort(centres[i % 6] + rng.normal(0, 0.012, base.size)))
        fw = [None, float("nan"), float("inf")][i % 3] if i % 37 == 0 else float(rng.lognormal(-1.5, 0.6))
        ok = i % 29 != 0
        cands.append(Candidate(i + 10, float(rng.uniform(0, 0.01)) if i % 5 else None, fw, ok,
                               "" if ok else "atoms too close", fp if ok else None))
    already = [Candidate(1, 0.0, 0.3, True, "", (KEY, centres[0]))]
    policy = SelectionPolicy(0.15, 0.6, energy_threshold, cap, 0.05)
    for chosen in ((), already):
        got = select(cands, policy, already_chosen=chosen)
        assert got == _reference_select(cands, policy, already_chosen=chosen)
    assert {d.decision for d in got} >= {"label", "duplicate", "confident", "unphysical", "filtered", "skipped"}


def test_screen_finds_the_filters_the_smallest_distance_and_the_fingerprint():
    a = cathode_cell(1.0)
    s = screen(a)
    assert s.reason == "" and s.min_distance == pytest.approx(min(fingerprint(a)[1]))
    assert np.array_equal(decode(s.fingerprint).q, compact(fingerprint(a)).q)
    bad = a.copy()
    bad.positions[0, 0] = np.nan
    assert screen(bad).reason.startswith("positions contain NaN") and screen(bad).fingerprint is None
    close = a.copy()
    close.positions[1] = close.positions[0] + [0.3, 0.0, 0.0]
    assert screen(close).reason == "" and screen(close).min_distance < 0.31  # the setting applies at selection
