"""Asynchronous steering against a synchronous train -> explore -> label iteration (as
DP-GEN runs it), on the same simulated workload through the real local engine.

    python benchmarks/steering_makespan.py [--unit 0.3] [--lookahead 3,1] [--out benchmarks/results/steering_makespan.json]

The registered functions are replaced by ``remote_al.simulated`` (same contracts, sleeps
of DFT 30, training 60, MD 10, UQ 1 units per task; one unit = ``--unit`` seconds), with
2 GPU and 4 CPU slots. Both runs use the same campaign (2 compositions x 2 temperatures,
16 labels per round, 4 ensemble members, 4 rounds); only ``steering.mode`` (and, for
async, ``steering.lookahead_rounds``) differs. The backend's workers are started and
warm before each run (``LocalBackend.warm_up``), as on an endpoint that is up.
Makespan runs from the first submission to the last result; utilization of a pool is its
busy slot-time (submission to recorded result) over slots x makespan; work/capacity is
the nominal work (durations x tasks) over slots x makespan; the lower bound is each
pool's work / slots.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from driver.backends.local import LocalBackend  # noqa: E402
from driver.config import parse_config  # noqa: E402
from driver.campaign import Campaign  # noqa: E402
from remote_al.simulated import DEFAULT_DURATIONS, FUNCTIONS  # noqa: E402

SLOTS = {"gpu": 2, "cpu": 4}
LOOKAHEAD = "3,1"  # headline: explore every remaining round ahead; then the default


def campaign(mode: str, root: Path, lookahead: int = 1, retrain_after: int = 0) -> dict:
    return {
        "campaign": {"name": f"steer-{mode}", "type_map": ["Li", "Ni", "O"], "seed": 1, "max_rounds": 4,
                     "workdir": str(root / mode)},
        "backend": {"gpu_slots": SLOTS["gpu"], "cpu_slots": SLOTS["cpu"], "workload": "simulated",
                    "retry_backoff_s": 0.1},
        "structures": [{"name": "LiNiO2"}, {"name": "Li0.75NiO2", "li_content": 0.75}],
        "initial": {"n_per_structure": 4},
        "exploration": {"temperatures_K": [600.0, 900.0], "n_frames": 8, "guard": False},
        "selection": {"force_threshold": 0.05, "force_upper": 10.0, "max_per_round": 16},
        "labeler": {"batch_size": 1},
        "training": {"ensemble_size": 4},
        "test": {"n_initial_per_structure": 0, "n_per_round": 0},
        "steering": {"mode": mode, "retrain_after": retrain_after or 16, "max_sweeps_per_generation": 2,
                     "lookahead_rounds": lookahead},
    }


def measure(mode: str, root: Path, unit: float, lookahead: int = 1, retrain_after: int = 0) -> dict:
    cfg = parse_config(campaign(mode, root, lookahead, retrain_after), base_dir=root)
    backend = LocalBackend(cfg.directory / "engine", SLOTS["gpu"], SLOTS["cpu"], functions=FUNCTIONS)
    backend.warm_up()  # endpoints are started once and stay up: workers running, imports done
    Campaign(cfg, backend, say=lambda m: None, status_every_s=5).run()
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    rows = db.execute("SELECT function, pool, submitted, finished FROM tasks WHERE status='done'").fetchall()
    t0 = min(r[2] for r in rows)
    t1 = max(r[3] for r in rows)
    makespan = t1 - t0
    busy = {p: sum(r[3] - r[2] for r in rows if r[1] == p) for p in SLOTS}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    n_labels = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    work = {  # nominal work in seconds per pool
        "gpu": unit * (DEFAULT_DURATIONS["md"] * counts.get("md", 0) + DEFAULT_DURATIONS["uq"] * counts.get("uq", 0)
                       + DEFAULT_DURATIONS["train"] * counts.get("train", 0)),
        "cpu": unit * DEFAULT_DURATIONS["label"] * n_labels,
    }
    return {
        "mode": mode,
        "makespan_s": makespan,
        "tasks": counts,
        "labels": n_labels,
        "generations": db.execute("SELECT COUNT(DISTINCT generation) FROM models").fetchone()[0],
        "utilization": {p: busy[p] / (SLOTS[p] * makespan) for p in SLOTS},
        "lower_bound_s": {p: work[p] / SLOTS[p] for p in SLOTS},
        # per task, in units from the first submission: created, submitted, finished
        "timeline_units": [
            [k, f, p, round((c - t0) / unit, 1), round((s - t0) / unit, 1), round((e - t0) / unit, 1)]
            for k, f, p, c, s, e in db.execute(
                "SELECT key, function, pool, created, submitted, finished FROM tasks WHERE status='done' ORDER BY submitted"
            )
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit", type=float, default=0.1, help="seconds per workload unit")
    ap.add_argument("--lookahead", default=str(LOOKAHEAD),
                    help="async: steering.lookahead_rounds; a comma-separated list runs async once per value, "
                         "the first is the headline (default %(default)s)")
    ap.add_argument("--retrain-after", default="16",
                    help="async: steering.retrain_after (new labels that start the next generation; the per-round "
                         "cap is 16); a comma-separated list runs async once per value with the first lookahead")
    ap.add_argument("--out", default=str(HERE / "results" / "steering_makespan.json"))
    a = ap.parse_args()
    lookaheads = [int(x) for x in a.lookahead.split(",")]
    retrains = [int(x) for x in a.retrain_after.split(",")]
    os.environ["REMOTE_AL_SIM_UNIT_S"] = str(a.unit)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        res["sync"] = measure("sync", Path(tmp), a.unit)
        for la in lookaheads:
            res[f"async-lookahead{la}"] = measure("async", Path(tmp) / f"la{la}", a.unit, la, retrains[0])
        for ra in retrains[1:]:
            res[f"async-lookahead{lookaheads[0]}-retrain{ra}"] = measure(
                "async", Path(tmp) / f"ra{ra}", a.unit, lookaheads[0], ra)
    sync, asyn = res["sync"], res[f"async-lookahead{lookaheads[0]}"]
    bottleneck = max(SLOTS, key=lambda p: asyn["lower_bound_s"][p])
    out = {
        "unit_s": a.unit, "durations_units": DEFAULT_DURATIONS, "slots": SLOTS, "lookahead_rounds": lookaheads, "retrain_after": retrains,
        "headline": f"async-lookahead{lookaheads[0]}",
        "makespan_ratio_sync_over_async": sync["makespan_s"] / asyn["makespan_s"],
        "bottleneck_pool": bottleneck,
        "async_bottleneck_utilization": asyn["utilization"][bottleneck],
        "async_bottleneck_work_over_capacity": asyn["lower_bound_s"][bottleneck] / asyn["makespan_s"],
        "per_run": {
            k: {"makespan_s": r["makespan_s"], "ratio_sync_over_this": sync["makespan_s"] / r["makespan_s"],
                "utilization": r["utilization"],
                "work_over_capacity": {p: r["lower_bound_s"][p] / r["makespan_s"] for p in SLOTS},
                "lower_bound_s": r["lower_bound_s"], "tasks": r["tasks"], "labels": r["labels"]}
            for k, r in res.items()
        },
        "runs": res,
        "machine": os.uname().nodename, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k, r in out["per_run"].items():
        print(f"{k:18s} makespan {r['makespan_s']:7.1f} s  ratio {r['ratio_sync_over_this']:.2f}  "
              f"utilization gpu {r['utilization']['gpu']:.2f} cpu {r['utilization']['cpu']:.2f}  "
              f"work/capacity gpu {r['work_over_capacity']['gpu']:.2f}  tasks {r['tasks']}")


if __name__ == "__main__":
    main()
