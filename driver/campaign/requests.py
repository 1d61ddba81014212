"""The tasks a campaign creates, built from its configuration and state (pure: they
return ``TaskSpec`` records; the engine stores them)."""

from __future__ import annotations

from driver.campaign.tasks import Context, ExploreContext, TaskKind, TaskSpec
from driver.campaign.view import CampaignView
from driver.preflight import build_structure
from remote_al.records import LabelRequest, MDRequest, TrainRequest, UQRequest


def md_guard(view: CampaignView, model_paths) -> dict:
    """MD stops early on overlapping atoms, or when the ensemble leaves its trust window."""
    sel = view.cfg.selection
    out = {"stop_min_distance_A": max(0.3, 0.8 * sel.min_distance_A)}
    if view.cfg.exploration.guard:
        out.update(stop_force_width=sel.force_upper, guard_model_paths=tuple(model_paths))
    return out


def exploration(view: CampaignView, r: int, g: int, index: int | None = None) -> TaskSpec:
    """Exploration number ``index`` (default: the next) of label round r with generation
    g: the sweep's entry ``index`` modulo its length."""
    from remote_al.structures import to_extxyz

    cfg, e = view.cfg, view.cfg.exploration
    models = view.model_paths(g)
    n = len(view.tasks(kind=TaskKind.MD, round_=r)) if index is None else index
    sweep = view.sweep()
    spec, t, p, w = sweep[n % len(sweep)]
    k = n // len(sweep)
    common = dict(n_frames=spec.n_frames or e.n_frames, seed=cfg.campaign.seed * 7919 + r * 101 + n)
    guard = md_guard(view, models)
    if p == "relax":  # member w relaxes the built structure (as the volume phase does; ASE in every engine)
        key = f"md:r{r}:{spec.name}:relax:m{w}" + (f":s{k}" if k else "")
        req = MDRequest(
            task_key=key, workdir=view.task_dir(key), model_path=models[w % len(models)],
            structure_extxyz=to_extxyz(build_structure(spec)), ensemble="relax", temperature_K=0.0,
            steps=e.relax_steps, engine="ase", stop_min_distance_A=guard["stop_min_distance_A"], **common,
        )
    else:
        key = f"md:r{r}:{spec.name}:T{t:g}" + (f":P{p:g}" if p is not None else "") + f":w{w}" + (f":s{k}" if k else "")
        req = MDRequest(
            task_key=key, workdir=view.task_dir(key), model_path=models[(n + r) % len(models)],
            structure_extxyz=to_extxyz(view.md_start_structure(spec)), temperature_K=t, steps=spec.steps or e.steps,
            timestep_fs=e.timestep_fs, ensemble="npt" if p is not None else "nvt", pressure_GPa=p or 0.0,
            engine=e.engine, **guard, **common,
        )
    return TaskSpec(key, TaskKind.MD, r, g, req, ExploreContext(spec.name))


def labeler_md(view: CampaignView, spec, start, index: int) -> TaskSpec:
    """Round 0's MD driven by the labeler for structure ``spec`` (the ``index``-th), from
    ``start``: ``[initial] n_md_per_structure`` + ``[test] n_md_per_structure`` frames, one
    every ``md_interval_steps`` after ``md_equil_steps``, at the structure's first MD
    temperature (and pressure, NPT)."""
    from remote_al.structures import to_extxyz

    cfg, e, i = view.cfg, view.cfg.exploration, view.cfg.initial
    n = i.n_md_per_structure + cfg.test.n_md_per_structure
    npt = (spec.ensemble or e.ensemble) == "npt"
    key = f"md-label:{spec.name}"
    req = MDRequest(
        task_key=key, workdir=view.task_dir(key), model_path="", structure_extxyz=to_extxyz(start),
        temperature_K=(spec.temperatures_K or e.temperatures_K)[0], steps=n * i.md_interval_steps, n_frames=n,
        equil_steps=i.md_equil_steps, timestep_fs=e.timestep_fs, ensemble="npt" if npt else "nvt",
        pressure_GPa=(spec.pressures_GPa or e.pressures_GPa or (e.pressure_GPa,))[0] if npt else 0.0,
        engine="ase", seed=cfg.campaign.seed * 7919 + 7 + 13 * index, labeler=cfg.labeler.kind,
        labeler_settings=dict(cfg.labeler.settings), stop_min_distance_A=md_guard(view, ())["stop_min_distance_A"],
    )
    return TaskSpec(key, TaskKind.MD_LABEL, 0, -1, req)


def training(view: CampaignView, g: int, systems: tuple[str, ...]) -> tuple[list[TaskSpec], str]:
    """Generation g's member tasks on the exported ``systems``, and what to say about them."""
    cfg = view.cfg
    prev = {m["member"]: m["checkpoint"] for m in view.models(g - 1)} if g > 0 else {}
    cont = bool(prev) and cfg.training.continue_from_previous
    steps = cfg.training.numb_steps_continue if cont else cfg.training.numb_steps
    specs = []
    for m in range(cfg.training.ensemble_size):
        key = f"train:g{g}:m{m}"
        req = TrainRequest(
            task_key=key, workdir=view.task_dir(key), systems=tuple(systems), type_map=tuple(cfg.campaign.type_map),
            member=m, seed=cfg.campaign.seed * 1000 + g * 100 + m * 7 + 1,
            subset_fraction=cfg.training.subset_fraction, numb_steps=steps, deepmd=dict(cfg.training.deepmd),
            init_model=prev.get(m) if cont else None, continue_prefactors=cfg.training.continue_prefactors,
            deepmd_continue=dict(cfg.training.deepmd_continue), save_freq=cfg.training.save_freq,
        )
        specs.append(TaskSpec(key, TaskKind.TRAIN, g, g, req))
    return specs, f"{cfg.training.ensemble_size} members, {steps} steps{' (continued)' if cont else ''}"


def labels(view: CampaignView, r: int, rows) -> list[TaskSpec]:
    """Label tasks of round r for structure rows, ``labeler.batch_size`` structures each."""
    from remote_al.structures import from_extxyz, to_extxyz

    bs = view.cfg.labeler.batch_size
    out = []
    for i in range(0, len(rows), bs):
        chunk = rows[i: i + bs]
        ids = tuple(x["id"] for x in chunk)
        key = f"label:r{r}:{ids[0]}-{ids[-1]}"
        req = LabelRequest(
            task_key=key, workdir=view.task_dir(key), labeler=view.cfg.labeler.kind, structure_ids=ids,
            structures_extxyz=to_extxyz([from_extxyz(x["extxyz"])[0] for x in chunk]),
            settings=dict(view.cfg.labeler.settings),
        )
        out.append(TaskSpec(key, TaskKind.LABEL, r, r, req))
    return out


def uq(view: CampaignView, key: str, kind: TaskKind, round_: int, g: int, frames_extxyz: str,
       context: Context = Context(), oob_members: tuple[tuple[int, ...], ...] = (), features: str = "") -> TaskSpec:
    """Generation g's ensemble on frames (scoring, evaluation, out-of-bag, re-check);
    ``features``: also per-frame features for batch selection (``UQRequest.features``)."""
    req = UQRequest(task_key=key, workdir=view.task_dir(key), model_paths=view.model_paths(g),
                    frames_extxyz=frames_extxyz, confidence=view.cfg.selection.confidence, oob_members=oob_members,
                    features=features)
    return TaskSpec(key, kind, round_, g, req, context)


def calibration(view: CampaignView, g: int) -> tuple[list[TaskSpec], int]:
    """Generation g's evaluation on the held-out test frames and on its out-of-bag frames
    (driver.calibrate), those not created yet; and the number of test frames."""
    text, n = view.test_frames_extxyz()
    out = []
    if n and not view.has_task(f"eval:g{g}"):
        out.append(uq(view, f"eval:g{g}", TaskKind.EVAL, view.round, g, text))
    hashes, members = view.oob_frames(g)
    if hashes and not view.has_task(f"oob:g{g}"):
        frames = "".join(view.frame_extxyz(h) for h in hashes)
        out.append(uq(view, f"oob:g{g}", TaskKind.OOB, view.round, g, frames, oob_members=members))
    return out, n
