"""Asynchronous steering: one pipelined phase. ``round`` r is the label round: labels
selected now go into generation r. MD and scoring run with the current generation on
free GPU slots; each exploration is selected from as soon as it is scored and its labels
go to the CPU at once; generation r starts training as soon as ``retrain_after`` new
labels arrived (round becomes r + 1 and exploration with the current generation goes on
during training); a finished generation replaces the ensemble for every MD task created
afterwards."""

from __future__ import annotations

from driver.campaign import requests
from driver.campaign.plan import (AddTask, Event, MakeCurrent, Phase, Say, SetPhase, SetStructureStatus,
                                  StartTraining, StopKind, UpdateRoundMetrics)
from driver.campaign.rules import (converged_mark, converged_reason, decision_ops, mark_converged, pick_tests, policy,
                                   stop)
from driver.campaign.tasks import RecheckContext, TaskKind
from driver.campaign.view import CampaignView
from driver.selection import select


def async_phase(view: CampaignView) -> list:
    cfg, r, g_cur = view.cfg, view.round, view.current_generation
    training = [t for t in view.tasks(kind=TaskKind.TRAIN) if t["generation"] > g_cur]
    training_open = any(t["status"] in ("pending", "submitted") for t in training)
    if training and not training_open:
        g_new = max(t["generation"] for t in training)
        if len(view.models(g_new)) >= cfg.training.ensemble_size:
            return generation_ready(view, g_new)
        if not view.stop_reason:  # once: then drain what is in flight (below)
            return [stop(view, f"training of generation {g_new} failed (see quarantined tasks; "
                     "`remote-al run --retry-quarantined` once the cause is fixed)", StopKind.FAILED)]
    if view.stop_reason:  # drain what is in flight, start nothing new
        return [] if view.open_tasks() else [SetPhase(Phase.FINAL_EVAL)]
    if last_generation_training(view):  # it stops when that generation is ready
        return []
    last = cfg.campaign.max_rounds
    if not training_open and r <= last:
        new = new_train_labels(view, r)
        open_r = [t for t in view.open_tasks(kind=(TaskKind.LABEL, TaskKind.MD, TaskKind.SCORE)) if t["round"] <= r]
        drained = not open_r and explorations_exhausted(view, r, g_cur)
        # the last generation waits for every label of its round: nothing paid for is left untrained
        enough = new >= retrain_after(view) and r < last
        if enough or (drained and new > 0):
            share = window_share(view, r) if drained else None
            done = share is not None and share >= cfg.selection.converged_share
            ops = mark_converged(view, r, share, new, window_scope(view)) if done else []
            return ops + [StartTraining(r, next_round=r + 1)]
        if drained and new == 0:
            why, kind = no_more_work_reason(view, r)
            return [stop(view, why, kind)]
    # keep the GPU busy: a new exploration whenever a GPU slot would otherwise idle, for
    # the first label round (this one, or up to `lookahead_rounds` ahead) that wants more
    if gpu_idle(view):
        # looking ahead only fills GPU slots that a queued training would not take
        train_queued = any(t["status"] == "pending" for t in training)
        for rho in range(r, min(last, r + cfg.steering.lookahead_rounds) + 1):
            if rho > r and train_queued:
                break
            if not explorations_exhausted(view, rho, g_cur):
                return [AddTask(requests.exploration(view, rho, g_cur))]
    return []


def retrain_after(view: CampaignView) -> int:
    return view.cfg.steering.retrain_after or view.cfg.selection.max_per_round


def new_train_labels(view: CampaignView, g: int) -> int:
    """Training labels of rounds up to g not yet in generation ``g - 1``'s dataset."""
    used = view.dataset_ids(g - 1)
    return sum(1 for x in view.label_rows("ok", "train") if x["structure_id"] not in used and x["round"] <= g)


def no_more_work_reason(view: CampaignView, r: int) -> tuple[str, StopKind]:
    """Why an asynchronous round has nothing left to do, and the stop kind."""
    budget = view.cfg.campaign.max_label_calls
    used = view.label_count()
    if budget and used >= budget:
        return f"labeler budget of {budget} calls reached ({used} used)", StopKind.BUDGET
    share = view.metrics("round").get(r, {}).get("confident_share")
    if share is not None and share >= view.cfg.selection.converged_share:
        return converged_reason(share, view.cfg.selection.converged_share), StopKind.CONVERGED
    return (f"no uncertain structures left to label after {view.cfg.steering.max_sweeps_per_generation} sweeps",
            StopKind.BUDGET)


def gpu_idle(view: CampaignView) -> bool:
    """Room for another exploration: fewer explorations (MD and their scoring) open than
    GPU slots. Training queued behind does not block it: explorations are submitted
    first, so MD with the current ensemble interleaves with a generation's training."""
    return len(view.open_tasks(kind=(TaskKind.MD, TaskKind.SCORE))) < view.gpu_slots


def explorations_exhausted(view: CampaignView, r: int, g: int) -> bool:
    """No more explorations for label round r (with generation g)."""
    cfg = view.cfg
    md_r = view.tasks(kind=TaskKind.MD, round_=r)
    n_sweep = len(view.sweep())
    if len(md_r) >= n_sweep * cfg.steering.max_sweeps_per_generation:
        return True
    if view.decision_counts(r).get("label", 0) >= cfg.selection.max_per_round:
        return True
    budget = cfg.campaign.max_label_calls
    if budget and view.label_count() >= budget:
        return True
    share = window_share(view, r)  # the last explorations of this round were confident enough
    return share is not None and share >= cfg.selection.converged_share


def window_scope(view: CampaignView) -> str:
    """What the asynchronous convergence share is a share of (for messages)."""
    k = view.cfg.steering.converged_window or len(view.sweep())
    return f"frames of the last {k} explorations"


def window_share(view: CampaignView, r: int) -> float | None:
    """Confident share of the frames of round r's last ``converged_window`` explorations
    (one sweep by default); None until that many are done and every frame is scored."""
    md_r = view.tasks(kind=TaskKind.MD, round_=r)
    k = view.cfg.steering.converged_window or len(view.sweep())
    done_md = [t for t in md_r if t["status"] == "done"]
    if len(md_r) < k or len(done_md) != len(md_r):
        return None
    rows = view.widths_from([t["key"] for t in done_md[-k:]])
    ws = [row["force_width"] for row in rows if row["force_width"] is not None and row["status"] != "filtered"]
    if not ws or len(ws) != len(rows):
        return None
    thr = view.force_threshold()
    return sum(w <= thr for w in ws) / len(ws)


def last_generation_training(view: CampaignView) -> bool:
    """The previous round reached the converged share: the generation trained on its
    selections is the last one, and nothing new is explored or selected meanwhile."""
    return converged_mark(view, view.round - 1) is not None


def select_batch(view: CampaignView, r: int, ids: list[int], relaxation: bool = False) -> list:
    """Asynchronous selection of one exploration's frames, as soon as they are scored.
    The round's held-out frames come from its MD explorations, spread over them; an
    ensemble relaxation (``relaxation``) gives none: its frames are colder than the MD
    that the calibrated bounds are used on (docs/uncertainty.md, attempt 19)."""
    cfg = view.cfg
    if view.stop_reason or last_generation_training(view):  # nothing new once it is stopping
        return []
    cands = view.candidates(view.candidate_rows(ids=ids))
    n_tests = view.decision_counts(r).get("test", 0)
    n_md = sum(p != "relax" for _, _, p, _ in view.sweep())
    per_batch = 0 if relaxation else -(-cfg.test.n_per_round // max(1, n_md))
    test_ids = pick_tests(view, r, cands, min(per_batch, cfg.test.n_per_round - n_tests), salt=min(ids))
    already = view.candidates(view.candidate_rows(ids=[x["id"] for x in view.decided(r, "label")], any_status=True))
    cap, note = cfg.selection.max_per_round, ""
    k = cfg.selection.max_per_exploration
    if cfg.selection.quota == "per_condition":  # each exploration is one condition: at most its share
        share = -(-cfg.selection.max_per_round // view.n_conditions())
        if not k or share < k:
            k = share
    if k and len(already) + k < cap:
        cap, note = len(already) + k, f"the cap of {k} per exploration"
    budget = cfg.campaign.max_label_calls
    if budget:
        used, in_labeling = view.label_count(), view.count_structures("labeling")
        cap = min(cap, len(already) + max(0, budget - used - in_labeling))
    decisions = select([c for c in cands if c.id not in test_ids], policy(view, cap, note, r), already_chosen=already,
                       fingerprints=view.fingerprints(), extras=view.selection_extras())
    ops, _ = decision_ops(r, decisions, test_ids)
    chosen = [d.id for d in decisions if d.decision == "label"] + sorted(test_ids)
    if chosen:
        by_id = {row["id"]: row for row in view.structures(id=chosen)}
        ops += [AddTask(s) for s in requests.labels(view, r, [by_id[i] for i in chosen])]
        ops.append(SetStructureStatus(tuple(chosen), "labeling"))
    return ops + [UpdateRoundMetrics(r)]


def recheck_selections(view: CampaignView, g: int) -> list:
    """Re-score, with generation g, the structures selected with an older generation whose
    label tasks are still queued (one uq task). Queued labels are not held back meanwhile:
    whatever is submitted before the answer comes is labeled as selected."""
    key = f"uq:recheck:g{g}"
    if view.has_task(key):
        return []
    groups: dict[str, tuple[int, ...]] = {}
    frames = []
    for t in view.tasks(status="pending", kind=TaskKind.LABEL):
        stale = view.selected_before(t["round"], view.task(t["key"]).request.structure_ids, g)
        if stale:
            groups[t["key"]] = tuple(x["id"] for x in stale)
            frames += [x["extxyz"] for x in stale]
    if not groups:
        return []
    return [AddTask(requests.uq(view, key, TaskKind.RECHECK, view.round, g, "".join(frames),
                                RecheckContext(groups)))]


def generation_ready(view: CampaignView, g: int) -> list:
    """Generation g is complete: make it current, evaluate it, check the round budget."""
    specs, _ = requests.calibration(view, g)
    ops: list = [AddTask(s) for s in specs] + [MakeCurrent(g)]
    if view.cfg.steering.mode == "async" and view.cfg.steering.recheck_selections:
        ops += recheck_selections(view, g)
    ops += [Event("generation", f"generation {g} is current"), Say(f"generation {g} ready; explorations now use it")]
    c = view.cfg.campaign
    share = converged_mark(view, g)  # round g reached converged_share: this generation is the last
    if share is not None:
        why = converged_reason(share, view.cfg.selection.converged_share, g, f"round {g}'s {window_scope(view)}")
        ops.append(stop(view, why, StopKind.CONVERGED, phase=Phase.ASYNC))
    elif g >= c.max_rounds:
        ops.append(stop(view, f"round budget of {c.max_rounds} rounds reached", phase=Phase.ASYNC))
    return ops
