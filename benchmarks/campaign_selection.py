"""Does a batch selection rule pay on whole campaigns? The demo campaign, rule against rule.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/campaign_selection.py             # resumable
    .venv/bin/python benchmarks/campaign_selection.py --rules random topk --seeds 0 1 2
    .venv/bin/python benchmarks/campaign_selection.py --report                      # trains nothing

For every (seed, rule) it runs ``examples/linio2.toml`` (two label rounds of 12 labels,
4-member ensembles, CHGNet labels) with ``campaign.seed`` = seed and the rule's
``[selection]`` settings, into ``--workdir``/``<rule>-s<seed>``; seed-major, so that an
interrupted run leaves paired comparisons, and a finished campaign is reused (a stopped
one resumes: the state is durable). Every rule gets the same label budget: the campaign's
rounds and cap.

Each campaign's final ensemble is scored on one independent test set: MD driven by the
labeler at the campaign's conditions (``benchmarks/calibration.py``'s set, cached:
``--test``), never in any pool or training set. Force RMSE over components and energy
RMSE per atom of the ensemble mean, overall, per composition and per temperature.

Writes ``benchmarks/results/campaign_selection.json`` with ``headline``: per rule the
mean and standard deviation over seeds of the held-out force and energy RMSE, the labels
used, the seeds done, ``force_rmse_vs_random`` (the rule's mean / random's, over the seeds
both have) and ``paired_force_ratio_vs_random`` (seed by seed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from convergence import _calibration_benchmark  # noqa: E402  (benchmarks/calibration.py, loaded once)

# rule -> [selection] settings; the async demo selects exploration by exploration, so every
# rule but the default shares the cap over the conditions (without it `random` would label
# the first exploration's frames and nothing else)
RULES = {
    "topk": {},
    "topk_quota": {"quota": "per_condition"},
    "random": {"strategy": "random", "quota": "per_condition"},
    "kmeans": {"strategy": "kmeans", "quota": "per_condition", "features": "descriptor"},
    "fps": {"strategy": "fps", "quota": "per_condition", "features": "descriptor"},
}


def campaign_text(base: str, seed: int, settings: dict) -> str:
    """The example's text with ``campaign.seed`` and the rule's ``[selection]`` keys set."""
    text = re.sub(r"(?m)^seed\s*=.*$", f"seed = {seed}", base, count=1)
    if f"seed = {seed}" not in text:
        text = text.replace("[campaign]", f"[campaign]\nseed = {seed}", 1)
    for key, value in settings.items():
        line = f'{key} = "{value}"'
        if re.search(rf"(?m)^{key}\s*=", text):
            text = re.sub(rf"(?m)^{key}\s*=.*$", line, text)
        else:
            text = text.replace("[selection]", f"[selection]\n{line}", 1)
    return text


def score(cdir: Path, frames, groups) -> dict:
    """The final generation's ensemble mean on the test frames."""
    from driver.campaign import open_campaign_state
    from remote_al.ensemble import predict_ensemble
    from remote_al.structures import composition_label

    st = open_campaign_state(cdir)
    g = max(m["generation"] for m in st.models())
    paths = [m["path"] for m in st.models(g)]
    energies, forces = predict_ensemble(paths, frames)
    labels = st.db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
    train_labels = st.db.execute("SELECT COUNT(*) FROM labels l JOIN structures s ON s.id = l.structure_id "
                                 "WHERE l.status='ok' AND s.split='train'").fetchone()[0]
    started = float(st.get_meta("started", "0") or 0)
    last = st.db.execute("SELECT MAX(ts) FROM events").fetchone()[0]
    st.db.close()
    natoms = np.array([len(a) for a in frames])
    e_err = energies.mean(axis=0) / natoms - np.array([a.get_potential_energy() for a in frames]) / natoms
    f_err = [f.mean(axis=0) - a.get_forces() for f, a in zip(forces, frames)]

    def block(mask) -> dict:
        idx = np.flatnonzero(mask)
        comp = np.concatenate([f_err[i].ravel() for i in idx])
        return {"force_rmse_eV_A": float(np.sqrt(np.mean(comp ** 2))),
                "energy_rmse_meV_atom": float(np.sqrt(np.mean(e_err[idx] ** 2)) * 1000),
                "energy_bias_meV_atom": float(np.mean(e_err[idx]) * 1000), "n_frames": int(idx.size)}

    comps = np.array([composition_label(a) for a in frames])
    out = {"generation": g, "labels": int(labels), "train_labels": int(train_labels),
           "wall_s": float(last - started) if started and last else None, "all": block(np.ones(len(frames), bool))}
    out["by_composition"] = {c: block(comps == c) for c in sorted(set(comps))}
    out["by_group"] = {k: block(groups == k) for k in sorted(set(groups))}
    return out


def summarize(records: dict, rules, seeds) -> dict:
    head: dict = {"rules": {}, "seeds_requested": list(seeds)}
    rnd = None
    for rule in rules:
        done = [records[f"{rule}-s{s}"] for s in seeds if f"{rule}-s{s}" in records]
        if not done:
            continue
        f = np.array([r["all"]["force_rmse_eV_A"] for r in done])
        e = np.array([r["all"]["energy_rmse_meV_atom"] for r in done])
        head["rules"][rule] = {
            "seeds": [s for s in seeds if f"{rule}-s{s}" in records],
            "heldout_force_rmse_mean": float(f.mean()), "heldout_force_rmse_sd": float(f.std(ddof=1)) if f.size > 1 else None,
            "heldout_energy_rmse_mean": float(e.mean()), "heldout_energy_rmse_sd": float(e.std(ddof=1)) if e.size > 1 else None,
            "labels": sorted({r["labels"] for r in done}), "train_labels": sorted({r["train_labels"] for r in done}),
        }
        if rule == "random":
            rnd = head["rules"][rule]
    if rnd:  # on the seeds both have: the rule's mean over them / random's mean over them
        for rule, v in head["rules"].items():
            common = [s for s in v["seeds"] if s in rnd["seeds"]]
            for what, key in (("force", "force_rmse_eV_A"), ("energy", "energy_rmse_meV_atom")):
                mine = np.mean([records[f"{rule}-s{s}"]["all"][key] for s in common]) if common else np.nan
                theirs = np.mean([records[f"random-s{s}"]["all"][key] for s in common]) if common else np.nan
                v[f"{what}_rmse_vs_random"] = float(mine / theirs) if common else None
    # paired per seed: the rule's force RMSE / random's on the same seed
    for rule, v in head["rules"].items():
        pairs = [records[f"{rule}-s{s}"]["all"]["force_rmse_eV_A"] / records[f"random-s{s}"]["all"]["force_rmse_eV_A"]
                 for s in seeds if f"{rule}-s{s}" in records and f"random-s{s}" in records]
        v["paired_force_ratio_vs_random"] = pairs
    return head


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "linio2.toml"))
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "campaign_selection"))
    ap.add_argument("--rules", nargs="+", default=["random", "topk", "kmeans", "topk_quota"], choices=list(RULES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--test", default=str(ROOT / "runs" / "calib-a9" / "linio2-test-f20-w4-e100-i10.extxyz"),
                    help="the independent test set (built and cached here when missing)")
    ap.add_argument("--report", action="store_true", help="score the finished campaigns only, run nothing")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "campaign_selection.json"))
    a = ap.parse_args(argv)

    from driver.config import parse_config

    cal = _calibration_benchmark()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(a.campaign).read_text()
    cfg = parse_config(__import__("tomllib").loads(base), base_dir=Path(a.campaign).parent)
    frames = cal.independent_test_set(cfg, Path(a.test), 20, 100, 10, 2, walkers=4)
    groups = np.array([f"{a_.info.get('group', '?')}" for a_ in frames])
    scores_path = workdir / "scores.json"
    records = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    t0 = time.time()
    for seed in a.seeds:
        for rule in a.rules:
            name = f"{rule}-s{seed}"
            cdir = workdir / name
            if not a.report:
                src = workdir / f"{name}-source.toml"
                src.write_text(campaign_text(base, seed, RULES[rule]))
                cal.run_campaign(src, workdir, name)
            if name not in records and (cdir / "state.sqlite").exists():
                from driver.campaign import open_campaign_state

                st = open_campaign_state(cdir)
                done = st.get_meta("phase") == "done"
                st.db.close()
                if done:
                    records[name] = score(cdir, frames, groups)
                    scores_path.write_text(json.dumps(records, indent=1))
                    cal.say(f"{name}: force RMSE {records[name]['all']['force_rmse_eV_A']:.4f} eV/A, "
                            f"energy {records[name]['all']['energy_rmse_meV_atom']:.1f} meV/atom, "
                            f"{records[name]['labels']} labels")
            payload = {"benchmark": "campaign_selection", "campaign": str(a.campaign),
                       "headline": summarize(records, a.rules, a.seeds), "rules": {r: RULES[r] for r in a.rules},
                       "test_frames": len(frames), "records": records,
                       "wall_s_this_invocation": time.time() - t0}
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["headline"], indent=2))
    return payload


if __name__ == "__main__":
    main()
