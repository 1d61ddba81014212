"""What the colmena backend costs per task against the local backend, on the simulated
workload (the registered functions' contracts, sleeps instead of physics).

    python benchmarks/colmena_overhead.py [--unit 0.05] [--out benchmarks/results/colmena_overhead.json]

For each backend (``local``: Globus Compute serializer + ProcessPoolEngine; ``colmena``:
Colmena PipeQueues + ParslTaskServer with local HighThroughputExecutors), with 2 GPU and
2 CPU slots, one after the other on the same machine:

1. ready: ``start()`` until each pool has answered one no-op task (worker start-up);
2. latency: 30 no-op tasks one after the other on the GPU pool (submit -> result);
3. throughput: 100 no-op tasks submitted at once to the GPU pool (2 workers);
4. campaign: the durability tests' campaign (2 rounds, ensemble of 2, async steering) on
   the warm backend; per task, overhead = (recorded - submitted) - its nominal sleep.

No-op: ``train`` (GPU) and ``label`` of no structures (CPU) with ``REMOTE_AL_SIM_UNIT_S=0``
(the campaign's warm-up tasks sleep their nominal time: workers read the unit at start).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from driver.backends import make_backend  # noqa: E402
from driver.campaign import Campaign  # noqa: E402
from driver.config import load_config  # noqa: E402
from remote_al.records import LabelRequest, TrainRequest  # noqa: E402
from remote_al.simulated import DEFAULT_DURATIONS, FUNCTIONS  # noqa: E402
from test_durability import write_campaign  # noqa: E402

SLOTS = {"gpu": 2, "cpu": 2}


def noop(backend, pool: str, i: int, root: Path):
    if pool == "gpu":
        req = TrainRequest(f"noop-{i}", str(root / "noop"), ("/none",), ("Li",), 0, 1).to_dict()
        return backend.submit("gpu", "train", req, f"noop:gpu:{i}").future
    req = LabelRequest(f"noop-{i}", str(root / "noop"), "chgnet", (), "").to_dict()
    return backend.submit("cpu", "label", req, f"noop:cpu:{i}").future


def quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p90": xs[int(0.9 * (len(xs) - 1))], "mean": statistics.fmean(xs),
            "n": len(xs)}


def probe(kind: str, root: Path) -> dict:
    os.environ["REMOTE_AL_SIM_UNIT_S"] = "0"
    backend = make_backend(kind, run_dir=root / "probe", functions=FUNCTIONS, **{f"{p}_slots": n for p, n in SLOTS.items()})
    t0 = time.perf_counter()
    backend.start()
    wait([noop(backend, pool, -1 - k, root) for k, pool in enumerate(SLOTS)])
    ready = time.perf_counter() - t0
    lat = []
    for i in range(30):
        t = time.perf_counter()
        noop(backend, "gpu", i, root).result(timeout=120)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    futs = [noop(backend, "gpu", 100 + i, root) for i in range(100)]
    wait(futs, timeout=600)
    burst = time.perf_counter() - t
    assert all(f.exception() is None for f in futs)
    backend.shutdown()
    return {"ready_s": ready, "latency_s": quantiles(lat), "burst_100_s": burst, "throughput_per_s": 100 / burst}


def nominal(function: str, request: dict, unit: float) -> float:
    n = len(request.get("structure_ids", ())) if function == "label" else 1
    return unit * DEFAULT_DURATIONS[function] * n


def campaign(kind: str, root: Path, unit: float) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    toml = write_campaign(root)
    cfg = load_config(toml)
    os.environ["REMOTE_AL_SIM_UNIT_S"] = str(unit)  # workers inherit the environment at start
    backend = make_backend(kind, run_dir=cfg.directory / f"engine-{kind}", functions=FUNCTIONS,
                           **{f"{p}_slots": n for p, n in SLOTS.items()})
    backend.start()  # warm, as an endpoint that is up: every worker has run a task
    wait([noop(backend, pool, i, root) for pool in SLOTS for i in range(SLOTS[pool])])
    t0 = time.perf_counter()
    Campaign(cfg, backend, say=lambda m: None, status_every_s=60).run()
    wall = time.perf_counter() - t0
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    rows = db.execute("SELECT function, request, submitted, finished FROM tasks WHERE status='done'").fetchall()
    over = [(e - s) - nominal(f, json.loads(r), unit) for f, r, s, e in rows]
    t_first, t_last = min(r[2] for r in rows), max(r[3] for r in rows)
    return {"wall_s": wall, "makespan_s": t_last - t_first, "tasks": len(rows),
            "labels": db.execute("SELECT COUNT(*) FROM labels").fetchone()[0],
            "overhead_per_task_s": quantiles(over)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit", type=float, default=0.05, help="seconds per workload unit in the campaign")
    ap.add_argument("--out", default=str(HERE / "results" / "colmena_overhead.json"))
    a = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("local", "colmena"):
            root = Path(tmp) / kind
            root.mkdir()
            runs[kind] = {"probe": probe(kind, root), "campaign": campaign(kind, root / "c", a.unit)}
            print(kind, json.dumps(runs[kind], indent=1), flush=True)
    loc, col = runs["local"], runs["colmena"]
    headline = {
        "latency_median_ms": {k: 1e3 * r["probe"]["latency_s"]["median"] for k, r in runs.items()},
        "latency_added_ms": 1e3 * (col["probe"]["latency_s"]["median"] - loc["probe"]["latency_s"]["median"]),
        "throughput_per_s": {k: r["probe"]["throughput_per_s"] for k, r in runs.items()},
        "ready_s": {k: r["probe"]["ready_s"] for k, r in runs.items()},
        "campaign_overhead_per_task_median_s": {k: r["campaign"]["overhead_per_task_s"]["median"]
                                                for k, r in runs.items()},
        "campaign_makespan_s": {k: r["campaign"]["makespan_s"] for k, r in runs.items()},
        "campaign_makespan_ratio_colmena_over_local": col["campaign"]["makespan_s"] / loc["campaign"]["makespan_s"],
    }
    out = {"headline": headline, "unit_s": a.unit, "durations_units": DEFAULT_DURATIONS, "slots": SLOTS,
           "runs": runs, "cores": os.cpu_count(), "load_avg_1min_at_end": os.getloadavg()[0],
           "machine": os.uname().nodename, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()
