"""The driver at the scale of a real allocation: its own cost per task as the number of
tasks in flight grows, and the state's size and query times as explored candidates grow.

    python benchmarks/driver_scale.py [--inflight 100,1000,10000] [--candidates 10000,100000,1000000]
                                      [--out benchmarks/results/driver_scale.json] [--redo]

The real engine (driver.campaign: planners, applier, state, dataset store) on an
in-process backend whose functions are ``remote_al.simulated`` with no sleep: each result
is computed at submission and its future is already resolved, and the CPU time those
functions take is measured and subtracted, so what remains is the driver's own work.

Tasks in flight (each size in its own process, so peak RSS is per size): N structures are
stored as selected, N label tasks (one structure each) and N MD tasks created through the
applier, then one engine tick submits all 2N (``_submit``), ``remote-al status`` runs on
the state with all 2N in flight, a second process opens the state as a driver restarted
after SIGKILL would and reattaches all 2N (``_reattach``), then the first records all 2N
results (``_collect``: labels into the dataset store, MD frames into candidates, each
screened once, and their scoring tasks) and runs the phase planner once (``_advance``).
``cpu_ms_per_task`` = (submit + record CPU - function CPU) / 2N.

Candidates: C explored structures (16 atoms each, rattled, with widths) in one round's
state, each screened as the MD recorder screens a frame (``driver.screening.screen``:
``screen_ms_per_candidate``, CPU); measured: state file size, ``remote-al status`` and
``remote-al report --no-parity`` wall times (processes of their own, start-up included),
the synchronous selection of that round (``phases_sync.select_round``: CPU, from the
stored screening; ``select_decisions`` what it decided) and the application of what it
decided (``select_apply_s``: a decision and a status per candidate, one transaction).

Each finished part is kept in the output file and skipped on a rerun (``--redo`` redoes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from importlib import import_module
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from driver.backends.base import Backend, Submission  # noqa: E402
from remote_al.simulated import FUNCTIONS as SIM  # noqa: E402

OUT = HERE / "results" / "driver_scale.json"


class InstantBackend(Backend):
    """remote_al.simulated in-process, at submission; futures already resolved."""

    name = "instant"

    def __init__(self, slots: int, pending_on_reattach: bool = True):
        self._slots = slots
        self.function_cpu_s = 0.0
        self.pending_on_reattach = pending_on_reattach
        self._fns = {k: getattr(import_module(v.split(":")[0]), v.split(":")[1]) for k, v in SIM.items()}

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def slots(self, pool: str) -> int:
        return self._slots

    def submit(self, pool, function, request, task_key):
        t0 = time.process_time()
        result = self._fns[function](request)
        self.function_cpu_s += time.process_time() - t0
        fut: Future = Future()
        fut.set_result(result)
        return Submission(f"instant-{task_key}", fut)

    def reattach(self, pool, function, backend_id, task_key):
        return Future() if self.pending_on_reattach else None  # still running on the endpoint


def _config(tmp: Path, slots: int):
    from test_durability import write_campaign

    from driver.config import load_config

    os.environ["REMOTE_AL_SIM_UNIT_S"] = "0"
    toml = write_campaign(tmp, backend={"gpu_slots": min(slots, 10000), "cpu_slots": min(slots, 10000)},
                          labeler={"batch_size": 1}, selection={"max_per_round": 100000},
                          steering={"mode": "async"})
    return load_config(toml)


def _frames(cfg, n: int, seed: int = 0):
    from driver.preflight import build_structure

    rng = np.random.default_rng(seed)
    base = build_structure(cfg.structures[0])
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.04, a.positions.shape)
        yield a


def inflight_part(n: int, tmp: Path) -> dict:
    """One size of tasks in flight (run in a process of its own)."""
    from driver.campaign import Campaign
    from driver.campaign import requests as rq
    from driver.campaign.plan import AddStructure, AddTask
    from driver.dataset import frame_hash
    from remote_al.structures import composition_label, to_extxyz

    cfg = _config(tmp, n)
    backend = InstantBackend(2 * n)
    camp = Campaign(cfg, backend, say=lambda m: None)
    st = camp.state
    with st.transaction():
        st.set_meta("phase", "async")
        st.set_meta("round", "1")
        st.set_meta("started", str(time.time()))
        for m in range(2):
            st.add_model(0, m, f"train:g0:m{m}", str(tmp / f"g0m{m}.pth"))
    ops = [AddStructure(dict(hash=frame_hash(a), origin="md", split="train", round=1, generation=0,
                             spec=cfg.structures[0].name, composition=composition_label(a), natoms=len(a),
                             extxyz=to_extxyz(a), status="selected", source_task="seed"))
           for a in _frames(cfg, n)]
    camp.applier.apply(ops)
    rows = camp.view.structures(status="selected")
    tasks = [AddTask(s) for s in rq.labels(camp.view, 1, rows)]
    tasks += [AddTask(rq.exploration(camp.view, 1, 0, index=i)) for i in range(n)]
    t0 = time.process_time()
    camp.applier.apply(tasks)
    create_cpu = time.process_time() - t0

    t0 = time.process_time()
    camp._submit()
    submit_cpu = time.process_time() - t0
    fn_submit = backend.function_cpu_s
    assert len(camp.inflight) == 2 * n, len(camp.inflight)
    camp.state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    status_s = _cli_s("status", cfg.directory)

    # a driver restarted after SIGKILL with every task in flight
    t0 = time.perf_counter()
    again = Campaign(cfg, InstantBackend(2 * n), say=lambda m: None)
    again._reattach()
    reattach_s = time.perf_counter() - t0
    assert len(again.inflight) == 2 * n
    again.state.close()

    backend.function_cpu_s = 0.0
    t0 = time.process_time()
    camp._collect(timeout=0)
    record_cpu = time.process_time() - t0
    assert not camp.inflight
    t0 = time.process_time()
    camp._advance()
    advance_cpu = time.process_time() - t0
    driver_cpu = submit_cpu - fn_submit + record_cpu - backend.function_cpu_s
    return {
        "tasks": 2 * n, "create_cpu_s": create_cpu, "submit_cpu_s": submit_cpu - fn_submit,
        "record_cpu_s": record_cpu - backend.function_cpu_s, "function_cpu_s": fn_submit + backend.function_cpu_s,
        "cpu_ms_per_task": 1000 * driver_cpu / (2 * n), "advance_cpu_s": advance_cpu, "reattach_s": reattach_s,
        "status_s": status_s,
        "state_mb": _state_mb(cfg.directory), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def candidates_part(c: int, tmp: Path) -> dict:
    """C explored candidates in one round: state size, status, report, selection."""
    from collections import Counter

    from driver.campaign import Campaign, phases_sync
    from driver.dataset import frame_hash
    from driver.screening import screen
    from remote_al.structures import composition_label, to_extxyz

    cfg = _config(tmp, 2)
    camp = Campaign(cfg, InstantBackend(2), say=lambda m: None)
    st = camp.state
    rng = np.random.default_rng(1)
    screen_cpu = 0.0
    t0 = time.perf_counter()
    with st.transaction():
        st.set_meta("phase", "select")
        st.set_meta("round", "1")
        st.set_meta("started", str(time.time()))
        for a in _frames(cfg, c, seed=2):
            t1 = time.process_time()
            screened = screen(a).row()  # what the MD recorder stores with each frame
            screen_cpu += time.process_time() - t1
            st.add_structure(hash=frame_hash(a), origin="md", split="train", round=1, generation=0,
                             spec=cfg.structures[0].name, composition=composition_label(a), natoms=len(a),
                             extxyz=to_extxyz(a), status="candidate", source_task="md:r1:x",
                             energy_width=float(rng.uniform(0, 0.01)), force_width=float(rng.lognormal(-1.5, 0.6)),
                             **screened)
    insert_s = time.perf_counter() - t0
    st.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = _state_mb(cfg.directory)
    status_s = _cli_s("status", cfg.directory)
    report_s = _cli_s("report", "--no-parity", cfg.directory)
    t0 = time.process_time()
    ops = phases_sync.select_round(camp.view)
    select_cpu = time.process_time() - t0
    decisions = Counter(op.decision for op in ops if type(op).__name__ == "Decide")
    t0 = time.perf_counter()
    camp.applier.apply(ops)
    apply_s = time.perf_counter() - t0
    return {"candidates": c, "insert_s": insert_s, "screen_ms_per_candidate": 1000 * screen_cpu / c,
            "state_mb": size, "status_s": status_s, "report_s": report_s, "select_cpu_s": select_cpu,
            "select_ops": len(ops), "select_decisions": dict(sorted(decisions.items())), "select_apply_s": apply_s,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cli_s(*argv) -> float:
    """Wall seconds of one ``remote-al`` command in a process of its own (start-up included)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "driver.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - t0


def _state_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("state.sqlite*")) / 1e6


def run_part(kind: str, size: int) -> dict:
    """A part in a fresh process (its own peak RSS), through this file's --part."""
    proc = subprocess.run([sys.executable, __file__, "--part", kind, str(size)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def headline(results: dict) -> dict:
    inf = sorted(results.get("inflight", {}).values(), key=lambda r: r["tasks"])
    cands = sorted(results.get("candidates", {}).values(), key=lambda r: r["candidates"])
    out: dict = {}
    if inf:
        out["cpu_ms_per_task"] = inf[-1]["cpu_ms_per_task"]
        out["cpu_ms_per_task_at"] = inf[-1]["tasks"]
        if len(inf) >= 2:
            x = np.log([r["tasks"] for r in inf])
            y = np.log([r["cpu_ms_per_task"] * r["tasks"] for r in inf])
            out["growth_exponent"] = float(np.polyfit(x, y, 1)[0])
        out["reattach_s_max"] = max(r["reattach_s"] for r in inf)
    rows = inf + cands
    if rows:
        out["rss_mb_max"] = max(r["rss_mb"] for r in rows)
    statuses = [r["status_s"] for r in rows if "status_s" in r]
    if statuses:
        out["status_s_max"] = max(statuses)
    if cands:
        out["select_s_max"] = max(r["select_cpu_s"] for r in cands)
        out["candidates_max"] = cands[-1]["candidates"]
    reports = [r["report_s"] for r in cands if "report_s" in r]
    out["report_s_max"] = max(reports) if reports else None
    out["goals"] = {"cpu_ms_per_task": "<= 5 at 10,000 in flight", "growth_exponent": "<= 1.1",
                    "rss_mb_max": "<= 1000", "status_s_max": "<= 1", "reattach_s_max": "<= 10",
                    "report_s_max": "<= 30"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inflight", default="100,1000,10000", help="tasks in flight per kind (label, MD): N")
    ap.add_argument("--candidates", default="10000,100000,1000000")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--part", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        kind, size = args.part[0], int(args.part[1])
        with tempfile.TemporaryDirectory() as tmp:
            fn = inflight_part if kind == "inflight" else candidates_part
            print(json.dumps(fn(size, Path(tmp))))
        return 0
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and not args.redo else {}
    results.setdefault("machine", f"{os.cpu_count()} cores (shared), {os.uname().machine}")
    for kind, sizes in (("inflight", args.inflight), ("candidates", args.candidates)):
        for size in [int(s) for s in sizes.split(",") if s]:
            done = results.setdefault(kind, {})
            if str(size) in done:
                continue
            print(f"{kind} {size} ...", flush=True)
            done[str(size)] = run_part(kind, size)
            print(f"  {json.dumps(done[str(size)])}", flush=True)
            results["headline"] = headline(results)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results.get("headline", {}), indent=1))
    plot(results, out.with_suffix(".png"))
    return 0


def plot(results: dict, path: Path) -> None:
    """Driver CPU per task against tasks in flight, and the selection's and status's time
    against explored candidates (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (a, "inflight", "tasks", "tasks in flight",
         (("cpu_ms_per_task", "o-", "driver CPU per task (ms)"), ("reattach_s", "s-", "reattach all after SIGKILL (s)"),
          ("status_s", "^-", "remote-al status (s)"))),
        (b, "candidates", "candidates", "explored candidates in one round",
         (("select_cpu_s", "o-", "selection of the round (CPU s)"), ("select_apply_s", "s-", "applying its decisions (s)"),
          ("report_s", "v-", "remote-al report --no-parity (s)"), ("status_s", "^-", "remote-al status (s)"))),
    )
    for ax, part, size, xlabel, series in panels:
        rows = sorted(results.get(part, {}).values(), key=lambda r: r[size])
        if not rows:
            continue
        for key, style, label in series:
            ax.plot([r[size] for r in rows], [r[key] for r in rows], style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    a.axhline(5, color="grey", ls=":", lw=1)
    a.set_title(f"growth exponent {results['headline']['growth_exponent']:.2f}")
    fig.suptitle("benchmarks/driver_scale.py (2 shared cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
