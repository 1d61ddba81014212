"""The phases of round 0 and of synchronous rounds: generate, label, train, evaluate,
explore and select. Each reads the view and returns operations; an empty list means
"waiting for tasks in flight"."""

from __future__ import annotations

import numpy as np

from driver.campaign import requests
from driver.campaign.plan import (AddStructure, AddTask, Phase, SetPhase, SetStructureStatus, Say, StartTraining,
                                  StopKind, UpdateRoundMetrics)
from driver.campaign.rules import (confident_share, converged_reason, decision_ops, mark_converged, pick_tests, policy,
                                   stop, stop_or_next)
from driver.campaign.tasks import TaskKind, TaskSpec, is_relaxation
from driver.campaign.view import CampaignView
from driver.config import runs_labeler_relaxations
from driver.dataset import frame_hash
from driver.selection import select


def initial_relaxations(view: CampaignView) -> tuple[list, bool]:
    """[initial] relax: the labeler relaxations to create, and whether any is still open."""
    from driver import volume

    ops = []
    for spec in view.cfg.structures:
        key, fn, req = volume.labeler_relax_request(view.cfg, spec, view.task_dir)
        if not view.has_task(key):
            ops.append(AddTask(TaskSpec(key, TaskKind(fn), 0, -1, req)))
    if ops:
        ops.append(Say(f"round 0: {len(ops)} structures relaxed with the {view.cfg.labeler.kind} labeler before "
                       "the initial data are built around them"))
    return ops, bool(ops or view.open_tasks(kind=TaskKind.RELAX_LABEL))


def labeler_md_runs(view: CampaignView) -> tuple[list, bool]:
    """[initial] / [test] n_md_per_structure: the labeler MD runs to create (from the
    labeler's relaxed structure, else the start structure), and whether any is still open."""
    ops = []
    for k, spec in enumerate(view.cfg.structures):
        if not view.has_task(f"md-label:{spec.name}"):
            start = view.labeler_relaxed(spec)
            ops.append(AddTask(requests.labeler_md(view, spec, view.start_structure(spec) if start is None else start,
                                                   k)))
    if ops:
        ops.append(Say(f"round 0: {len(ops)} MD runs driven by the {view.cfg.labeler.kind} labeler for initial data"))
    return ops, bool(ops or view.open_tasks(kind=TaskKind.MD_LABEL))


def labeler_md_frames(view: CampaignView, spec) -> list[tuple]:
    """(frame, split, note) of structure ``spec``'s labeler MD run: ``[test]
    n_md_per_structure`` of them held out, spread over the run; fewer when the run stopped
    early or failed (said)."""
    from remote_al.structures import from_extxyz

    cfg = view.cfg
    n_train, n_test = cfg.initial.n_md_per_structure, cfg.test.n_md_per_structure
    if not (n_train or n_test):
        return []
    task = view.task(f"md-label:{spec.name}")
    res = task.result if task is not None and task.status == "done" else {}
    frames = from_extxyz(res["frames_extxyz"]) if res and res.get("frames_extxyz") else []
    if len(frames) < n_train + n_test:
        why = res.get("stop_reason") if res else (task.status if task is not None else "missing")
        view.say(f"labeler MD of {spec.name} gave {len(frames)} of {n_train + n_test} frames ({why or 'no frames'})")
    n_test = min(n_test, len(frames))
    held = set(np.linspace(0, len(frames) - 1, n_test).round().astype(int)) if n_test else set()
    note = (f"initial data: labeler MD at {res.get('mean_temperature_K', 0):.0f} K (mean), a frame every "
            f"{cfg.initial.md_interval_steps} steps after {cfg.initial.md_equil_steps}")
    return [(a, "test" if i in held else "train", note) for i, a in enumerate(frames)]


def generate(view: CampaignView) -> list:
    """Round 0's training and test frames: rattled and strained copies of each structure."""
    from remote_al.structures import check_structure, composition_label, initial_perturbations, to_extxyz

    cfg = view.cfg
    n_relaxed, n_relaxed_test = cfg.initial.n_relaxed_per_structure, cfg.test.n_relaxed_per_structure
    if runs_labeler_relaxations(cfg):
        ops, pending = initial_relaxations(view)
        if pending:
            return ops
    if cfg.initial.n_md_per_structure or cfg.test.n_md_per_structure:
        ops, pending = labeler_md_runs(view)
        if pending:
            return ops
    rng = np.random.default_rng(cfg.campaign.seed)
    ops, n_filtered, n_train, first_reason = [], 0, 0, ""
    rattled = f"initial data: rattled up to {1.5 * cfg.initial.rattle_A:.3f} A"
    strain = cfg.initial.strain
    for spec in cfg.structures:
        base = view.start_structure(spec)
        sets = [(base, "train", cfg.initial.n_per_structure, strain, ""),
                (base, "test", cfg.test.n_initial_per_structure, strain, "")]
        if n_relaxed or n_relaxed_test:  # frames near the labeler's minimum too (None: said, none added)
            relaxed = view.labeler_relaxed(spec)
            # held-out ones unstrained, like the labeler's MD that the bounds are used on
            if relaxed is not None:
                near = ", around the labeler's relaxed structure"
                sets += [(relaxed, "train", n_relaxed, strain, near), (relaxed, "test", n_relaxed_test, 0.0, near)]
        frames = []  # (frame, split, note, source task)
        for around, split, n, strain_, where in sets:
            note = f"{rattled}, " + (f"strained {strain_}" if strain_ else "unstrained") + where
            frames += [(a, split, note, None) for a in initial_perturbations(around, n, cfg.initial.rattle_A, strain_,
                                                                             rng)]
        frames += [(*f, f"md-label:{spec.name}") for f in labeler_md_frames(view, spec)]
        for atoms, split, note, source in frames:
            check = check_structure(atoms, min_dist_A=cfg.selection.min_distance_A)
            row = dict(hash=frame_hash(atoms), origin="initial", split=split, round=0, generation=-1,
                       spec=spec.name, composition=composition_label(atoms), natoms=len(atoms),
                       extxyz=to_extxyz(atoms), status="selected" if check.ok else "filtered",
                       **({"source_task": source} if source else {}))
            if not check.ok:  # before it costs a labeler call
                n_filtered += 1
                first_reason = first_reason or check.reason
                ops.append(AddStructure({**row, "reason": check.reason}, (0, "filtered", check.reason)))
                continue
            n_train += split == "train"
            ops.append(AddStructure(row, (0, "label" if split == "train" else "test", note)))
    if n_train == 0:
        return ops + [stop(view, f"no training data: every initial frame was removed by the structure filter "
                                 f"({first_reason}); lower selection.min_distance_A or initial.rattle_A",
                           StopKind.FAILED, Phase.DONE)]
    return ops + [SetPhase(Phase.LABEL, logged=False), Say(
        f"round 0: generated {len(ops)} initial structures from {len(cfg.structures)} structures"
        + (f"; {n_filtered} rejected by the structure filters" if n_filtered else ""))]


def label(view: CampaignView) -> list:
    r = view.round
    todo = view.structures(round=r, status="selected")
    if todo:
        specs = requests.labels(view, r, todo)
        return [AddTask(s) for s in specs] + [
            SetStructureStatus(tuple(x["id"] for x in todo), "labeling"),
            Say(f"round {r}: {len(todo)} structures sent to the {view.cfg.labeler.kind} labeler")]
    if view.open_tasks(r, TaskKind.LABEL):
        return []
    n_new = sum(1 for x in view.label_rows("ok", "train") if x["round"] == r)
    if r > 0 and n_new == 0:
        return [Say(f"round {r}: no new training labels; keeping generation {r - 1}")] + stop_or_next(
            view, r, keep_generation=True)
    return [SetPhase(Phase.TRAIN)]


def train(view: CampaignView) -> list:
    g = view.round
    if not [t for t in view.tasks(kind=TaskKind.TRAIN) if t["generation"] == g]:
        return [StartTraining(g)]
    if view.open_tasks(g, TaskKind.TRAIN):
        return []
    if len(view.models(g)) < view.cfg.training.ensemble_size:
        return [stop(view, f"training of generation {g} failed (see quarantined tasks; "
                     "`remote-al run --retry-quarantined` once the cause is fixed)", StopKind.FAILED)]
    return [SetPhase(Phase.EVALUATE)]


def evaluate(view: CampaignView) -> list:
    r = g = view.round
    if not view.has_task(f"eval:g{g}"):
        specs, n = requests.calibration(view, g)
        ops = [AddTask(s) for s in specs]
        return ops + (stop_or_next(view, r) if n == 0 else [])
    if view.open_tasks(r, (TaskKind.EVAL, TaskKind.OOB, TaskKind.SCORE, TaskKind.RECHECK)):
        return []
    m = view.metrics("generation").get(g, {})
    ops = [Say(f"generation {g} on {int(m.get('n_test', 0))} held-out frames: energy RMSE "
               f"{m.get('energy_rmse_meV_atom', float('nan')):.2f} meV/atom, force RMSE "
               f"{m.get('force_rmse_eV_A', float('nan')):.3f} eV/A")] if m else []
    return ops + stop_or_next(view, r)


def explore(view: CampaignView) -> list:
    r = view.round
    if not view.tasks(kind=TaskKind.MD, round_=r):
        n = len(view.sweep())  # one sweep, the same tasks the asynchronous mode creates
        ops = [AddTask(requests.exploration(view, r, r - 1, index=i)) for i in range(n)]
        return ops + [Say(f"round {r}: exploring with generation {r - 1}: {n} MD runs")]
    if view.open_tasks(r, (TaskKind.MD, TaskKind.SCORE)):
        return []
    return [SetPhase(Phase.SELECT)]


def select_round(view: CampaignView) -> list:
    r, cfg = view.round, view.cfg
    cands = view.candidates(view.candidate_rows(r))
    # held-out frames from the MD explorations only (as in the asynchronous mode)
    relaxed = {row["id"] for t in view.tasks(kind=TaskKind.MD, round_=r) if is_relaxation(t["key"])
               for row in view.structures(source_task=t["key"])}
    test_ids = pick_tests(view, r, [c for c in cands if c.id not in relaxed], cfg.test.n_per_round)
    decisions = select([c for c in cands if c.id not in test_ids], policy(view, cfg.selection.max_per_round, r=r),
                       fingerprints=view.fingerprints(), extras=view.selection_extras())
    ops, counts = decision_ops(r, decisions, test_ids)
    ids, widths, filtered = view.explored_widths(r)
    filtered |= np.isin(ids, [d.id for d in decisions if d.decision == "filtered"])
    share = confident_share(widths, filtered, view.force_threshold())
    ops += [UpdateRoundMetrics(r), Say(
        f"round {r}: {len(cands)} frames explored, confident share {share:.2f}, "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))]
    if share >= cfg.selection.converged_share:
        if counts.get("label", 0) == 0:
            return ops + [stop(view, converged_reason(share, cfg.selection.converged_share), StopKind.CONVERGED)]
        ops += mark_converged(view, r, share, counts["label"])  # evaluate's stop_or_next stops after training
    return ops + [SetPhase(Phase.LABEL)]
