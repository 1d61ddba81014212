"""A driver killed again and again: what it costs (issue #26).

    python benchmarks/kill_resume.py [--campaign examples/linio2.toml] [--kills 12]
                                     [--between 25,90] [--seed 3] [--out benchmarks/results/kill_resume.json]

Two copies of the demo campaign run at the same time on this machine, so that both see
the same load: one uninterrupted, one whose driver is killed with SIGKILL ``--kills``
times, each at a random moment ``--between`` seconds after its start, and restarted at
once (``remote-al run`` again). Both use the default local engine service
(``backend.engine_lifetime = "campaign"``). Measured:

- ``duplicate_labels``: structures with more than one label row; ``lost_labels``:
  structures chosen for labeling without one (both must be 0);
- ``lost_work_share``: seconds of task executions thrown away (cut short, or followed by
  another execution of the same task) over all task seconds, from the service's
  ``executions.jsonl`` (``driver.backends.local_service.execution_stats``);
- ``restart_to_progress_s``: per restart, seconds from the driver's start until it is
  attached to its tasks (reattached one) and the campaign moves (a task recorded, or a
  running training or MD has taken steps since: what ``remote-al status`` shows);
  ``_median`` over restarts that reached it; ``restart_to_task_done_s``: to the first
  task recorded;
- ``restart_to_reattached_s``: per restart, seconds to the driver's first reattached task;
- ``wall_ratio``: wall time of the killed campaign over the uninterrupted one.

Each finished part is kept in ``runs/kill_resume/`` and in the output file; a rerun
skips finished parts (``--redo`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from driver.backends.local_service import execution_stats  # noqa: E402

OUT = HERE / "results" / "kill_resume.json"
RUNS = ROOT / "runs" / "kill_resume"
ENV = {"OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1", "DP_INTER_OP_PARALLELISM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


def prepare(campaign: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    text = Path(campaign).read_text()
    text = re.sub(r'(?m)^workdir\s*=.*$', f'workdir = "{where / "camp"}"', text)
    toml = where / "campaign.toml"
    toml.write_text(text)
    return toml


def _one(camp: Path, sql: str, args=(), default=None):
    """The first column of the first row of a read-only query of the campaign's state
    (``default`` while the state cannot be read, e.g. before the driver created it)."""
    try:
        db = sqlite3.connect(f"file:{camp / 'state.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute(sql, args).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return default
    return row[0] if row else default


def done_tasks(camp: Path) -> int:
    return _one(camp, "SELECT COUNT(*) FROM tasks WHERE status='done'", default=-1)


def work_done(camp: Path) -> tuple[int, int]:
    """(tasks done, steps of the running trainings and MD runs): what `remote-al status`
    shows of the campaign's progress."""
    from driver.progress import running_progress
    from driver.state import State

    try:
        st = State(camp / "state.sqlite")
    except Exception:
        return -1, -1
    try:
        steps = sum(t.progress.step for t in running_progress(st) if t.progress)
    finally:
        st.close()
    return done_tasks(camp), steps


def reattached_since(camp: Path, t: float) -> bool:
    """Whether a driver started at ``t`` has reattached to (or resubmitted) a task."""
    return _one(camp, "SELECT COUNT(*) FROM events WHERE kind IN ('reattach','resubmit') AND ts >= ?",
                (t,), default=0) > 0


def finished(camp: Path) -> bool:
    return _one(camp, "SELECT value FROM meta WHERE key='phase'") == "done"


def label_integrity(camp: Path) -> dict:
    db = sqlite3.connect(camp / "state.sqlite")
    chosen = {r[0] for r in db.execute("SELECT structure_id FROM decisions WHERE decision IN ('label','test')")}
    counts: dict[int, int] = {}
    for (sid,) in db.execute("SELECT structure_id FROM labels"):
        counts[sid] = counts.get(sid, 0) + 1
    ok = db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
    open_tasks = db.execute("SELECT COUNT(*) FROM tasks WHERE status NOT IN ('done')").fetchone()[0]
    return {"labels": len(counts), "labels_ok": ok, "duplicate_labels": sum(1 for n in counts.values() if n > 1),
            "lost_labels": len(chosen - set(counts)), "open_tasks": open_tasks}


def run_once(toml: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, **ENV}
    return subprocess.Popen([sys.executable, "-m", "driver.cli", "run", str(toml), "--status-every", "30"],
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT)


def uninterrupted(campaign: Path, where: Path) -> dict:
    toml = prepare(campaign, where)
    t0 = time.time()
    proc = run_once(toml, where / "driver.log")
    rc = proc.wait()
    return {"rc": rc, "wall_s": time.time() - t0}


def killed(campaign: Path, where: Path, kills: int, between: tuple[float, float], seed: int) -> dict:
    toml = prepare(campaign, where)
    camp = where / "camp"
    rng = random.Random(seed)
    restarts, t0, n_kills = [], time.time(), 0
    while True:
        start = time.time()
        before = max(done_tasks(camp), 0)
        proc = run_once(toml, where / "driver.log")
        deadline = start + rng.uniform(*between) if n_kills < kills else float("inf")
        task_done = attached = progress = None
        seen = None
        while proc.poll() is None and time.time() < deadline:
            now = time.time() - start
            if task_done is None and done_tasks(camp) > before:
                task_done = now
            if attached is None and (not n_kills or reattached_since(camp, start)):
                attached = now
            if progress is None and attached is not None:
                # the restarted driver is attached, and the campaign moves: a task is recorded,
                # or a running training or MD has taken steps since the driver saw it first
                work = work_done(camp)
                if seen is None:
                    seen = work
                if task_done is not None or (work[1] > seen[1] >= 0):
                    progress = time.time() - start
            time.sleep(0.25)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            n_kills += 1
            restarts.append({"alive_s": time.time() - start, "progress_s": progress, "reattached_s": attached,
                             "task_done_s": task_done})
            print(f"  kill {n_kills} after {time.time() - start:.0f} s (reattached {attached}, progress {progress}, "
                  f"task done {task_done})", flush=True)
            continue
        if task_done is None and done_tasks(camp) > before:
            task_done = time.time() - start
        restarts.append({"alive_s": time.time() - start, "progress_s": progress if progress is not None else task_done,
                         "reattached_s": attached, "task_done_s": task_done, "rc": proc.returncode})
        if proc.returncode != 0 or finished(camp):
            break
    return {"rc": proc.returncode, "wall_s": time.time() - t0, "kills": n_kills, "runs": restarts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default=str(ROOT / "examples" / "linio2.toml"))
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--between", default="25,90")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    between = tuple(float(x) for x in args.between.split(","))
    out = Path(args.out)
    if args.redo:
        shutil.rmtree(RUNS, ignore_errors=True)
    parts: dict = {}
    if out.exists() and not args.redo:
        parts = json.loads(out.read_text()).get("parts", {})
    todo = [p for p in ("uninterrupted", "killed") if p not in parts]
    for p in todo:
        shutil.rmtree(RUNS / p, ignore_errors=True)  # a part cut short starts over
    threads = []
    if "uninterrupted" in todo:
        threads.append(threading.Thread(target=lambda: parts.__setitem__(
            "uninterrupted", uninterrupted(Path(args.campaign), RUNS / "uninterrupted"))))
    if "killed" in todo:
        threads.append(threading.Thread(target=lambda: parts.__setitem__(
            "killed", killed(Path(args.campaign), RUNS / "killed", args.kills, between, args.seed))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("uninterrupted", "killed"):
        camp = RUNS / name / "camp"
        parts[name].update(label_integrity(camp), work=execution_stats(camp / "engine"))
    k, u = parts["killed"], parts["uninterrupted"]
    progress = [r["progress_s"] for r in k["runs"][1:] if r.get("progress_s") is not None]
    headline = {
        "kills": k["kills"],
        "duplicate_labels": k["duplicate_labels"],
        "lost_labels": k["lost_labels"],
        "lost_work_share": round(k["work"]["lost_share"], 4),
        "restart_to_progress_s_median": round(statistics.median(progress), 2) if progress else None,
        "restarts_without_progress": sum(1 for r in k["runs"][1:] if r.get("progress_s") is None),
        "restart_to_task_done_s_median": (round(statistics.median(td), 2) if (td := [
            r["task_done_s"] for r in k["runs"][1:] if r.get("task_done_s") is not None]) else None),
        "restart_to_reattached_s_median": (round(statistics.median(att), 2) if (att := [
            r["reattached_s"] for r in k["runs"][1:] if r.get("reattached_s") is not None]) else None),
        "wall_ratio": round(k["wall_s"] / u["wall_s"], 3),
        "wall_s": {"killed": round(k["wall_s"], 1), "uninterrupted": round(u["wall_s"], 1)},
        "task_s": {"killed": round(k["work"]["task_s"], 1), "uninterrupted": round(u["work"]["task_s"], 1)},
        "labels": {"killed": k["labels_ok"], "uninterrupted": u["labels_ok"]},
        "goals": {"duplicate_labels": "0", "lost_labels": "0", "lost_work_share": "<= 0.10",
                  "wall_ratio": "<= 1.05", "restart_to_progress_s_median": "<= 15"},
    }
    machine = {"cores": os.cpu_count(), "note": "both campaigns at once on one shared 2-core machine"}
    result = {"headline": headline, "machine": machine, "campaign": str(args.campaign),
              "between_s": between, "seed": args.seed, "parts": parts}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
