"""``dpgen simplify`` (the real DP-GEN 0.14) against remote-al's selection on the same labeled
pool (issue #22, the second half of ``benchmarks/vs_dpgen.py``).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/vs_dpgen_simplify.py     # resumable
    .venv/bin/python benchmarks/vs_dpgen_simplify.py --report        # scores what is finished
    .venv/bin/python benchmarks/vs_dpgen_simplify.py --quick --seeds 0   # smoke run, minutes

``dpgen simplify`` is DP-GEN's active learning on a pool that is already labeled: it trains an
ensemble, computes its force deviation on the frames not yet picked (``dp model-devi``), picks
``iter_pick_number`` of them uniformly at random inside the trust window, and trains again.
``benchmarks/al_efficiency.py`` does the same with remote-al's rules on one labeled pool, so
both run on the same data here:

* the pool: al_efficiency's stage-0 pool (``--al-workdir``, default ``runs/al_efficiency``),
  ``--pool campaign`` (default: the MD frames at the campaign's temperatures, 320 frames, the
  pool of al_efficiency's ``campaign_pool`` headline) or ``all``; its CHGNet labels;
* the initial data: al_efficiency's 20 initial frames (DP-GEN's ``init_data_sys``);
* the budget: ``init_pick_number`` = ``iter_pick_number`` = al_efficiency's k (20), and its
  rounds (6) as the last iteration (see ``run_seed``): DP-GEN's iteration i trains on the initial data and the
  frames picked in iterations 0..i-1, so iteration i holds 20 + 20 i labels, as
  al_efficiency's round i does (20 to 140). DP-GEN's first pick (iteration 0) is random by
  design, its later picks are random inside the window;
* the training: al_efficiency's (4 models, the campaign's loss prefactors, 800 steps from
  scratch, then 200 steps continued from the previous model: DP-GEN's ``training_reuse_*``
  keys, old and new frames in proportion, as in ``make_inputs.py``); what is DP-GEN's own:
  every model trains on all the data (al_efficiency: a 0.9 subset per member) with seeds
  DP-GEN draws (seeded here per benchmark seed, so a run is reproducible);
* the trust window: ``make_inputs.DEFAULT_TRUST``, the 50th and 95th percentiles of the
  round-0 ensemble's max force deviation on this very pool (al_efficiency's round 0);
* the score: every iteration's 4 models, ensemble mean on al_efficiency's test set, force
  RMSE of the in-distribution group (CHGNet MD at the campaign's temperatures), the metric of
  al_efficiency's headline, and the other groups.

The comparison: DP-GEN simplify's mean final in-distribution force RMSE is the target; the
labels each of al_efficiency's rules (mean curve over its seeds) needs to reach it, divided
by the labels simplify needed (first crossing of its mean curve), is ``labels_ratio``
(``default``: al_efficiency's default rule). Results: ``benchmarks/results/vs_dpgen_simplify.json``
(``headline``, per-iteration table per seed with DP-GEN's candidate/accurate/failed counts).
``vs_dpgen.py --report`` copies this headline into vs_dpgen.json as ``simplify``.

``--control``: the same program with its window open (``OPEN_WINDOW``: every frame is a
candidate, so each pick is uniformly random) into ``<workdir>/<pool>-open-window``: DP-GEN's
training with random picks. It separates what simplify's window does from what its training
does (every model on all the data, its continued-training settings), which al_efficiency's
curves do not share. The headline's ``open_window_control`` holds it, with
``open_vs_window_labels_ratio``: the labels the open-window (random) run needs to reach the
window run's final RMSE, over the labels the window run needed (above 1: the window saves
labels; null: random never gets there within its budget).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_var, "1")

# after the sys.path entry above: the helpers vs_dpgen.py already has
from benchmarks.vs_dpgen import _frames_in, _load, rmse, x_at_target

PEER = ROOT / "benchmarks" / "peers" / "dpgen"
DPGEN_VENV = PEER / ".venv"
# the control: a window that every frame is inside, so simplify picks uniformly at random
OPEN_WINDOW = (1.0e-6, 1.0e9)
QUICK = {"steps_initial": 20, "steps_continue": 10, "rounds": 2, "k": 10, "trust": (0.01, 1000.0)}
# DP-GEN draws its model seeds with `random` and its picks with numpy's global generator and
# never seeds them: seeded here so that a benchmark seed is one reproducible run
SEEDED_DPGEN = ("import random, sys, numpy; s = int(sys.argv[1]); random.seed(s); numpy.random.seed(s); "
                "sys.argv = ['dpgen'] + sys.argv[2:]; from dpgen.main import main; main()")


def _al():
    return _load("al_efficiency_benchmark", ROOT / "benchmarks" / "al_efficiency.py")


def _peer():
    return _load("dpgen_make_inputs", PEER / "make_inputs.py")


# ------------------------------------------------------------------ inputs
def to_multisystems(frames, type_map):
    """Labeled ASE frames (energy, forces, stress) as one dpdata MultiSystems."""
    import dpdata

    ms = dpdata.MultiSystems(type_map=list(type_map))
    for a in frames:
        ms.append(dpdata.LabeledSystem(a, fmt="ase/structure"))
    return ms


def write_data(stage0: Path, out: Path, pool: str, type_map) -> dict:
    """``init/`` (al_efficiency's initial data) and ``pool/`` (its labeled pool, ``pool``:
    'campaign' or 'all') as deepmd/npy systems; returns their sizes."""
    from remote_al.structures import from_extxyz

    al = _al()
    s = al.Settings()
    frames = {name: from_extxyz((stage0 / f"{name}.extxyz").read_text()) for name in ("initial", "pool")}
    temps = {float(t) for t in s.test_temperatures_K}
    picked = [a for a in frames["pool"]
              if pool == "all" or (a.info["source"] == "md" and float(a.info["temperature_K"]) in temps)]
    if not picked:
        raise SystemExit(f"no frame of {stage0 / 'pool.extxyz'} is in the {pool!r} pool")
    sizes = {}
    for name, fr in (("init", frames["initial"]), ("pool", picked)):
        if not (out / name).exists():
            to_multisystems(fr, type_map).to_deepmd_npy(str(out / f"{name}.tmp"))
            os.replace(out / f"{name}.tmp", out / name)
        sizes[name] = len(fr)
    return sizes


def make_param(out: Path, *, k: int, rounds: int, steps_initial: int, steps_continue: int,
               trust: tuple[float, float], campaign: Path) -> dict:
    """DP-GEN's simplify ``param.json`` (a dict) over ``out``/init and ``out``/pool."""
    al, peer = _al(), _peer()
    cfg = peer._cfg(campaign)
    if dict(cfg.training.deepmd).get("loss") != al.LOSS:
        raise SystemExit(f"{campaign}: its [training.deepmd.loss] is not al_efficiency's LOSS; both must train alike")
    training = cfg.training.model_copy(update={"numb_steps": steps_initial, "numb_steps_continue": steps_continue})
    cfg = cfg.model_copy(update={"training": training})
    train_inp, train_keys = peer.training_param(cfg)
    init_sys = sorted(p.parent.relative_to(out).as_posix() for p in (out / "init").glob("*/type.raw"))
    lo, hi = float(trust[0]), float(trust[1])
    if not 0 < lo < hi:
        raise ValueError(f"trust window needs 0 < lo < hi, got ({lo}, {hi})")
    return {
        "_remote_al": {"made_by": "benchmarks/vs_dpgen_simplify.py (issue #22)",
                       "pool": "al_efficiency stage 0", "trust_window_eV_A": [lo, hi]},
        "type_map": list(al.TYPE_MAP),
        "mass_map": "auto",
        "init_data_prefix": str(out),
        "init_data_sys": init_sys,
        "sys_configs": [],
        "numb_models": int(cfg.training.ensemble_size),
        **train_keys,
        "default_training_param": train_inp,
        "labeled": True,
        "pick_data": str(out / "pool"),
        "init_pick_number": int(k),
        "iter_pick_number": int(k),
        "model_devi_f_trust_lo": lo,
        "model_devi_f_trust_hi": hi,
        "fp_style": "none",
        "fp_task_max": int(k),
        "fp_task_min": 1,
    }


def make_machine(venv: Path = DPGEN_VENV, cores: int = 2) -> dict:
    """train as in vs_dpgen's machine.json; model_devi is ``dp model-devi`` on the pool (one
    task); fp never runs (the pool is labeled)."""
    peer = _peer()
    m = peer.make_machine(venv=venv, labeler_json=Path("unused"), cores=cores, tasks={"model_devi": 1, "fp": 1})
    m["model_devi"]["command"] = f"{Path(venv).resolve() / 'bin' / 'dp'} --pt"
    m["fp"]["command"] = "true"
    return m


# ------------------------------------------------------------------ run
def trained_through(record: Path) -> tuple[int, int]:
    """(iteration, task) of the last finished step in DP-GEN's record.dpgen ((0, -1): none)."""
    last = (0, -1)
    if record.exists():
        for line in record.read_text().split("\n"):
            if line.strip():
                a, b = line.split()[:2]
                last = (int(a), int(b))
    return last


def run_seed(sdir: Path, seed: int, rounds: int, venv: Path = DPGEN_VENV) -> dict:
    """``dpgen simplify`` in ``sdir`` (resumes from its record.dpgen) until iteration
    ``rounds`` is trained; ``done.json`` marks a finished run.

    DP-GEN 0.14 has no setting for the last iteration that its argument check accepts
    (``stop_iter`` is read by the code but refused by the strict check), so simplify runs
    until its pool is used up; the benchmark stops it, as a user would, once iteration
    ``rounds`` has trained (record.dpgen at task 02, post_train). DP-GEN also stops with an
    error when no frame is left in its window but some are above it: that ends the run too."""
    done = sdir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.time()
    stopped = False
    with open(sdir / "simplify.out", "a") as log:
        proc = subprocess.Popen([str(venv / "bin" / "python"), "-c", SEEDED_DPGEN, str(seed), "simplify",
                                 "param.json", "machine.json"], cwd=sdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if trained_through(sdir / "record.dpgen") >= (rounds, 2):
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
                    stopped = True
                    break
                time.sleep(2.0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            raise
    rc = proc.returncode
    text = (sdir / "simplify.out").read_text(errors="replace")
    if not stopped and rc != 0 and "no candidate but still have failed cases" not in text:
        raise SystemExit(f"dpgen simplify failed in {sdir} (exit {rc}); see {sdir / 'simplify.out'}")
    info = {"seed": seed, "rc": rc, "wall_s_last_invocation": time.time() - t0,
            "stopped_by": (f"iteration {rounds} trained" if stopped else "pool used up" if rc == 0
                           else "no candidate in the trust window, some above it (DP-GEN's own stop)")}
    done.write_text(json.dumps(info, indent=1))
    return info


def dpgen_counts(log_text: str) -> list[dict]:
    """Per post_model_devi in dpgen.log: candidate/accurate/failed frame counts, in order."""
    rows, cur = [], {}
    for key, n in re.findall(r"(candidate|accurate|failed)\s*:\s*(\d+) in", log_text):
        cur[key] = int(n)
        if key == "failed":
            rows.append(cur)
            cur = {}
    return rows


def iterations(sdir: Path, n_init: int) -> list[dict]:
    """Every trained iteration: its models and the labels it trained on."""
    out, labels = [], n_init
    counts = dpgen_counts((sdir / "dpgen.log").read_text(errors="replace")) if (sdir / "dpgen.log").exists() else []
    i = 0
    while True:
        it = sdir / f"iter.{i:06d}"
        models = sorted((it / "00.train").glob("graph.*.pth"))
        if len(models) == 0:
            break
        row = {"iteration": i, "labels": labels, "models": [str(m) for m in models]}
        if i >= 1 and i - 1 < len(counts):
            row["window_counts_of_its_models"] = counts[i - 1]
        out.append(row)
        picked = _frames_in([it / "01.model_devi" / "data.picked"])
        row["picked_after"] = picked
        labels += picked
        i += 1
    return out


def score(models, test, split) -> dict:
    """Ensemble-mean errors on the test frames by split ('in-distribution', 'out-of-distribution', 'all')."""
    from remote_al.ensemble import predict_ensemble

    energies, forces = predict_ensemble(list(models), test)
    out = {}
    for g in ("in-distribution", "out-of-distribution", "all"):
        idx = np.arange(len(test)) if g == "all" else np.flatnonzero(split == g)
        f, e = rmse(energies[:, idx], [forces[i] for i in idx], [test[i] for i in idx])
        out[g] = {"force_rmse_eV_A": f, "energy_rmse_meV_atom": e, "n_frames": int(idx.size)}
    return out


def scored(sdir: Path, n_init: int, test, split) -> list[dict]:
    cache = sdir / "scores.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    rows = iterations(sdir, n_init)
    for r in rows:
        key = f"iter{r['iteration']}"
        if key not in known:
            known[key] = score(r["models"], test, split)
            cache.write_text(json.dumps(known, indent=1))
        r["test_by_group"] = known[key]
        r["force_rmse_eV_A"] = known[key]["in-distribution"]["force_rmse_eV_A"]
    return rows


# ------------------------------------------------------------------ comparison
def mean_curve(per_seed: list[list[dict]]) -> tuple[list[float], list[float]]:
    """Mean labels and mean in-distribution force RMSE per iteration over the seeds. A run that
    DP-GEN ended early (nothing left in its window) keeps its last models: its labels and RMSE
    are carried to the later iterations, as a user would keep that potential."""
    n = max(len(r) for r in per_seed)
    rows = [r + [r[-1]] * (n - len(r)) for r in per_seed]
    xs = [float(np.mean([r[i]["labels"] for r in rows])) for i in range(n)]
    ys = [float(np.mean([r[i]["force_rmse_eV_A"] for r in rows])) for i in range(n)]
    return xs, ys


def compare(curve: tuple[list[float], list[float]], al_summary: dict, default: str) -> dict:
    """labels_ratio of every al_efficiency rule against simplify's final mean RMSE."""
    xs, ys = curve
    target = ys[-1]
    simplify_labels = x_at_target(xs, ys, target)
    metric = "force_rmse_eV_A in-distribution mean"
    rules = {}
    for rule, c in al_summary["curves"].items():
        need = x_at_target(c["n_labels"], c[metric], target)
        rules[rule] = {"labels_needed": need, "labels_ratio": None if need is None else need / simplify_labels,
                       "final_force_rmse_eV_A": c[metric][-1], "final_labels": c["n_labels"][-1],
                       "seeds": len(c.get("seeds", []))}
    return {"target_force_rmse_eV_A": target, "simplify_labels_needed": simplify_labels,
            "labels_ratio": rules.get(default, {}).get("labels_ratio"), "default": default,
            "labels_ratio_random": rules.get("random", {}).get("labels_ratio"),
            "labels_ratio_oracle": rules.get("oracle", {}).get("labels_ratio"), "rules": rules}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--al-workdir", default=str(ROOT / "runs" / "al_efficiency"),
                    help="al_efficiency's workdir (its stage0/ is the pool, initial data and test set)")
    ap.add_argument("--al-results", default=str(ROOT / "benchmarks" / "results" / "al_efficiency.json"),
                    help="al_efficiency's results (the curves simplify is compared with)")
    ap.add_argument("--pool", choices=("campaign", "all"), default="campaign")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workdir", help="default runs/vs_dpgen_simplify[_quick]")
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "linio2.toml"),
                    help="the campaign whose DeePMD input and ensemble size both programs use")
    ap.add_argument("--report", action="store_true", help="score what is finished, run nothing")
    ap.add_argument("--control", action="store_true",
                    help="run the open-window control instead (every frame a candidate: DP-GEN's picks at random, "
                         "its training unchanged) into <workdir>/<pool>-open-window")
    ap.add_argument("--quick", action="store_true", help="smoke configuration (2 iterations, tiny training, open window)")
    ap.add_argument("--out", help="default benchmarks/results/vs_dpgen_simplify.json (<workdir>/... with --quick)")
    a = ap.parse_args(argv)

    from remote_al.structures import from_extxyz

    al = _al()
    s = al.Settings()
    stage0 = Path(a.al_workdir) / "stage0"
    if not (stage0 / "pool.extxyz").exists():
        raise SystemExit(f"{stage0}: no al_efficiency stage 0 here; run benchmarks/al_efficiency.py first "
                         "(or pass --al-workdir)")
    if not (DPGEN_VENV / "bin" / "dpgen").exists():
        raise SystemExit(f"DP-GEN is not installed in {DPGEN_VENV}: run benchmarks/peers/dpgen/setup.sh")
    knobs = dict(QUICK) if a.quick else {"steps_initial": s.steps_initial, "steps_continue": s.steps_continue,
                                         "rounds": s.rounds, "k": s.k, "trust": _peer().DEFAULT_TRUST}
    workdir = Path(a.workdir or ROOT / "runs" / ("vs_dpgen_simplify_quick" if a.quick else "vs_dpgen_simplify"))
    base = workdir / a.pool  # the data, and the trust-window run's seeds
    base.mkdir(parents=True, exist_ok=True)
    sizes = write_data(stage0, base / "data", a.pool, al.TYPE_MAP)
    test = from_extxyz((stage0 / "test.extxyz").read_text())
    temps = {float(t) for t in s.test_temperatures_K}
    split = np.array(["in-distribution" if a_.info["source"] == "md" and float(a_.info["temperature_K"]) in temps
                      else "out-of-distribution" for a_ in test])

    def arm(name: str, trust, run: bool) -> tuple[dict, dict]:
        """One configuration of simplify (its own folder under ``workdir``): runs the seeds
        (unless ``run`` is false) and scores every finished one found."""
        base_arm = workdir / name
        per_seed, runs = {}, {}
        for seed in a.seeds:
            sdir = base_arm / f"s{seed}"
            if run:
                sdir.mkdir(parents=True, exist_ok=True)
                param = make_param(base / "data", k=knobs["k"], rounds=knobs["rounds"], steps_initial=knobs["steps_initial"],
                                   steps_continue=knobs["steps_continue"], trust=trust, campaign=Path(a.campaign))
                for fname, obj in (("param.json", param), ("machine.json", make_machine())):
                    if not (sdir / fname).exists():  # a resumed run keeps what it started with
                        (sdir / fname).write_text(json.dumps(obj, indent=1))
                print(f"{name} seed {seed}: dpgen simplify in {sdir}", flush=True)
                runs[seed] = run_seed(sdir, seed, knobs["rounds"])
            elif (sdir / "done.json").exists():
                runs[seed] = json.loads((sdir / "done.json").read_text())
            if seed in runs:
                per_seed[seed] = scored(sdir, sizes["init"], test, split)
                last = per_seed[seed][-1]
                print(f"{name} seed {seed}: {len(per_seed[seed])} iterations, {last['labels']} labels, "
                      f"in-distribution force RMSE {last['force_rmse_eV_A']:.3f} eV/A", flush=True)
        return per_seed, runs

    def summary(per_seed: dict, trust) -> dict:
        out = {"seeds": sorted(per_seed), "trust_window_eV_A": list(trust)}
        if per_seed:
            curve = mean_curve(list(per_seed.values()))
            finals = [r[-1]["force_rmse_eV_A"] for r in per_seed.values()]
            out.update({"simplify_curve": {"labels": curve[0], "force_rmse_eV_A in-distribution mean": curve[1]},
                        "simplify_final_labels": [r[-1]["labels"] for r in per_seed.values()],
                        "simplify_final_force_rmse": {"mean": float(np.mean(finals)),
                                                      "sd": float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
                                                      "per_seed": finals},
                        **compare(curve, al_results["pools"][a.pool], al_results["headline"]["default"])})
        return out

    al_results = json.loads(Path(a.al_results).read_text())
    window_name, open_name = a.pool, f"{a.pool}-open-window"
    window = arm(window_name, knobs["trust"], not a.report and not a.control)
    control = arm(open_name, OPEN_WINDOW, not a.report and a.control)
    headline = {**summary(window[0], knobs["trust"]), "pool": a.pool, "pool_frames": sizes["pool"],
                "initial_frames": sizes["init"], "k": knobs["k"], "rounds": knobs["rounds"]}
    ctl = summary(control[0], OPEN_WINDOW)
    if control[0]:
        # the same program, training and picks at random among all frames: DP-GEN's own random baseline
        ctl["open_vs_window_labels_ratio"] = (compare(mean_curve(list(window[0].values())), {"curves": {"open": {
            "n_labels": ctl["simplify_curve"]["labels"],
            "force_rmse_eV_A in-distribution mean": ctl["simplify_curve"]["force_rmse_eV_A in-distribution mean"]}}},
            "open")["labels_ratio"] if window[0] else None)
    headline["open_window_control"] = {k: ctl.get(k) for k in (
        "seeds", "trust_window_eV_A", "simplify_curve", "simplify_final_labels", "simplify_final_force_rmse",
        "labels_ratio", "labels_ratio_random", "target_force_rmse_eV_A", "open_vs_window_labels_ratio")}
    payload = {"benchmark": "vs_dpgen_simplify", "issue": 22, "quick": a.quick, "al_workdir": str(a.al_workdir),
               "headline": headline, "runs": {"window": window[1], "open_window": control[1]},
               "per_seed": {name: {str(k): [{kk: v for kk, v in r.items() if kk != "models"} for r in rows]
                                   for k, rows in per_seed.items()}
                            for name, per_seed in (("window", window[0]), ("open_window", control[0]))}}
    out = Path(a.out or (workdir / "vs_dpgen_simplify.json" if a.quick else ROOT / "benchmarks" / "results" / "vs_dpgen_simplify.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
