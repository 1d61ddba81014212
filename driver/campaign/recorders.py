"""What a finished task's result changes, per task kind: planners that read the result
and the view and return operations (``driver.campaign.plan``). The engine applies a
kind's planners in order, in the transaction that also marks the task done, so each one
sees what the previous ones changed."""

from __future__ import annotations

import numpy as np

from driver.campaign import requests
from driver.campaign.plan import (AddModel, AddStructure, AddTask, Calibrate, Decide, Event, FailLabel, FinishTask,
                                  RewriteRequest, SetMetrics, SetWidths, StoreLabel, UpdateRoundMetrics,
                                  UpdateStructure)
from driver.campaign.tasks import ScoreContext, Task, TaskKind, is_relaxation
from driver.campaign.view import CampaignView
from driver.dataset import frame_hash
from driver.screening import screen


def record_label(view: CampaignView, task: Task, result: dict) -> list:
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.structures import from_extxyz

    req = task.request
    ops: list = []
    for atoms, lab in zip(from_extxyz(req.structures_extxyz), result["labels"]):
        sid = lab["structure_id"]
        if lab["status"] != "ok":
            reason = lab.get("reason") or "label failed"
            ops += [FailLabel(sid, task.key, result["labeler"], reason),
                    Event("label_failed", f"structure {sid}: {lab.get('reason')}")]
            continue
        a = atoms.copy()
        a.info = {"structure_id": sid, "labeler": result["labeler"]}
        a.calc = SinglePointCalculator(
            a, energy=lab["energy"], forces=np.array(lab["forces"], dtype=float),
            stress=None if lab.get("stress") is None else np.array(lab["stress"], dtype=float),
        )
        ops.append(StoreLabel(sid, task.key, result["labeler"], result["labeler_note"], dict(req.settings or {}),
                              a, lab["energy"]))
    return ops


def record_train(view: CampaignView, task: Task, result: dict) -> list:
    return [AddModel(task.generation, task.request.member, task.key, result)]


def record_md(view: CampaignView, task: Task, result: dict) -> list:
    """The exploration's frames become candidates (a frame already stored is not added
    again), each screened once here (driver.screening): selection reads what it found."""
    from remote_al.structures import composition_label, from_extxyz, to_extxyz

    ops = []
    for atoms in from_extxyz(result["frames_extxyz"]):
        atoms.calc = None
        ops.append(AddStructure(dict(
            hash=frame_hash(atoms), origin="md", split="train", round=task.round, generation=task.generation,
            spec=task.context.spec, composition=composition_label(atoms), natoms=len(atoms),
            extxyz=to_extxyz(atoms), status="candidate", source_task=task.key, **screen(atoms).row())))
    return ops


def score_exploration(view: CampaignView, task: Task, result: dict) -> list:
    """The ensemble that explored scores the new frames (one uq task)."""
    rows = view.structures(source_task=task.key)
    if not rows:
        return []
    key = f"uq:{task.key}"
    frames = "".join(r["extxyz"] for r in rows)
    ctx = ScoreContext(tuple(r["id"] for r in rows))
    return [AddTask(requests.uq(view, key, TaskKind.SCORE, task.round, task.generation, frames, ctx,
                                features=view.selection_features()))]


def record_score(view: CampaignView, task: Task, result: dict) -> list:
    ids = task.context.structure_ids
    feats = result.get("frame_features") or ()
    return [SetWidths(tuple(zip(ids, result["energy_width"], result["force_width"])),
                      tuple(zip(ids, map(tuple, feats))), task.generation, task.request.features if feats else "")]


def select_scored(view: CampaignView, task: Task, result: dict) -> list:
    """Asynchronous steering selects from each exploration as soon as it is scored."""
    from driver.campaign.phases_async import select_batch
    from driver.campaign.plan import Phase

    if view.cfg.steering.mode != "async" or view.phase != Phase.ASYNC:
        return []
    return select_batch(view, task.round, list(task.context.structure_ids), relaxation=is_relaxation(task.key))


def accuracy_metrics(frames_extxyz: str, result: dict) -> dict:
    """Accuracy of an ensemble on labeled frames: RMSEs, CI coverage, per-composition energy."""
    vals = {"n_test": result["n_frames"]}
    if result.get("energy_error") is None:
        return vals
    e = np.array(result["energy_error"])
    f = np.array(result["force_rmse"])
    natoms = np.array(result["natoms"])
    vals["energy_rmse_meV_atom"] = float(np.sqrt(np.mean(e**2)) * 1000)
    # force RMSE over all components of all frames
    vals["force_rmse_eV_A"] = float(np.sqrt(np.sum(f**2 * natoms * 3) / np.sum(natoms * 3)))
    vals["force_inside_ci"] = float(np.average(result["force_inside_ci"], weights=natoms))
    vals["force_width_mean"] = float(np.mean(result["force_width"]))
    vals.update(energy_by_composition(frames_extxyz, e))
    return vals


def energy_by_composition(frames_extxyz: str, energy_error) -> dict[str, float]:
    """Mean (bias) and RMSE of the energy error per composition, meV/atom: metric names
    ``energy_bias_meV_atom:<composition>`` and ``energy_rmse_meV_atom:<composition>``."""
    from remote_al.structures import composition_label, from_extxyz

    comps = [composition_label(a) for a in from_extxyz(frames_extxyz)]
    e = np.asarray(energy_error, dtype=float) * 1000
    out = {}
    for c in sorted(set(comps)):
        mine = e[[k for k, x in enumerate(comps) if x == c]]
        out[f"energy_bias_meV_atom:{c}"] = float(mine.mean())
        out[f"energy_rmse_meV_atom:{c}"] = float(np.sqrt(np.mean(mine ** 2)))
    return out


def record_eval(view: CampaignView, task: Task, result: dict) -> list:
    vals = accuracy_metrics(task.request.frames_extxyz, result)
    return [SetMetrics("generation", task.generation, vals), Calibrate(task.generation, test_result=result)]


def record_oob(view: CampaignView, task: Task, result: dict) -> list:
    """Out-of-bag frames: calibration pairs only, no accuracy metrics."""
    return [Calibrate(task.generation, oob_result=result)]


def record_final(view: CampaignView, task: Task, result: dict) -> list:
    return [SetMetrics("final", task.generation, accuracy_metrics(task.request.frames_extxyz, result))]


def record_recheck(view: CampaignView, task: Task, result: dict) -> list:
    """Drop from still-queued label tasks the structures generation g is now confident
    about (width at or below the threshold) or finds outside its trust window; each drop
    is a decision with its reason. A label task left empty is done with nothing to label.
    The round then explores again for what it is missing."""
    from remote_al.structures import from_extxyz, to_extxyz

    g = task.generation
    thr, upper = view.force_threshold(), view.cfg.selection.force_upper
    groups = task.context.groups
    ids = [sid for group in groups.values() for sid in group]
    width = dict(zip(ids, result["force_width"]))
    ops: list = [SetWidths(tuple(zip(ids, result["energy_width"], result["force_width"])))]
    rounds, n_dropped = set(), 0
    for label_key, group in groups.items():
        label = view.task(label_key)
        if label is None or label.status != "pending":
            continue  # submitted meanwhile: labeled as selected
        drop = {}
        for sid in group:
            w, g_sel = width[sid], view.structures(id=sid)[0]["generation"]
            if w <= thr:
                drop[sid] = ("confident", f"re-checked with generation {g}: force CI width {w:.3f} eV/A "
                                          f"at or below {thr:g} (selected with generation {g_sel})")
            elif w > upper:
                drop[sid] = ("unphysical", f"re-checked with generation {g}: force CI width {w:.3f} eV/A "
                                           f"above the trust bound {upper:g} (selected with generation {g_sel})")
        if not drop:
            continue
        for sid, (decision, reason) in drop.items():
            ops += [Decide(label.round, sid, decision, reason), UpdateStructure(sid, {"status": decision, "reason": reason})]
        n_dropped += len(drop)
        rounds.add(label.round)
        req = label.request
        keep = [i for i, sid in enumerate(req.structure_ids) if sid not in drop]
        if not keep:
            ops.append(FinishTask(label_key, {"labels": [], "dropped": sorted(drop),
                                              "reason": f"nothing left to label after the re-check with generation {g}"}))
            continue
        frames = from_extxyz(req.structures_extxyz)
        ops.append(RewriteRequest(label_key, req.__class__(**{
            **req.to_dict(), "structure_ids": tuple(req.structure_ids[i] for i in keep),
            "structures_extxyz": to_extxyz([frames[i] for i in keep])})))
    ops += [UpdateRoundMetrics(r) for r in sorted(rounds)]
    if rounds:
        ops.append(Event("recheck", f"generation {g} re-checked queued selections: {n_dropped} no longer labeled"))
    return ops


# what each kind's result changes, in order (relaxations: the result itself is the record,
# driver.volume reads it)
RECORDERS = {
    TaskKind.LABEL: (record_label,),
    TaskKind.TRAIN: (record_train,),
    TaskKind.MD: (record_md, score_exploration),
    TaskKind.SCORE: (record_score, select_scored),
    TaskKind.EVAL: (record_eval,),
    TaskKind.OOB: (record_oob,),
    TaskKind.FINAL_EVAL: (record_final,),
    TaskKind.RECHECK: (record_recheck,),
    TaskKind.RELAX: (),
    TaskKind.RELAX_LABEL: (),
    TaskKind.MD_LABEL: (),  # its frames stay in the result: round 0's generate reads them
}


def slim(kind: TaskKind, result: dict) -> dict:
    """What to keep of a result in the tasks table (frames live in the structures table)."""
    out = dict(result)
    if kind == TaskKind.MD:
        out.pop("frames_extxyz", None)
    if kind == TaskKind.RELAX:
        out.pop("relaxed_extxyz", None)  # in the task's workdir: relaxed.extxyz
    if kind == TaskKind.LABEL:
        out["labels"] = [
            {k: v for k, v in lab.items() if k not in ("forces", "stress", "magmoms")} for lab in result["labels"]
        ]
    return out
