"""Rules shared by the phases: stopping, budgets, held-out picks, selection policy and the
numbers of a round (all pure: they read the view and return operations or values)."""

from __future__ import annotations

import random
import time

import numpy as np

from driver.campaign.plan import (CarryModels, Decide, Event, Phase, Say, SetMetrics, SetPhase, Stop, StopKind,
                                  UpdateStructure)
from driver.campaign.view import CampaignView
from driver.selection import SelectionPolicy
from driver.state import CONVERGED_MARK

# a structure's status after each selection decision
STATUS_OF = {"label": "selected", "confident": "confident", "unphysical": "unphysical",
             "filtered": "filtered", "duplicate": "duplicate", "skipped": "skipped"}


def stop(view: CampaignView, reason: str, kind: StopKind = StopKind.BUDGET, phase: Phase | None = None) -> Stop:
    """Stop with ``reason``; asynchronous campaigns drain their tasks in flight first."""
    if phase is None:
        phase = Phase.ASYNC if view.phase == Phase.ASYNC else Phase.FINAL_EVAL
    return Stop(reason, kind, phase)


def check_budgets(view: CampaignView) -> list:
    """The wall-time budget (the round and label budgets are checked where rounds end)."""
    if view.phase in (Phase.FINAL_EVAL, Phase.VOLUME, Phase.DONE) or view.stop_reason:
        return []
    c = view.cfg.campaign
    started = view.started
    if c.max_wall_hours > 0 and started is not None and time.time() - started > c.max_wall_hours * 3600:
        return [stop(view, f"wall-time budget of {c.max_wall_hours:g} h reached")]
    return []


def stop_or_next(view: CampaignView, r: int, keep_generation: bool = False) -> list:
    """Round r is complete: stop as converged (round r reached ``converged_share`` and its
    last labels are now trained on) or on a budget, or go on to round r + 1 (carrying the
    ensemble over unchanged when there was nothing new to train on)."""
    c = view.cfg.campaign
    share = converged_mark(view, r)
    if share is not None:
        return [stop(view, converged_reason(share, view.cfg.selection.converged_share, r), StopKind.CONVERGED)]
    n_labels = view.label_count()
    if r >= c.max_rounds:
        return [stop(view, f"round budget of {c.max_rounds} rounds reached")]
    if c.max_label_calls and n_labels >= c.max_label_calls:
        return [stop(view, f"labeler budget of {c.max_label_calls} calls reached ({n_labels} used)")]
    ops: list = [CarryModels(r - 1, r)] if keep_generation else []
    return ops + [SetPhase(Phase.ASYNC if view.cfg.steering.mode == "async" else Phase.EXPLORE, r + 1)]


def policy(view: CampaignView, cap: int, cap_note: str = "", r: int = 0) -> SelectionPolicy:
    s = view.cfg.selection
    return SelectionPolicy(view.force_threshold(), s.force_upper, s.energy_threshold, cap, s.dedup_tolerance_A,
                           cap_note=cap_note, strategy=s.strategy, quota=s.quota == "per_condition",
                           seed=view.cfg.campaign.seed * 1009 + r)


def pick_tests(view: CampaignView, r: int, cands, n: int, salt: int = 0) -> set[int]:
    """n random held-out frames among the sane candidates (deterministic per campaign seed)."""
    s = view.cfg.selection
    rng = random.Random(view.cfg.campaign.seed * 31 + r * 1009 + salt)
    sane = [c.id for c in cands if c.filter_ok and c.force_width is not None and c.force_width <= s.force_upper]
    return set(rng.sample(sane, min(n, len(sane))))


def decision_ops(r: int, decisions, test_ids) -> tuple[list, dict[str, int]]:
    """The operations that store selection decisions and statuses, and their counts."""
    ops: list = []
    counts: dict[str, int] = {}
    for sid in sorted(test_ids):
        ops += [Decide(r, sid, "test", "random held-out frame for evaluation (never trained on)"),
                UpdateStructure(sid, {"status": "selected", "split": "test", "reason": "held-out audit frame"})]
        counts["test"] = counts.get("test", 0) + 1
    values: dict[tuple[str, str], dict] = {}  # one (read-only) dict per distinct change: rounds of 10^6 frames
    for d in decisions:
        change = values.get((d.decision, d.reason))
        if change is None:
            change = values[(d.decision, d.reason)] = {"status": STATUS_OF[d.decision], "reason": d.reason}
        ops += [Decide(r, d.id, d.decision, d.reason), UpdateStructure(d.id, change)]
        counts[d.decision] = counts.get(d.decision, 0) + 1
    return ops, counts


def confident_share(widths, filtered, thr: float) -> float:
    """Share of the evaluated (scored, not filtered) explored frames at or below ``thr``
    (``widths``: NaN where not scored; ``filtered``: a flag per frame)."""
    w = np.asarray(widths, dtype=float)
    evaluated = w[~np.isnan(w) & ~np.asarray(filtered, dtype=bool)]
    return int(np.count_nonzero(evaluated <= thr)) / evaluated.size if evaluated.size else 0.0


def round_metrics(view: CampaignView, r: int) -> dict:
    """Per-round numbers from the structures explored in round r (both modes)."""
    thr, upper = view.force_threshold(), view.cfg.selection.force_upper
    _, w, filtered = view.explored_widths(r)
    dec = view.decision_counts(r)
    widths = w[~np.isnan(w)]
    return {
        "n_explored": int(w.size), "n_selected": dec.get("label", 0), "n_confident": dec.get("confident", 0),
        "n_unphysical": dec.get("unphysical", 0), "n_filtered": dec.get("filtered", 0),
        "n_duplicate": dec.get("duplicate", 0), "n_skipped": dec.get("skipped", 0), "n_test": dec.get("test", 0),
        "confident_share": confident_share(w, filtered, thr),
        "force_width_median": float(np.median(widths)) if widths.size else None,
        "force_width_p90": float(np.percentile(widths, 90)) if widths.size else None,
        "force_width_max": float(np.max(widths)) if widths.size else None,
        "n_above_upper": int(np.count_nonzero(widths > upper)),
        "force_threshold": thr,
    }


def converged_reason(share: float, target: float, trained: int | None = None,
                     scope: str = "explored frames") -> str:
    return (f"converged: {share:.1%} of {scope} confident (target {target:.0%})"
            + (f"; generation {trained} trained on the round's last selections" if trained is not None else ""))


def converged_mark(view: CampaignView, r: int) -> float | None:
    """The confident share with which round r reached ``converged_share``, or None."""
    return view.metrics("round").get(r, {}).get(CONVERGED_MARK)


def mark_converged(view: CampaignView, r: int, share: float, n_selected: int,
                   scope: str = "explored frames") -> list:
    """Round r is confident enough but selected ``n_selected`` frames: label and train them,
    then stop (``stop_or_next`` or ``generation_ready`` reads the mark)."""
    msg = (f"round {r}: {share:.1%} of its {scope} confident (converged_share "
           f"{view.cfg.selection.converged_share:.0%}); the {n_selected} frames it selected train a last "
           f"generation, then the campaign stops as converged")
    return [SetMetrics("round", r, {CONVERGED_MARK: share}), Event("converged", msg), Say(msg)]
