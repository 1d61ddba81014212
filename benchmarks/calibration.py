"""Do the calibrated 95 % bounds cover 95 % of the true errors on frames no pool ever saw?

    .venv/bin/python benchmarks/calibration.py                          # the demo campaign
    .venv/bin/python benchmarks/calibration.py --campaign examples/delithiation.toml --name delithiation
    .venv/bin/python benchmarks/calibration.py --workdir runs/calib-a4 --walkers 4 --attempt 4_x --what "..."

1. Runs the campaign (``remote-al run``) into ``--workdir``/<name> unless it already finished
   there (then its state is reused as it is).
2. Builds an independent test set: Langevin MD (Berendsen NPT where the campaign explores
   NPT) driven by the labeler itself (CHGNet) from each structure's starting structure at
   each of the campaign's exploration temperatures (``--walkers`` independent runs each:
   ``--equil`` steps, then ``--frames`` frames ``--interval`` fs apart), labeled on the way.
   These frames are never in any pool, training set or calibration set. Cached (the file
   name carries the parameters), each MD run as it finishes, so an interrupted build resumes.
3. For every generation of the campaign: the ensemble's widths and errors on that set; the
   coverage of the campaign's own calibration (``calibration/g<N>.json``, fitted on the
   campaign's held-out frames) for forces (per atom) and energies (per frame), per
   composition; the same for the alternatives fitted on the same held-out pairs (the raw
   half-width, the Student-t prediction interval sqrt(M+1), a Gaussian scale factor, a
   per-composition energy factor, and a factor fitted on half of the independent MD runs
   and scored on the other half: the in-distribution reference); the energy error per
   composition (mean and RMSE). Each coverage comes with 95 % intervals: Clopper-Pearson
   (pairs taken as independent) and a bootstrap over MD trajectories (frames of one run
   are correlated). The pairs are saved as ``<workdir>/<name>-g<N>-pairs.npz`` (the test
   set's and the campaign's calibration pairs, with compositions) for offline analysis.

Writes ``benchmarks/results/calibration[_NAME].json`` with a ``headline`` object
(``coverage_95`` per generation and composition, ``coverage_95_min``/``_max`` over
generations >= 1, forces and energies, their intervals, and the frames used). Earlier
``attempts`` in the file are kept; ``--attempt NAME`` adds this run to them (with its count
of cells inside / above / below the goal), ``--keep-headline`` without making it the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_var, "1")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_campaign(campaign: Path, workdir: Path, name: str) -> Path:
    """The campaign run into workdir/name (resumed or reused when already done)."""
    from driver.campaign import open_campaign_state

    text = campaign.read_text()
    cdir = (workdir / name).resolve()
    text = re.sub(r'(?m)^workdir\s*=.*$', f'workdir = "{cdir}"', text)
    if f'workdir = "{cdir}"' not in text:
        text = text.replace("[campaign]", f'[campaign]\nworkdir = "{cdir}"', 1)
    toml = workdir / f"{name}.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    toml.write_text(text)
    if (cdir / "state.sqlite").exists():
        st = open_campaign_state(cdir)
        done = st.get_meta("phase") == "done"
        st.db.close()
        if done:
            say(f"campaign {name} already finished in {cdir}")
            return cdir
    say(f"running campaign {name} ({campaign}) into {cdir}")
    t0 = time.time()
    exe = Path(sys.executable).with_name("remote-al")
    subprocess.run([str(exe), "run", str(toml)], check=True, cwd=ROOT)
    say(f"campaign {name} finished in {time.time() - t0:.0f} s")
    return cdir


def _labeler_md(job: dict) -> str:
    """Langevin MD driven by the labeler (CHGNet): benchmarks/al_efficiency.py's run, with
    each frame tagged with its group and composition."""
    import importlib.util

    from remote_al.structures import from_extxyz, to_extxyz

    spec = importlib.util.spec_from_file_location("al_efficiency", ROOT / "benchmarks" / "al_efficiency.py")
    al = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("al_efficiency", al)  # its dataclasses look their module up there
    spec.loader.exec_module(al)
    text = al._chgnet_md({"structure_extxyz": job["structure_extxyz"], "temperature_K": job["temperature_K"],
                          "seed": job["seed"], "equil_steps": job["equil"], "interval": job["interval"],
                          "n_frames": job["frames"], "ensemble": job.get("ensemble", "nvt"),
                          "pressure_GPa": job.get("pressure_GPa", 0.0)})
    frames = from_extxyz(text)
    for snap in frames:
        snap.info["group"] = job["group"]
        snap.info["composition"] = job["composition"]
        snap.info["trajectory"] = job["trajectory"]
    return to_extxyz(frames)


def independent_test_set(cfg, cache: Path, frames: int, equil: int, interval: int, workers: int,
                         walkers: int = 1):
    """Labeler-driven MD at the campaign's conditions (cached extxyz): ``walkers``
    independent runs (own seeds and velocities) per structure and temperature."""
    from concurrent.futures import ProcessPoolExecutor

    from driver.preflight import build_structure
    from remote_al.structures import from_extxyz, to_extxyz

    if cache.exists():
        out = from_extxyz(cache.read_text())
        say(f"independent test set: {len(out)} frames from {cache}")
        return out
    jobs = []
    for k, spec in enumerate(cfg.structures):
        temps = spec.temperatures_K or cfg.exploration.temperatures_K
        ensemble = spec.ensemble or cfg.exploration.ensemble  # the campaign's MD: NPT lets the cell follow
        pressure = (spec.pressures_GPa or cfg.exploration.pressures_GPa or (0.0,))[0]
        for t in temps:
            for w in range(walkers):
                jobs.append(dict(structure_extxyz=to_extxyz(build_structure(spec)), temperature_K=float(t),
                                 ensemble=ensemble, pressure_GPa=float(pressure),
                                 seed=1000 + 17 * k + int(t) + 100_003 * w, equil=equil, interval=interval,
                                 frames=frames, group=f"{spec.name}@{t:g}K", composition=spec.name,
                                 trajectory=f"{spec.name}@{t:g}K#{w}"))
    # each run's frames are kept as it finishes (``<cache>.parts/``): an interrupted build
    # resumes with the runs still missing
    parts = cache.parent / (cache.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    part = {j["trajectory"]: parts / (j["trajectory"].replace("@", "_").replace("#", "_w") + ".extxyz") for j in jobs}
    todo = [j for j in jobs if not part[j["trajectory"]].exists()]
    say(f"independent test set: {len(jobs)} labeler MD runs, {frames} frames each"
        + (f" ({len(jobs) - len(todo)} already done)" if len(todo) < len(jobs) else ""))
    t0 = time.time()
    with ProcessPoolExecutor(workers) as pool:
        for n, (job, text) in enumerate(zip(todo, pool.map(_labeler_md, todo)), 1):
            tmp = part[job["trajectory"]].with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(part[job["trajectory"]])
            say(f"  labeler MD {n}/{len(todo)} done ({job['trajectory']}, {time.time() - t0:.0f} s)")
    cache.write_text("".join(part[j["trajectory"]].read_text() for j in jobs))
    say(f"independent test set built in {time.time() - t0:.0f} s")
    return from_extxyz(cache.read_text())


def _trajectory(atoms) -> str:
    """The MD run a test frame came from (sets cached before walkers: one run per group)."""
    return str(atoms.info.get("trajectory", atoms.info["group"]))


def ensemble_pairs(model_paths, frames, confidence: float) -> dict:
    """Per-atom force widths/errors and per-frame energy widths/errors (eV/atom), with each
    pair's composition and MD trajectory."""
    from remote_al.calibration import atom_force_errors, atom_force_widths, frame_pairs
    from remote_al.ensemble import predict_ensemble
    from remote_al.uq import ensemble_ci_width

    energies, forces = predict_ensemble(model_paths, frames)
    natoms = np.array([len(a) for a in frames], dtype=float)
    e_ref = np.array([a.get_potential_energy() for a in frames]) / natoms
    e_mem = energies / natoms[None, :]
    out = {"aw": [], "ae": [], "acomp": [], "ew": ensemble_ci_width(e_mem, confidence, axis=0),
           "ee": e_mem.mean(axis=0) - e_ref, "ecomp": [a.info["composition"] for a in frames],
           "etraj": [_trajectory(a) for a in frames], "atraj": []}
    for a, f in zip(frames, forces):
        out["aw"].extend(atom_force_widths(f, confidence))
        out["ae"].extend(atom_force_errors(f.mean(axis=0), a.get_forces()))
        out["acomp"].extend([a.info["composition"]] * len(a))
        out["atraj"].extend([_trajectory(a)] * len(a))
    for k in ("aw", "ae", "acomp", "ecomp", "etraj", "atraj"):
        out[k] = np.array(out[k])
    out["fw"], out["fe"] = frame_pairs(out["aw"], out["ae"], natoms.astype(int))
    return out


def alternatives(eval_result: dict, n_members: int, confidence: float) -> dict[str, tuple[float, float]]:
    """(force scale, energy scale) of each method fitted on the campaign's held-out pairs."""
    from remote_al.calibration import gaussian_scale, prediction_interval_scale

    fw, fe = eval_result["atom_force_width"], eval_result["atom_force_error"]
    ew, ee = eval_result["energy_width"], eval_result["energy_error"]
    pi = prediction_interval_scale(n_members)
    out = {"seed_half_width": (0.5, 0.5), "prediction_interval": (pi, pi)}
    try:
        out["gaussian_scale"] = (gaussian_scale(fw, fe, confidence), gaussian_scale(ew, ee, confidence))
    except ValueError:
        pass
    return out


def coverage_interval(inside, clusters, rng, n_boot: int = 2000) -> dict:
    """A coverage with two 95 % intervals: Clopper-Pearson, which takes the pairs as
    independent, and a bootstrap over MD trajectories (frames of one run are correlated,
    so this one is the honest width)."""
    from scipy import stats

    inside, clusters = np.asarray(inside, dtype=bool), np.asarray(clusters)
    k, n = int(inside.sum()), int(inside.size)
    if n == 0:
        return {"coverage": None, "n": 0}
    cp = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    labels = np.unique(clusters)
    hits = np.array([inside[clusters == c].sum() for c in labels], dtype=float)
    sizes = np.array([(clusters == c).sum() for c in labels], dtype=float)
    pick = rng.integers(0, labels.size, (n_boot, labels.size))
    boot = hits[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    return {"coverage": k / n, "n": n, "inside": k, "trajectories": int(labels.size),
            "clopper_pearson_95": [float(cp.low), float(cp.high)],
            "trajectory_bootstrap_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def frame_pairs_of(res: dict) -> list[dict]:
    """Per frame of an ``evaluate_uncertainty`` result, its per-atom force and its energy
    (width, error) pairs and its atom count, each as the arrays :func:`pairs_of` gives."""
    cuts = np.cumsum([0, *res["natoms"]])
    return [{"aw": np.asarray(res["atom_force_width"][a:b], float), "ae": np.asarray(res["atom_force_error"][a:b], float),
             "ew": np.array([res["energy_width"][i]], float), "ee": np.array([res["energy_error"][i]], float),
             "natoms": np.array([b - a], int)} for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


def pairs_of(res: dict, keep=None) -> dict:
    """Per-atom force and per-frame energy (width, error) pairs of an ``evaluate_uncertainty``
    result (``keep``: a mask over its frames), with each kept frame's atom count."""
    frames = frame_pairs_of(res)
    kept = [f for f, k in zip(frames, [True] * len(frames) if keep is None else keep) if k]
    return {k: np.concatenate([f[k] for f in kept]) if kept else np.array([], int if k == "natoms" else float)
            for k in ("aw", "ae", "ew", "ee", "natoms")}


def calibration_pairs(st, g: int, composition_of, evaluate=None) -> dict:
    """The campaign's own calibration pairs of generation g (``eval:gN`` test frames and
    ``oob:gN`` out-of-bag frames), each with its composition. ``evaluate(request)``, when
    given, re-evaluates the stored request (other models, say) instead of reading the
    stored result."""
    from remote_al.structures import from_extxyz

    out = {k: [] for k in ("aw", "ae", "acomp", "ew", "ee", "ecomp")}
    for key in (f"eval:g{g}", f"oob:g{g}"):
        task = st.task(key)
        if task is None or task["result"] is None:
            continue
        req = json.loads(task["request"])
        res = json.loads(task["result"]) if evaluate is None else evaluate(req)
        if res.get("energy_error") is None or res.get("atom_force_width") is None:
            continue
        p = pairs_of(res)
        comps = [composition_of(a) for a in from_extxyz(req["frames_extxyz"])]
        for k in ("aw", "ae", "ew", "ee"):
            out[k] += list(p[k])
        out["ecomp"] += comps
        out["acomp"] += [c for c, n in zip(comps, p["natoms"]) for _ in range(n)]
    return {k: np.array(v) for k, v in out.items()}


def per_composition_energy(cal_pairs: dict, test: dict, comps, pooled_scale: float, level: float) -> dict:
    """Each composition its own conformal energy factor, from its own calibration pairs
    (the pooled factor where it has fewer than the level needs), scored on the test set."""
    from remote_al.calibration import conformal_scale, coverage, min_pairs

    out = {}
    for c in comps:
        mine = cal_pairs["ecomp"] == c
        n = int(mine.sum())
        try:
            scale, own = conformal_scale(cal_pairs["ew"][mine], cal_pairs["ee"][mine], level), True
        except ValueError:
            scale, own = pooled_scale, False
        em = test["ecomp"] == c
        out[c] = {"energy_scale": scale, "own_factor": own, "n_calibration_pairs": n,
                  "needs": min_pairs(level), "energies": coverage(test["ew"][em], test["ee"][em], scale),
                  "calibration_mean_error_meV_atom": float(1000 * cal_pairs["ee"][mine].mean()) if n else None}
    return out


def _halves(runs: list, max_splits: int, rng) -> list[tuple]:
    """Every half (``len(runs) // 2`` of them) of ``runs``, or a random ``max_splits`` of them
    where there are more (never listed then: 32 runs have 6e8)."""
    import itertools
    import math

    if math.comb(len(runs), len(runs) // 2) <= max_splits:
        return list(itertools.combinations(runs, len(runs) // 2))
    return [_random_half(runs, rng) for _ in range(max_splits)]


def _random_half(runs: list, rng) -> tuple:
    return tuple(rng.choice(runs, len(runs) // 2, replace=False))


def _window_stats(covs: list[float], runs: int) -> dict:
    """Mean, range and the shares of coverages inside / above / below the goal's 0.90-0.98."""
    x = np.asarray(covs)
    return {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()), "splits": len(x), "runs": runs,
            "inside": float(np.mean((x >= 0.90) & (x <= 0.98))), "above": float(np.mean(x > 0.98)),
            "below": float(np.mean(x < 0.90))}


def in_distribution_crossfit(test: dict, comps, level: float, max_splits: int = 256, seed: int = 0) -> dict:
    """What a calibration fitted on frames like the independent ones would give: per
    composition, forces (per atom) and energies (per frame), the conformal factor fitted on
    half of its MD runs and scored on the other half, over every such split. This is the
    best any calibration can do here (a factor of the composition's own, from frames
    exchangeable with the scored ones), so its spread is the noise of a per-composition
    coverage measured on this many runs, and ``inside``/``above``/``below`` (the share of
    splits in, over and under the goal's 0.90-0.98) say how often such a calibration lands
    a cell in the window. Its mean against the campaign's coverage shows the shift between
    the campaign's calibration frames and the independent ones. With more than
    ``max_splits`` splits (16 runs: 12870), a random ``max_splits`` of them."""
    from remote_al.calibration import conformal_scale

    rng = np.random.default_rng(seed)
    out = {}
    for c in comps:
        out[c] = {}
        for what, w, e, comp, traj in (("forces", "aw", "ae", "acomp", "atraj"),
                                       ("energies", "ew", "ee", "ecomp", "etraj")):
            mine = test[comp] == c
            runs = sorted(set(test[traj][mine]))
            covs = []
            for half in _halves(runs, max_splits, rng) if len(runs) >= 2 else ():
                fit = mine & np.isin(test[traj], half)
                score = mine & ~np.isin(test[traj], half)
                try:
                    q = conformal_scale(test[w][fit], test[e][fit], level)
                except ValueError:
                    continue
                covs.append(float(np.mean(np.abs(test[e][score]) <= q * test[w][score])))
            if covs:
                out[c][what] = _window_stats(covs, len(runs))
    return out


def in_distribution_pooled(test: dict, comps, level: float, max_splits: int = 256, seed: int = 0) -> dict:
    """The same reference with one factor for all compositions, as the product fits it:
    half of every composition's MD runs pooled to fit forces (per atom) and energies (per
    frame), each composition scored on its other half, over every such split (a random
    ``max_splits`` of them where there are more). What calibration frames exchangeable with
    the scored ones would give the campaign's pooled factor; against
    :func:`in_distribution_crossfit` it shows what one factor across compositions costs."""
    import itertools
    import math

    from remote_al.calibration import conformal_scale

    rng = np.random.default_rng(seed)
    out: dict = {c: {} for c in comps}
    for what, w, e, comp, traj in (("forces", "aw", "ae", "acomp", "atraj"),
                                   ("energies", "ew", "ee", "ecomp", "etraj")):
        runs = {c: sorted(set(test[traj][test[comp] == c])) for c in comps}
        if any(len(runs[c]) < 2 for c in comps):
            continue
        total = math.prod(math.comb(len(runs[c]), len(runs[c]) // 2) for c in comps)
        picks = (itertools.product(*(_halves(runs[c], max_splits, rng) for c in comps)) if total <= max_splits
                 else (tuple(_random_half(runs[c], rng) for c in comps) for _ in range(max_splits)))
        covs: dict = {c: [] for c in comps}
        for pick in picks:
            fit = np.isin(test[traj], [r for half in pick for r in half])
            try:
                q = conformal_scale(test[w][fit], test[e][fit], level)
            except ValueError:
                continue
            for c in comps:
                score = (test[comp] == c) & ~fit
                covs[c].append(float(np.mean(np.abs(test[e][score]) <= q * test[w][score])))
        for c in comps:
            if covs[c]:
                out[c][what] = _window_stats(covs[c], len(runs[c]))
    return out


def window_probability(n_cal: float | None, m: int, level: float = 0.95, lo: float = 0.90, hi: float = 0.98) -> float:
    """Probability that a cell of ``m`` independent frames lands inside ``lo``-``hi`` for an
    exact split-conformal bound fitted on ``n_cal`` exchangeable frames (the bound's coverage
    is Beta(k, n_cal + 1 - k) with k = ceil((n_cal + 1) level), the cell's count binomial
    given it), or, with ``n_cal`` None, for a bound whose coverage is exactly ``level``.
    An upper bound for real cells: frames of one MD run are correlated, and the campaign's
    calibration frames are not exchangeable with the labeler's MD."""
    from scipy.stats import betabinom, binom

    from remote_al.calibration import conformal_rank

    xs = np.arange(m + 1)
    inside = (xs >= lo * m - 1e-9) & (xs <= hi * m + 1e-9)
    if n_cal is None:
        return float(binom.pmf(xs[inside], m, level).sum())
    n = int(round(n_cal))
    k = conformal_rank(n, level)
    if k is None:  # too few frames for the level: the product falls back, nothing to say here
        return float("nan")
    return float(betabinom.pmf(xs[inside], m, k, n + 1 - k).sum())


def in_distribution_cells(per_gen: dict, key: str = "in_distribution_crossfit") -> dict:
    """Expected cells of generations >= 1 inside / above / below the window for the
    in-distribution calibration ``key`` (sum over cells of the share of its splits there):
    the reference the campaign's count is read against."""
    cells = {"inside": 0.0, "above": 0.0, "below": 0.0, "cells": 0}
    for g, d in per_gen.items():
        for comp in d.get(key, {}).values() if int(g) >= 1 else ():
            for stats in comp.values():
                for k in ("inside", "above", "below"):
                    cells[k] += stats[k]
                cells["cells"] += 1
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in cells.items()}


def goal_cells(coverage_95: dict) -> list[int]:
    """Per-composition cells (forces, energies) of generations >= 1: how many lie inside,
    above and below the goal's 0.90-0.98."""
    cells = [0, 0, 0]
    for g, comps in coverage_95.items():
        for comp, v in comps.items() if int(g) >= 1 else ():
            for x in v.values() if comp != "all" else ():
                cells[0 if 0.90 <= x <= 0.98 else 1 if x > 0.98 else 2] += 1
    return cells


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "linio2.toml"))
    ap.add_argument("--name", default="linio2")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "calibration"))
    ap.add_argument("--frames", type=int, default=20, help="test frames per labeler MD run")
    ap.add_argument("--walkers", type=int, default=1,
                    help="independent labeler MD runs per (structure, temperature)")
    ap.add_argument("--equil", type=int, default=100)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--attempt", default="", help="also record this run under attempts[ATTEMPT] (kept with earlier ones)")
    ap.add_argument("--what", default="", help="what this attempt changed (stored with it)")
    ap.add_argument("--keep-headline", action="store_true",
                    help="with --attempt: record this run under attempts only, keep the file's headline")
    ap.add_argument("--out", default="")
    ap.add_argument("--score-only", action="store_true",
                    help="score the generations the campaign in --workdir has now (it may still be running); "
                         "do not run or resume it")
    a = ap.parse_args(argv)
    if a.keep_headline and not a.attempt:
        ap.error("--keep-headline records the run as an attempt: give --attempt NAME")

    from driver.config import parse_config
    from driver.campaign import open_campaign_state
    from driver.preflight import build_structure
    from remote_al.calibration import coverage, read_calibration

    workdir = Path(a.workdir)
    if a.score_only:
        cdir = (workdir / a.name).resolve()
        if not (cdir / "state.sqlite").exists():
            ap.error(f"--score-only: no campaign in {cdir}")
        say(f"scoring the campaign in {cdir} as it stands (not run or resumed)")
    else:
        cdir = run_campaign(Path(a.campaign), workdir, a.name)
    st = open_campaign_state(cdir)
    cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=cdir)
    conf = cfg.selection.confidence
    npt = "-npt" if "npt" in {s.ensemble or cfg.exploration.ensemble for s in cfg.structures} else ""
    cache = workdir / (f"{a.name}-test{npt}.extxyz" if (a.frames, a.walkers, a.equil, a.interval) == (20, 1, 100, 10)
                       else f"{a.name}-test-f{a.frames}-w{a.walkers}-e{a.equil}-i{a.interval}{npt}.extxyz")
    frames = independent_test_set(cfg, cache, a.frames, a.equil, a.interval, a.workers, a.walkers)
    comps = sorted({f.info["composition"] for f in frames})
    formula = {build_structure(spec).get_chemical_formula(): spec.name for spec in cfg.structures}
    rng = np.random.default_rng(0)
    per_gen, headline_cov, intervals = {}, {}, {}
    for g in sorted({m["generation"] for m in st.models()}):
        models = [m["path"] for m in st.models(g)]
        cal = read_calibration(cdir, g)
        task = st.task(f"eval:g{g}")
        if cal is None or task is None:
            say(f"generation {g}: no calibration stored; skipped")
            continue
        p = ensemble_pairs(models, frames, conf)
        cp = calibration_pairs(st, g, lambda atoms: formula.get(atoms.get_chemical_formula(), "other"))
        np.savez_compressed(workdir / f"{a.name}-g{g}-pairs.npz", **{f"test_{k}": v for k, v in p.items()},
                            **{f"cal_{k}": v for k, v in cp.items()}, force_scale=cal.force_scale,
                            energy_scale=cal.energy_scale)
        methods = {"conformal (campaign)": (cal.force_scale, cal.energy_scale),
                   **alternatives(json.loads(task["result"]), len(models), conf)}
        rows = {}
        for method, (fs, es) in methods.items():
            row = {"force_scale": fs, "energy_scale": es,
                   "forces": coverage(p["aw"], p["ae"], fs), "energies": coverage(p["ew"], p["ee"], es)}
            for c in comps:
                am, em = p["acomp"] == c, p["ecomp"] == c
                row[c] = {"forces": coverage(p["aw"][am], p["ae"][am], fs),
                          "energies": coverage(p["ew"][em], p["ee"][em], es)}
            rows[method] = row
        energy = {c: {"mean_meV_atom": float(1000 * p["ee"][p["ecomp"] == c].mean()),
                      "rmse_meV_atom": float(1000 * np.sqrt(np.mean(p["ee"][p["ecomp"] == c] ** 2)))}
                  for c in comps}
        force_rmse = float(np.sqrt(np.mean(p["ae"] ** 2)))
        per_gen[g] = {"calibration": cal.to_dict(), "methods": rows, "energy_error": energy,
                      "energy_per_composition_factor": per_composition_energy(cp, p, comps, cal.energy_scale, conf),
                      "in_distribution_crossfit": (crossfit := in_distribution_crossfit(p, comps, conf)),
                      "in_distribution_pooled": in_distribution_pooled(p, comps, conf),
                      "energy_in_distribution_crossfit": {c: v["energies"] for c, v in crossfit.items()
                                                          if "energies" in v},
                      "frame_force_coverage": {  # a frame's largest per-atom error against its bound
                          "frame_scale": cal.frame_scale, "all": coverage(p["fw"], p["fe"], cal.frame_scale),
                          **{c: coverage(p["fw"][p["ecomp"] == c], p["fe"][p["ecomp"] == c], cal.frame_scale)
                             for c in comps},
                          "with_the_per_atom_scale": coverage(p["fw"], p["fe"], cal.force_scale)},
                      "energy_window_probability_exact_conformal": {  # the ceiling for these sizes
                          c: window_probability(cal.to_dict().get("effective_frames") or cal.to_dict().get("n_energy_pairs"),
                                                int(np.sum(p["ecomp"] == c)), conf) for c in comps},
                      "atom_force_error_p95": float(np.percentile(p["ae"], 95)),
                      "atom_force_error_rms_of_max_component": force_rmse,
                      "force_width_median": float(np.median(p["aw"]))}
        ours = rows["conformal (campaign)"]
        headline_cov[g] = {c: {"forces": ours[c]["forces"], "energies": ours[c]["energies"]} for c in comps}
        headline_cov[g]["all"] = {"forces": ours["forces"], "energies": ours["energies"]}
        intervals[g] = {}
        for c in [*comps, "all"]:
            am = p["acomp"] == c if c != "all" else np.ones(p["aw"].size, dtype=bool)
            em = p["ecomp"] == c if c != "all" else np.ones(p["ew"].size, dtype=bool)
            intervals[g][c] = {
                "forces": coverage_interval(p["ae"][am] <= cal.force_scale * p["aw"][am], p["atraj"][am], rng),
                "energies": coverage_interval(np.abs(p["ee"][em]) <= cal.energy_scale * p["ew"][em],
                                              p["etraj"][em], rng)}
        say(f"generation {g}: coverage forces {ours['forces']:.3f}, energies {ours['energies']:.3f} "
            f"(scales {cal.force_scale:.2f}/{cal.energy_scale:.2f}, {cal.n_frames} calibration frames); "
            f"seed half-width {rows['seed_half_width']['forces']:.3f}/{rows['seed_half_width']['energies']:.3f}; "
            + ", ".join(f"{c} E cov {ours[c]['energies']:.3f} err {energy[c]['mean_meV_atom']:+.1f} meV/atom"
                        for c in comps))
    later = [v for g, cov in headline_cov.items() if g >= 1 for c, d in cov.items() if c != "all"
             for v in d.values()]
    headline = {
        "coverage_95": {str(g): cov for g, cov in headline_cov.items()},
        "coverage_95_min": float(min(later)) if later else None,
        "coverage_95_max": float(max(later)) if later else None,
        "coverage_95_intervals": {str(g): v for g, v in intervals.items()},
        "frame_force_coverage_95": {str(g): d["frame_force_coverage"] for g, d in per_gen.items()},
        "frames_used": {
            "independent_test": len(frames),
            "independent_test_per_composition": {
                c: {"frames": int(np.sum(p["ecomp"] == c)), "atoms": int(np.sum(p["acomp"] == c)),
                    "trajectories": int(np.unique(p["etraj"][p["ecomp"] == c]).size)} for c in comps},
            "calibration_per_generation": {str(g): d["calibration"]["n_frames"] for g, d in per_gen.items()}},
        "goal": "every generation >= 1 between 0.90 and 0.98, forces and energies",
        "cells_g1_2_inside_above_below": goal_cells({str(g): c for g, c in headline_cov.items()}),
        "reference_cells_g1_2_in_distribution": in_distribution_cells(per_gen),
        "reference_cells_g1_2_in_distribution_pooled": in_distribution_cells(per_gen, "in_distribution_pooled"),
    }
    test_set = {"frames": len(frames), "groups": sorted({f.info["group"] for f in frames}),
                "equil_steps": a.equil, "interval_fs": a.interval, "frames_per_run": a.frames,
                "walkers": a.walkers}
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / (
        "calibration.json" if a.name == "linio2" else f"calibration_{a.name}.json")
    old = json.loads(out.read_text()) if out.exists() else {}
    attempts = dict(old.get("attempts", {}))
    if a.attempt:
        attempts[a.attempt] = {"what": a.what, "campaign_dir": str(cdir), "headline": headline, "test_set": test_set,
                               "generations": {str(g): d for g, d in per_gen.items()},
                               "cells_g1_2_inside_above_below": goal_cells(headline["coverage_95"])}
    if a.keep_headline and old.get("headline"):
        payload = {**old, "attempts": attempts}
    else:
        payload = {"benchmark": "calibration", "campaign": str(a.campaign), "attempt": a.attempt or None,
                   "headline": headline, "test_set": test_set,
                   "generations": {str(g): d for g, d in per_gen.items()}, "attempts": attempts}
    if "reproduce" in old:
        payload["reproduce"] = old["reproduce"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    say(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
