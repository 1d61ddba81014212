"""Does a campaign stop by itself, with its held-out error at the target it was given?

    .venv/bin/python benchmarks/convergence.py        # examples/convergence.toml, resumable

Runs ``remote-al run examples/convergence.toml`` (the demo's systems, a calibrated threshold
from ``selection.target_force_error``, ``selection.converged_share``, a wall-time budget as
the backstop) into ``--workdir``/convergence; running the script again resumes the
campaign where it stopped (the state is durable). When it has stopped, the final
generation is scored on an independent test set: MD driven by the labeler at the
campaign's conditions (``benchmarks/calibration.py``'s set, cached), per-atom error = the
largest force component error of the ensemble mean.

Writes ``benchmarks/results/convergence.json`` with ``headline``: ``stopped_by`` (the stop
kind and reason), ``labels``, ``target_force_error``, ``heldout_force_rmse`` (over
components), ``heldout_force_p95`` (per atom), ``wall_s``. Goal: stopped by convergence,
not a budget, and ``heldout_force_p95`` at most the target.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _calibration_benchmark():
    spec = importlib.util.spec_from_file_location("calibration_benchmark", ROOT / "benchmarks" / "calibration.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("calibration_benchmark", mod)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "convergence.toml"))
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "convergence"))
    ap.add_argument("--frames", type=int, default=20, help="independent test frames per (structure, temperature)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convergence.json"))
    a = ap.parse_args(argv)

    from driver.config import parse_config
    from driver.campaign import open_campaign_state

    cal = _calibration_benchmark()
    workdir = Path(a.workdir)
    cdir = cal.run_campaign(Path(a.campaign), workdir, "convergence")
    st = open_campaign_state(cdir)
    cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=cdir)
    frames = cal.independent_test_set(cfg, workdir / "convergence-test.extxyz", a.frames, 100, 10, 2)
    gens = sorted({m["generation"] for m in st.models()})
    g = gens[-1]
    p = cal.ensemble_pairs([m["path"] for m in st.models(g)], frames, cfg.selection.confidence)
    from remote_al.ensemble import predict_ensemble

    _, forces = predict_ensemble([m["path"] for m in st.models(g)], frames)
    comp_err = np.concatenate([(f.mean(axis=0) - a_.get_forces()).ravel() for f, a_ in zip(forces, frames)])
    started = float(st.get_meta("started", "0") or 0)
    last = st.db.execute("SELECT MAX(ts) FROM events").fetchone()[0]
    labels = st.db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
    rounds = st.metrics("round")
    payload = {
        "benchmark": "convergence",
        "campaign": str(a.campaign),
        "headline": {
            "stopped_by": {"kind": st.get_meta("stop_kind"), "reason": st.get_meta("stop_reason")},
            "labels": int(labels),
            "target_force_error": cfg.selection.target_force_error,
            "heldout_force_rmse": float(np.sqrt(np.mean(comp_err ** 2))),
            "heldout_force_p95": float(np.percentile(p["ae"], 95)),
            "wall_s": float(last - started) if started and last else None,
            "goal": "stopped_by.kind == 'converged' and heldout_force_p95 <= target_force_error",
        },
        "generation": g,
        "test_frames": len(frames),
        "rounds": {str(r): {k: m.get(k) for k in ("confident_share", "force_threshold", "n_selected",
                                                  "force_width_median")} for r, m in sorted(rounds.items())},
        "generations": {str(k): v for k, v in st.metrics("generation").items()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["headline"], indent=2))
    return payload


if __name__ == "__main__":
    main()
