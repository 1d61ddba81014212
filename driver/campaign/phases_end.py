"""The phases after the last round: the final evaluation of every generation on the whole
held-out set, the volume curve, done."""

from __future__ import annotations

from driver.campaign import requests
from driver.campaign.plan import AddTask, Phase, Say, SetPhase
from driver.campaign.tasks import TaskKind, TaskSpec
from driver.campaign.view import CampaignView


def final_eval(view: CampaignView) -> list:
    # complete generations only: one whose training failed is not an ensemble to report
    gens = sorted(g for g in {m["generation"] for m in view.models()}
                  if len(view.models(g)) >= view.cfg.training.ensemble_size)
    text, n = view.test_frames_extxyz()
    if n == 0 or not gens:
        return [SetPhase(Phase.DONE)]
    ops = [AddTask(requests.uq(view, f"final-eval:g{g}", TaskKind.FINAL_EVAL, view.round, g, text))
           for g in gens if not view.has_task(f"final-eval:g{g}")]
    if ops:
        return ops + [Say(f"final evaluation of {len(gens)} generations on {n} held-out frames")]
    if view.open_tasks():
        return []
    fm = view.metrics("final")
    for g in gens:
        m = fm.get(g, {})
        if m:
            ops.append(Say(
                f"  generation {g}: energy RMSE {m.get('energy_rmse_meV_atom', float('nan')):.2f} meV/atom, "
                f"force RMSE {m.get('force_rmse_eV_A', float('nan')):.3f} eV/A, "
                f"{m.get('force_inside_ci', float('nan')):.0%} of force errors inside the 95% CI"))
    return ops + [SetPhase(Phase.VOLUME if view.cfg.volume.enabled else Phase.DONE)]


def volume_curve(view: CampaignView) -> list:
    """Relax each composition with every member of the final ensemble (and a few with the
    labeler): the volume-change curve of driver.volume."""
    from driver import volume

    gens = sorted({m["generation"] for m in view.models()})
    if not gens:
        return [SetPhase(Phase.DONE)]
    g = gens[-1]
    ops = [AddTask(TaskSpec(key, TaskKind(fn), view.round, g, req))
           for key, fn, req in volume.relax_requests(view.cfg, g, list(view.model_paths(g)), view.task_dir)
           if not view.has_task(key)]
    if ops:
        return ops + [Say(f"volume curve: {len(ops)} relaxations (ensemble generation {g}; labeler checks: "
                          f"{len(volume.check_specs(view.cfg))})")]
    if view.open_tasks(kind=(TaskKind.RELAX, TaskKind.RELAX_LABEL)):
        return []
    return [Say("  " + line) for line in volume.format_table(view.volume_rows())] + [SetPhase(Phase.DONE)]


def done(view: CampaignView) -> list:
    return []
