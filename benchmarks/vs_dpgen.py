"""remote-al against the real DP-GEN 0.14 on the same work (issue #22): labels and wall time
to the same accuracy.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/vs_dpgen.py            # resumable
    .venv/bin/python benchmarks/vs_dpgen.py --seeds 0 1 2 --only dpgen
    .venv/bin/python benchmarks/vs_dpgen.py --report          # scores what is finished, runs nothing
    nice -n 10 .venv/bin/python benchmarks/vs_dpgen.py --quick --seeds 0   # smoke run, a few minutes

For every seed (seed-major, so that an interruption leaves paired results) it runs

* ours: ``examples/linio2.toml`` with ``campaign.seed`` = seed (``benchmarks/calibration.py``'s
  ``run_campaign``, as ``benchmarks/campaign_selection.py`` runs it) into
  ``--workdir``/``ours-s<seed>``; a finished campaign is reused, a stopped one resumes;
* DP-GEN: ``benchmarks/peers/dpgen/make_inputs.py`` on the same campaign file (same seed:
  the same initial frames and labels) into ``--workdir``/``dpgen-s<seed>``, then
  ``dpgen run param.json machine.json`` there (DP-GEN resumes by itself from its
  ``record.dpgen``); ``done.json`` marks a finished run. The same rounds: the campaign's
  ``max_rounds`` is DP-GEN's number of ``model_devi_jobs``, and both train once more after
  the last round (ours: generations 0..R, DP-GEN: iterations 0..R).

Every generation of ours and every iteration of DP-GEN (both 4-model ensembles) is scored
with the ensemble mean on one independent test set (``--test``: CHGNet's own MD at the
campaign's conditions, ``benchmarks/calibration.py``'s ``independent_test_set``, the set
``campaign_selection.py`` scores on): force RMSE over components (eV/A) and energy RMSE
(meV/atom). Scores are cached in ``--workdir``/``scores.json`` (a model file is never
rewritten once made). Per iteration it also records

* ``labels``: the labels bought before that iteration's training started (so the labels it
  could have used). Ours: ``ok`` rows of the ``labels`` table created before the
  generation's dataset, training and held-out frames alike (the held-out frames are labels
  remote-al pays for); DP-GEN: the initial data plus the labeled frames of the earlier
  iterations' ``02.fp`` (``data.*``). ``train_labels``: the frames the iteration trained on
  (ours: the generation's dataset; DP-GEN: the same as ``labels``).
* ``wall_s``: from the start of the run to the moment the iteration's models were all
  there. Ours: the campaign's ``started`` meta (before its relaxation and initial labels) to
  the last member's ``models.created``; DP-GEN: the time make_inputs.py took (relaxation
  and initial labels, which the campaign does inside its run) plus the first timestamp of
  ``dpgen.log`` to the ``post_train`` line of that iteration (fallback: the frozen models'
  modification times). A resumed run counts its pause. DP-GEN rows also carry ``steps_s``
  (its run_train, run_model_devi and run_fp steps from dpgen.log): each includes
  dpdispatcher's polling, which DP-GEN 0.14 leaves at dpdispatcher's default (a job is
  checked every 30 s; ``run_submission()`` without ``check_interval``, not settable from
  machine.json), so a step ends up to 30 s after its last task.

The headline (``benchmarks/results/vs_dpgen.json``; the plot beside it) pairs the two
programs per seed where both finished: DP-GEN's final force RMSE is the target;
``labels_ratio`` is the labels ours needs to reach it (linear interpolation along its
per-generation curve, first crossing) over the labels DP-GEN needed (the same along
DP-GEN's curve: its final labels, or fewer if an earlier iteration was already as good),
the mean over seeds, null unless every seed's campaign reached the target (the per-seed
values are there too); ``wall_ratio`` the same for wall time; ``labels_ratio_train`` with
training frames only.

``dpgen simplify`` against our selection on one labeled pool is ``benchmarks/vs_dpgen_simplify.py``;
its headline, where it has been run, is copied into this one as ``simplify``.

``--quick``: a smoke configuration (1 round, 20/10 training steps, 60 MD steps, DP-GEN's
trust window opened wide so that its fp step runs) into ``runs/vs_dpgen_quick``, results
written there too, never into ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_var, "1")

PEER = ROOT / "benchmarks" / "peers" / "dpgen"
DPGEN_VENV = PEER / ".venv"
DEFAULT_TEST = ROOT / "runs" / "calib-a9" / "linio2-test-f20-w4-e100-i10.extxyz"
PROGRAMS = ("ours", "dpgen")
# copied from benchmarks/results/vs_dpgen_simplify.json (dpgen simplify against our rules on one pool)
SIMPLIFY_KEYS = ("seeds", "pool", "labels_ratio", "labels_ratio_random", "labels_ratio_oracle",
                 "target_force_rmse_eV_A", "simplify_labels_needed", "simplify_final_force_rmse", "default")

# --quick: every knob small; DP-GEN's window opened so that every explored frame is a candidate
QUICK_TOML = {"max_rounds": "1", "numb_steps": "20", "numb_steps_continue": "10", "steps": "60"}
QUICK_TRUST = (0.01, 1000.0)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return sys.modules[name]


def _benchmarks():
    """(calibration, campaign_selection) modules, loaded as campaign_selection.py loads calibration."""
    cs = _load("campaign_selection_benchmark", ROOT / "benchmarks" / "campaign_selection.py")
    return cs._calibration_benchmark(), cs


# ------------------------------------------------------------------ pure helpers
def set_toml_keys(text: str, values: dict) -> str:
    """``key = value`` lines replaced (the first line starting with the key, any table)."""
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text, count=1)
        if not n:
            raise ValueError(f"no line '{key} = ...' in the campaign file")
    return text


def x_at_target(xs, ys, target: float):
    """The x at which the curve (xs, ys), points in order, first comes down to ``target``:
    linear interpolation on the segment where it crosses; the first x when the first point
    is already there; None when it never does."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
    if not pts:
        return None
    if pts[0][1] <= target:
        return pts[0][0]
    for (x0, y0), (x1, y1) in pairwise(pts):
        if y1 <= target:
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return None


def _ratio(num, den):
    return None if num is None or den in (None, 0) else float(num) / float(den)


def _stats(values) -> dict:
    v = np.array([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "per_seed": list(values)}


def paired(ours: list[dict], dpgen: list[dict]) -> dict:
    """One seed's comparison: DP-GEN's final force RMSE as the target, then labels and wall
    time each program needs to reach it (rows: per-iteration dicts with ``labels``,
    ``train_labels``, ``wall_s``, ``force_rmse``)."""
    target = dpgen[-1]["force_rmse"]
    out = {"target_force_rmse": target}
    for key in ("labels", "wall_s", "train_labels"):
        mine = x_at_target([r[key] for r in ours], [r["force_rmse"] for r in ours], target)
        theirs = x_at_target([r[key] for r in dpgen], [r["force_rmse"] for r in dpgen], target)
        out[key] = {"ours": mine, "dpgen": theirs, "ratio": _ratio(mine, theirs)}
    return out


def headline(tables: dict, seeds) -> dict:
    """``tables``: {"ours": {seed: {"finished": bool, "rows": [...]}}, "dpgen": {...}}."""
    both = [s for s in seeds
            if all(tables.get(p, {}).get(s, {}).get("finished") and tables[p][s]["rows"] for p in PROGRAMS)]
    pairs = {s: paired(tables["ours"][s]["rows"], tables["dpgen"][s]["rows"]) for s in both}

    def mean_ratio(key):
        r = [pairs[s][key]["ratio"] for s in both]
        return (float(np.mean(r)) if r and all(x is not None for x in r) else None), r

    head = {"seeds": both, "seeds_requested": list(seeds)}
    for name, key in (("labels_ratio", "labels"), ("wall_ratio", "wall_s"), ("labels_ratio_train", "train_labels")):
        head[name], head[f"{name}_per_seed"] = mean_ratio(key)
    head["target_force_rmse_per_seed"] = [pairs[s]["target_force_rmse"] for s in both]
    head["reached_per_seed"] = [pairs[s]["labels"]["ours"] is not None for s in both]
    for metric in ("force_rmse", "energy_rmse"):
        head[f"final_{metric}"] = {p: _stats([tables[p][s]["rows"][-1][metric] for s in both]) for p in PROGRAMS}
    head["final_labels"] = {p: _stats([tables[p][s]["rows"][-1]["labels"] for s in both]) for p in PROGRAMS}
    head["final_wall_s"] = {p: _stats([tables[p][s]["rows"][-1]["wall_s"] for s in both]) for p in PROGRAMS}
    head["pairs"] = {str(s): pairs[s] for s in both}
    head["per_iteration"] = {p: {f"s{s}": tables.get(p, {}).get(s, {}).get("rows", []) for s in seeds}
                             for p in PROGRAMS}
    head["units"] = {"force_rmse": "eV/A", "energy_rmse": "meV/atom", "wall_s": "s"}
    return head


def rmse(energies, forces, frames) -> tuple[float, float]:
    """(force RMSE over components, eV/A; energy RMSE, meV/atom) of the ensemble mean."""
    natoms = np.array([len(a) for a in frames])
    e_err = energies.mean(axis=0) / natoms - np.array([a.get_potential_energy() for a in frames]) / natoms
    f_err = np.concatenate([(f.mean(axis=0) - a.get_forces()).ravel() for f, a in zip(forces, frames)])
    return float(np.sqrt(np.mean(f_err ** 2))), float(np.sqrt(np.mean(e_err ** 2)) * 1000)


# ------------------------------------------------------------------ ours
def ours_iterations(cdir: Path, ensemble_size: int) -> tuple[bool, list[dict]]:
    """(finished, rows without scores): every complete generation of the campaign in ``cdir``."""
    from driver.campaign import open_campaign_state

    st = open_campaign_state(cdir)
    try:
        finished = st.get_meta("phase") == "done"
        started = float(st.get_meta("started", "0") or 0)
        datasets = {r["generation"]: r for r in st.db.execute("SELECT generation, n_frames, created FROM datasets")}
        rows = []
        for g in sorted({m["generation"] for m in st.models()}):
            models = st.models(g)
            if len(models) < ensemble_size:
                continue
            ds = datasets.get(g)
            cutoff = ds["created"] if ds else max(m["created"] for m in models)
            labels = st.db.execute("SELECT COUNT(*) FROM labels WHERE status='ok' AND created <= ?",
                                   (cutoff,)).fetchone()[0]
            rows.append({"iteration": g, "models": [m["path"] for m in models], "labels": int(labels),
                         "train_labels": int(ds["n_frames"]) if ds else None,
                         "wall_s": max(m["created"] for m in models) - started if started else None})
        return finished, rows
    finally:
        st.db.close()


def run_ours(cal, cs, base_text: str, seed: int, workdir: Path) -> Path:
    name = f"ours-s{seed}"
    src = workdir / f"{name}-source.toml"
    src.write_text(cs.campaign_text(base_text, seed, {}))
    return cal.run_campaign(src, workdir, name)


# ------------------------------------------------------------------ DP-GEN
def _frames_in(paths) -> int:
    """Frames in deepmd/npy systems under ``paths`` (each set.*/energy.npy)."""
    n = 0
    for p in paths:
        for f in sorted(Path(p).rglob("energy.npy")):
            n += int(np.load(f).shape[0])
    return n


def _log_times(log: Path) -> tuple[float | None, dict]:
    """(first timestamp of dpgen.log, {(iteration, step): time its line was logged}); step
    j's line is logged when DP-GEN starts it (01 run_train, 02 post_train, 04 run_model_devi,
    05 post_model_devi, 07 run_fp, 08 post_fp)."""
    if not log.exists():
        return None, {}
    first, marks = None, {}
    pat = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+) - ")
    for line in log.read_text(errors="replace").splitlines():
        m = pat.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        first = t if first is None else first
        it = re.search(r"iter\.(\d+) task (\d\d)", line)
        if it:
            marks.setdefault((int(it.group(1)), int(it.group(2))), t)
    return first, marks


def step_seconds(marks: dict, i: int) -> dict:
    """DP-GEN's run steps of iteration ``i`` (seconds, dpdispatcher's polling included)."""
    out = {}
    for name, j in (("train", 1), ("model_devi", 4), ("fp", 7)):
        if (i, j) in marks and (i, j + 1) in marks:
            out[name] = marks[(i, j + 1)] - marks[(i, j)]
    return out


def dpgen_models(it_dir: Path, numb_models: int) -> list[str] | None:
    found = []
    for k in range(numb_models):
        cands = sorted((it_dir / "00.train" / f"{k:03d}").glob("frozen_model.*"))
        if not cands:
            return None
        found.append(str(cands[0]))
    return found


def dpgen_iterations(ddir: Path) -> tuple[bool, list[dict]]:
    """(finished, rows without scores): every iteration of the DP-GEN run in ``ddir`` whose
    models are all frozen and which DP-GEN recorded past post_train."""
    param = json.loads((ddir / "param.json").read_text())
    numb = int(param["numb_models"])
    record = [tuple(map(int, ln.split())) for ln in (ddir / "record.dpgen").read_text().split("\n") if ln.strip()] \
        if (ddir / "record.dpgen").exists() else []
    last = record[-1] if record else (0, -1)
    prep = json.loads((ddir / "make_inputs.json").read_text()) if (ddir / "make_inputs.json").exists() else {}
    t0, marks = _log_times(ddir / "dpgen.log")
    init = _frames_in([ddir / s for s in param["init_data_sys"]])
    rows, labels = [], init
    i = 0
    while (ddir / f"iter.{i:06d}").exists():
        it_dir = ddir / f"iter.{i:06d}"
        models = dpgen_models(it_dir, numb)
        if models is None or (i, 2) > last:
            break
        ready = marks.get((i, 2)) or max(os.path.getmtime(m) for m in models)
        rows.append({"iteration": i, "models": models, "labels": labels, "train_labels": labels,
                     "fp_tasks": len(list((it_dir / "02.fp").glob("task.*"))), "steps_s": step_seconds(marks, i),
                     "wall_s": (ready - t0 + float(prep.get("wall_s", 0.0))) if t0 else None})
        labels += _frames_in(sorted((it_dir / "02.fp").glob("data.*")))
        i += 1
    finished = (ddir / "done.json").exists()
    return finished, rows


def run_dpgen(campaign_toml: Path, seed: int, workdir: Path, trust=None) -> Path:
    cal = sys.modules.get("calibration_benchmark")
    say = cal.say if cal else print
    ddir = (workdir / f"dpgen-s{seed}").resolve()
    if (ddir / "done.json").exists():
        say(f"DP-GEN dpgen-s{seed} already finished in {ddir}")
        return ddir
    ddir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", DP_INTRA_OP_PARALLELISM_THREADS="1",
               DP_INTER_OP_PARALLELISM_THREADS="1", PATH=f"{DPGEN_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if not (ddir / "make_inputs.json").exists():
        src = ddir / "campaign.toml"
        src.write_text(campaign_toml.read_text())
        cmd = [sys.executable, str(PEER / "make_inputs.py"), str(src), "--out", str(ddir), "--venv", str(DPGEN_VENV)]
        if trust:
            cmd += ["--trust", str(trust[0]), str(trust[1])]
        say(f"DP-GEN inputs for seed {seed}: {' '.join(cmd[1:])}")
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        (ddir / "make_inputs.json").write_text(json.dumps({"wall_s": time.time() - t0, "cmd": cmd}, indent=1))
    rounds = len(json.loads((ddir / "param.json").read_text())["model_devi_jobs"])
    say(f"running DP-GEN in {ddir} ({rounds} model_devi jobs)")
    t0 = time.time()
    with open(ddir / "dpgen.stdout", "a") as log:
        subprocess.run([str(DPGEN_VENV / "bin" / "dpgen"), "run", "param.json", "machine.json"],
                       check=True, cwd=ddir, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, rows = dpgen_iterations(ddir)
    if not rows or rows[-1]["iteration"] != rounds:
        raise RuntimeError(f"dpgen run returned but iteration {rounds}'s models are not all there in {ddir} "
                           f"(see {ddir}/dpgen.log and dpgen.stdout)")
    (ddir / "done.json").write_text(json.dumps({"finished": time.time(), "iterations": rounds + 1}, indent=1))
    say(f"DP-GEN dpgen-s{seed} finished in {time.time() - t0:.0f} s")
    return ddir


# ------------------------------------------------------------------ scoring and output
def score_rows(program: str, seed: int, rows: list[dict], frames, cache: dict, cache_path: Path, say) -> None:
    """Adds force_rmse/energy_rmse to each row (cached by program, seed, iteration, models)."""
    from remote_al.ensemble import predict_ensemble

    for r in rows:
        key = f"{program}-s{seed}/{r['iteration']}"
        sig = [[m, os.path.getmtime(m)] for m in r["models"]]
        hit = cache.get(key)
        if not hit or hit["models"] != sig:
            energies, forces = predict_ensemble(r["models"], frames)
            f, e = rmse(energies, forces, frames)
            cache[key] = hit = {"models": sig, "force_rmse": f, "energy_rmse": e}
            cache_path.write_text(json.dumps(cache, indent=1))
            say(f"{key}: force RMSE {f:.4f} eV/A, energy {e:.1f} meV/atom, {r['labels']} labels, "
                f"{(r['wall_s'] or 0) / 60:.1f} min")
        r["force_rmse"], r["energy_rmse"] = hit["force_rmse"], hit["energy_rmse"]
        r["n_models"] = len(r["models"])


def plot(tables: dict, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"ours": "tab:blue", "dpgen": "tab:orange"}
    names = {"ours": "remote-al", "dpgen": "DP-GEN 0.14"}
    marks = "osD^v<>p"
    for p in PROGRAMS:
        for k, s in enumerate(seeds):
            rows = tables.get(p, {}).get(s, {}).get("rows") or []
            if not rows:
                continue
            y = [r["force_rmse"] for r in rows]
            kw = {"color": colors[p], "marker": marks[k % len(marks)], "label": f"{names[p]} seed {s}",
                  "ls": "-" if tables[p][s]["finished"] else ":"}
            axes[0].plot([r["labels"] for r in rows], y, **kw)
            axes[1].plot([(r["wall_s"] or np.nan) / 60 for r in rows], y, **kw)
    axes[0].set_xlabel("labels (CHGNet calls, held-out frames included)")
    axes[1].set_xlabel("wall time (min)")
    axes[0].set_ylabel("test force RMSE (eV/Å)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("independent test set (CHGNet MD at the campaign's conditions)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "linio2.toml"))
    ap.add_argument("--workdir", help="default runs/vs_dpgen (runs/vs_dpgen_quick with --quick)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", choices=PROGRAMS, help="run this program only (both are scored where their runs exist)")
    ap.add_argument("--report", action="store_true", help="score what is finished, run nothing")
    ap.add_argument("--quick", action="store_true", help="smoke configuration (1 round, tiny training and MD)")
    ap.add_argument("--trust", nargs=2, type=float, metavar=("LO", "HI"),
                    help="DP-GEN's trust window, passed to make_inputs.py (default: its DEFAULT_TRUST)")
    ap.add_argument("--test", default=str(DEFAULT_TEST), help="the independent test set (built and cached when missing)")
    ap.add_argument("--out", help="default benchmarks/results/vs_dpgen.json (<workdir>/vs_dpgen.json with --quick)")
    a = ap.parse_args(argv)

    from driver.config import parse_config

    cal, cs = _benchmarks()
    workdir = Path(a.workdir or ROOT / "runs" / ("vs_dpgen_quick" if a.quick else "vs_dpgen")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(a.out or (workdir / "vs_dpgen.json" if a.quick else ROOT / "benchmarks" / "results" / "vs_dpgen.json"))
    base = Path(a.campaign).read_text()
    if a.quick:
        base = set_toml_keys(base, QUICK_TOML)
    cfg = parse_config(__import__("tomllib").loads(base), base_dir=Path(a.campaign).parent)
    frames = cal.independent_test_set(cfg, Path(a.test), 20, 100, 10, 2, walkers=4)
    trust = tuple(a.trust) if a.trust else (QUICK_TRUST if a.quick else None)
    programs = [a.only] if a.only else list(PROGRAMS)
    cache_path = workdir / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    tables: dict = {p: {} for p in PROGRAMS}
    t0 = time.time()

    def collect(program: str, seed: int) -> None:
        if program == "ours":
            cdir = workdir / f"ours-s{seed}"
            if not (cdir / "state.sqlite").exists():
                return
            finished, rows = ours_iterations(cdir, cfg.training.ensemble_size)
        else:
            ddir = workdir / f"dpgen-s{seed}"
            if not (ddir / "param.json").exists():
                return
            finished, rows = dpgen_iterations(ddir)
        score_rows(program, seed, rows, frames, cache, cache_path, cal.say)
        for r in rows:
            r.pop("models")
        tables[program][seed] = {"finished": finished, "rows": rows}

    def write() -> dict:
        payload = {"benchmark": "vs_dpgen", "issue": 22, "campaign": str(a.campaign), "quick": a.quick,
                   "test_set": str(a.test), "test_frames": len(frames),
                   "headline": headline(tables, a.seeds),
                   "finished": {p: {f"s{s}": v["finished"] for s, v in tables[p].items()} for p in PROGRAMS},
                   "wall_s_this_invocation": time.time() - t0}
        simplify = out.with_name("vs_dpgen_simplify.json")  # benchmarks/vs_dpgen_simplify.py's headline
        if simplify.exists():
            sh = json.loads(simplify.read_text())["headline"]
            payload["headline"]["simplify"] = {k: sh.get(k) for k in SIMPLIFY_KEYS}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        plot(tables, a.seeds, out.with_suffix(".png"))
        return payload

    campaign_file = workdir / "campaign.toml"  # the campaign both programs run (seed set per run)
    campaign_file.write_text(base)
    payload = None
    for seed in a.seeds:
        for program in PROGRAMS:
            if not a.report and program in programs:
                if program == "ours":
                    run_ours(cal, cs, base, seed, workdir)
                else:
                    seeded = workdir / f"dpgen-s{seed}-source.toml"
                    seeded.write_text(cs.campaign_text(base, seed, {}))
                    run_dpgen(seeded, seed, workdir, trust)
            collect(program, seed)
        payload = write()
    h = payload["headline"]
    print(json.dumps({k: h[k] for k in h if k not in ("per_iteration", "pairs")}, indent=2))
    cal.say(f"wrote {out} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
