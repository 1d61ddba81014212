"""The steering loop: a durable reconciler over the campaign state.

Each tick: collect finished futures and record their results (one SQLite transaction
per result, which also creates the follow-up tasks), advance the campaign phase where
its work is complete, submit pending tasks up to each pool's free slots, then wait for
the next future. Nothing is held only in memory: a driver killed at any moment resumes
from the state file, reattaches to tasks in flight (or resubmits those the backend has
no record of), and never stores a label twice (``labels`` is keyed by structure).

Phases per round r (generation g = r is trained in round r):
  r = 0: generate -> label -> train -> evaluate
  r > 0: explore (MD + UQ with generation r-1) -> select -> label -> train -> evaluate
  then: final_eval (every generation on the full held-out set) -> done
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from driver.backends.base import Backend
from driver.config_models import CampaignConfig
from driver.preflight import build_structure, preflight
from driver.dataset import DatasetError, LabelRejected
from driver.errors import BackendUnavailable, CampaignLocked, TaskFailed
from driver.selection import Candidate, SelectionPolicy, fingerprint, select, structure_hash
from driver.team import Site
from driver.placement import Placement, StagingFailed
from driver.state import State, StateMeta
from driver.transfer import Transfer, TransferError, TransferNeedsAction
from remote_al.records import LabelRequest, MDRequest, TrainRequest, UQRequest


POOL_OF = {"md": "gpu", "uq": "gpu", "train": "gpu", "label": "cpu", "relax": "gpu", "relax_label": "cpu"}
STATE_FILE = "state.sqlite"
STAGING_POLL_S = 5.0  # how often a task waiting on a staging transfer looks again


class CampaignLock:
    """An exclusive lock on the campaign directory (released by the OS if the driver dies)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / "driver.lock"
        self._fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise CampaignLocked(
                f"campaign {self.path.parent} is being run by {holder}; "
                "wait for it to finish or stop it first (one driver per campaign)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"driver pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Campaign:
    def __init__(
        self,
        cfg: CampaignConfig,
        backend: Backend,
        say: Callable[[str], None] | None = None,
        status_every_s: float = 20.0,
        sites: Mapping[str, Site] | None = None,
        transfer: Transfer | None = None,
    ):
        preflight(cfg)  # a bad campaign creates nothing, from the CLI or from Python
        self.cfg = cfg
        self.dir = cfg.directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = State(self.dir / STATE_FILE)
        from driver.dataset import DatasetStore

        self.store = DatasetStore(self.state)
        self.backend = backend
        self.say = say or (lambda msg: print(msg, flush=True))
        self.status_every_s = status_every_s
        self.inflight: dict[str, Future] = {}
        self._pool_blocked_until: dict[str, float] = {}
        self._staging_until: dict[str, float] = {}  # task key -> when to look at its staging again
        self._last_status = 0.0
        self._t_start = time.time()
        # structure id -> (filter result, fingerprint): structures never change, and each
        # selection looks again at the round's chosen ones (near-duplicate checks)
        self._screened: dict[int, tuple] = {}
        self._starts: dict[str, object] = {}  # start_structure per structure name
        # pools on other filesystems (team file [sites]): request paths and staging
        self.placement = Placement(self.dir, sites, transfer, meta=StateMeta(self.state))

    # ------------------------------------------------------------------ paths
    def workdir(self, key: str) -> str:
        return str(self.dir / "work" / key.replace(":", "-"))

    # ------------------------------------------------------------- lifecycle
    def run(self, max_ticks: int | None = None) -> str:
        """Run until the campaign is done (returns the stop reason) or ``max_ticks``."""
        lock = CampaignLock(self.dir)
        lock.acquire()
        try:
            self._save_config()
            from driver.config import config_to_dict

            with self.state.transaction():
                self.state.set_meta("config_json", json.dumps(config_to_dict(self.cfg)))
            if self.state.get_meta("phase") is None:
                with self.state.transaction():
                    self.state.set_meta("phase", "generate")
                    self.state.set_meta("round", "0")
                    self.state.set_meta("started", str(time.time()))
                self.state.event("campaign", f"campaign {self.cfg.campaign.name} started")
                self.say(f"campaign {self.cfg.campaign.name}: new, state in {self.state.path}")
            else:
                self.say(
                    f"campaign {self.cfg.campaign.name}: resuming at round {self.round}, phase {self.phase}"
                )
            self.backend.start()
            self._reattach()
            ticks = idle_ticks = 0
            while self.phase != "done":
                self._collect(timeout=0)
                before = self._fingerprint()
                self._advance()
                if self.phase == "done":
                    break
                self._submit()
                if not self.inflight and self._fingerprint() == before and not self.state.tasks(status="pending"):
                    idle_ticks += 1
                    if idle_ticks >= 5:
                        raise RuntimeError(
                            f"the steering loop cannot make progress in round {self.round}, phase {self.phase}: "
                            "nothing is running or queued and no rule creates work; state is saved in "
                            f"{self.state.path} (please report this)"
                        )
                    time.sleep(0.2)
                else:
                    idle_ticks = 0
                self._progress()
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    return "paused"
                self._collect(timeout=self._wait_time())
            reason = self.state.get_meta("stop_reason", "")
            self._progress(force=True)
            self.say(f"campaign {self.cfg.campaign.name} done: {reason}")
            return reason or "done"
        finally:
            self.backend.shutdown()
            lock.release()

    def _save_config(self) -> None:
        if self.cfg.source and Path(self.cfg.source).exists():
            dest = self.dir / "campaign.toml"
            if Path(self.cfg.source).resolve() != dest.resolve():
                shutil.copyfile(self.cfg.source, dest)

    def _fingerprint(self) -> tuple:
        n = self.state.db.execute("SELECT COUNT(*), COALESCE(SUM(status='done'), 0) FROM tasks").fetchone()
        return (self.phase, self.round, n[0], n[1], self.state.get_meta("stop_reason"))

    @property
    def stop_kind(self) -> str:
        """The kind of the recorded stop (``STOP_KINDS``), "" while running."""
        return self.state.get_meta("stop_kind", "") or ""

    @property
    def phase(self) -> str:
        return self.state.get_meta("phase", "generate")

    @property
    def round(self) -> int:
        return int(self.state.get_meta("round", "0"))

    def _set_phase(self, phase: str, round_: int | None = None) -> None:
        crash_point("phase")
        with self.state.transaction():
            self.state.set_meta("phase", phase)
            if round_ is not None:
                self.state.set_meta("round", str(round_))
        self.state.event("phase", f"round {self.round}: {phase}")

    # ----------------------------------------------------------- the backend
    def _reattach(self) -> None:
        for row in self.state.tasks(status="submitted"):
            fut = None
            try:
                fut = self.backend.reattach(row["pool"], row["function"], row["backend_id"], row["key"])
            except BackendUnavailable as exc:
                self.say(f"cannot reach the backend to reattach {row['key']}: {exc}; will retry")
                continue
            if fut is None:
                with self.state.transaction():
                    self.state.mark_retry(row["key"], "backend had no record after restart; resubmitting", 0)
                self.state.event("resubmit", f"{row['key']}: lost with the previous driver, resubmitting")
            else:
                self.inflight[row["key"]] = fut
                self.state.event("reattach", f"{row['key']}: reattached")

    def _submit(self) -> None:
        now = time.time()
        busy: dict[str, int] = {}
        for key in self.inflight:
            row = self.state.task(key)
            busy[row["pool"]] = busy.get(row["pool"], 0) + 1
        # Explorations for the current label round feed the CPU and go first; a generation's
        # training comes next, before explorations that look ahead with an older ensemble.
        order = {"uq": 0, "md": 1, "label": 1, "train": 2}
        r_now = self.round

        def rank(r) -> tuple:
            k = order.get(r["function"], 4)
            if r["function"] == "md" and r["round"] > r_now:
                k = 3
            return (k, r["id"])

        for row in sorted(self.state.tasks(status="pending"), key=rank):
            pool = row["pool"]
            if row["not_before"] > now or self._pool_blocked_until.get(pool, 0) > now:
                continue
            if busy.get(pool, 0) >= self.backend.slots(pool):
                continue
            if self._staging_until.get(row["key"], 0.0) > now:
                continue
            full = json.loads(row["request"])
            if not self._staged(row, full):
                continue
            request = {k: v for k, v in full.items() if not k.startswith("_")}
            try:
                sub = self.backend.submit(pool, row["function"], request, row["key"])
            except BackendUnavailable as exc:
                wait_s = min(300.0, max(5.0, self.cfg.backend.retry_backoff_s))
                self._pool_blocked_until[pool] = now + wait_s
                self.state.event("offline", f"{pool} endpoint unavailable: {exc}")
                self.say(f"{pool} endpoint unavailable ({exc}); queued work kept, retrying in {wait_s:.0f} s")
                continue
            except TaskFailed as exc:  # refused before sending (too large, not allowed)
                self._fail(row, exc)
                continue
            crash_point("after_submit")
            self.state.mark_submitted(row["key"], sub.backend_id)
            self.inflight[row["key"]] = sub.future
            busy[pool] = busy.get(pool, 0) + 1

    def _wait_time(self) -> float:
        pending = self.state.tasks(status="pending")
        if not self.inflight and not pending:
            return 0.0
        if pending and not self.inflight:
            nb = min(
                max(r["not_before"], self._pool_blocked_until.get(r["pool"], 0.0),
                    self._staging_until.get(r["key"], 0.0)) for r in pending
            )
            return max(0.05, min(self.status_every_s, nb - time.time()))
        return self.status_every_s

    def _collect(self, timeout: float) -> None:
        if not self.inflight:
            if timeout > 0:
                time.sleep(min(timeout, 1.0))
            return
        done, _ = wait(list(self.inflight.values()), timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return
        for key, fut in list(self.inflight.items()):
            if fut not in done:
                continue
            del self.inflight[key]
            row = self.state.task(key)
            try:
                result = fut.result()
            except TaskFailed as exc:
                self._fail(row, exc)
                continue
            except Exception as exc:  # a backend bug must not lose the task
                self._fail(row, TaskFailed(f"{type(exc).__name__}: {exc}"))
                continue
            crash_point("before_record")
            try:
                self._record(row, result)
            except Exception as exc:
                self._fail(row, TaskFailed(f"result could not be recorded: {type(exc).__name__}: {exc}"))
                continue
            crash_point("after_record")
            forget = getattr(self.backend, "forget", None)
            if forget:
                forget(key)

    def _fail(self, row, exc: TaskFailed) -> None:
        attempts = row["attempts"]
        short = str(exc).strip().splitlines()
        summary = short[-1] if short else type(exc).__name__
        if exc.retryable and attempts < self.cfg.backend.max_attempts:
            delay = self.cfg.backend.retry_backoff_s * (2 ** max(0, attempts - 1))
            self.state.mark_retry(row["key"], str(exc), time.time() + delay)
            self.state.event("retry", f"{row['key']} failed (attempt {attempts}): {summary}; retry in {delay:.0f} s")
            self.say(f"task {row['key']} failed (attempt {attempts}/{self.cfg.backend.max_attempts}): {summary}")
            return
        with self.state.transaction():
            self.state.mark_quarantined(row["key"], str(exc))
            if row["function"] == "label":
                req = json.loads(row["request"])
                for sid in req["structure_ids"]:
                    self._store_failed_label(sid, row["key"], req["labeler"], f"label task quarantined: {summary}")
        self.state.event("quarantine", f"{row['key']} quarantined after {attempts} attempts: {summary}")
        self.say(f"task {row['key']} quarantined after {attempts} attempts: {summary}")

    def _store_failed_label(self, sid: int, task_key: str, labeler: str, reason: str) -> None:
        self.state.db.execute(
            "INSERT OR IGNORE INTO labels(structure_id, task_key, labeler, labeler_note, status, reason, created) "
            "VALUES(?,?,?,?,?,?,?)",
            (sid, task_key, labeler, "", "failed", reason, time.time()),
        )
        self.state.db.execute(
            "UPDATE structures SET status='label_failed', reason=? WHERE id=?", (reason, sid)
        )

    # ------------------------------------------------------ recording results
    def _record(self, row, result: dict) -> None:
        fn = row["function"]
        with self.state.transaction():
            if fn == "label":
                self._record_label(row, result)
            elif fn == "train":
                self._record_train(row, result)
            elif fn == "md":
                self._record_md(row, result)
            elif fn == "uq":
                self._record_uq(row, result)
            # relax / relax_label: the result itself is the record (driver.volume reads it)
            crash_point("in_record")
            self.state.mark_done(row["key"], _slim(fn, result))

    def _record_label(self, row, result: dict) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator

        from remote_al.structures import from_extxyz, to_extxyz

        req = json.loads(row["request"])
        frames = from_extxyz(req["structures_extxyz"])
        n_ok = 0
        for atoms, lab in zip(frames, result["labels"]):
            sid = lab["structure_id"]
            if lab["status"] == "ok":
                a = atoms.copy()
                a.info = {"structure_id": sid, "labeler": result["labeler"]}
                a.calc = SinglePointCalculator(
                    a, energy=lab["energy"], forces=np.array(lab["forces"], dtype=float),
                    stress=None if lab.get("stress") is None else np.array(lab["stress"], dtype=float),
                )
                srow = self.state.structures(id=sid)[0]
                try:  # the dataset store refuses NaN/inf or malformed labels: they never reach training
                    self.store.add(
                        a, structure_id=sid, labeler=result["labeler"], labeler_settings=req.get("settings") or {},
                        task_key=row["key"], exploration=srow["source_task"] or "initial",
                        model_generation=srow["generation"], split=srow["split"], round_=srow["round"],
                    )
                except LabelRejected as exc:
                    self._store_failed_label(sid, row["key"], result["labeler"], str(exc))
                    continue
                cur = self.state.db.execute(
                    "INSERT OR IGNORE INTO labels(structure_id, task_key, labeler, labeler_note, status, reason, "
                    "energy, extxyz, created) VALUES(?,?,?,?,?,?,?,?,?)",
                    (sid, row["key"], result["labeler"], result["labeler_note"], "ok", "", lab["energy"],
                     to_extxyz(a), time.time()),
                )
                if cur.rowcount:
                    n_ok += 1
                self.state.db.execute("UPDATE structures SET status='labeled' WHERE id=?", (sid,))
            else:
                self._store_failed_label(sid, row["key"], result["labeler"], lab.get("reason") or "label failed")
                self.state.db.execute(
                    "INSERT INTO events(ts, kind, message) VALUES(?,?,?)",
                    (time.time(), "label_failed", f"structure {sid}: {lab.get('reason')}"),
                )

    def _record_train(self, row, result: dict) -> None:
        req = json.loads(row["request"])
        self.state.add_model(row["generation"], req["member"], row["key"], result["model_path"],
                             result["checkpoint_path"], result["lcurve_path"], result["lcurve_last"],
                             result["n_train_frames"], result["wall_s"])

    def _record_md(self, row, result: dict) -> None:
        from remote_al.structures import composition_label, from_extxyz, to_extxyz

        frames = from_extxyz(result["frames_extxyz"])
        req = json.loads(row["request"])
        spec = req.get("_spec", "")
        ids, kept = [], []
        for atoms in frames:
            atoms.calc = None
            sid = self.state.add_structure(
                hash=structure_hash(atoms), origin="md", split="train", round=row["round"],
                generation=row["generation"], spec=spec, composition=composition_label(atoms),
                natoms=len(atoms), extxyz=to_extxyz(atoms), status="candidate", source_task=row["key"],
            )
            if sid is not None:
                ids.append(sid)
                kept.append(atoms)
        if kept:
            models = [m["path"] for m in self.state.models(row["generation"])]
            key = f"uq:{row['key']}"
            uq = UQRequest(
                task_key=key, workdir=self.workdir(key), model_paths=tuple(models),
                frames_extxyz=to_extxyz(kept), confidence=self.cfg.selection.confidence,
            ).to_dict()
            uq["_structure_ids"] = ids
            self._add_task(key, "uq", row["round"], row["generation"], uq)

    def _record_uq(self, row, result: dict) -> None:
        req = json.loads(row["request"])
        if "_recheck" in req:  # stale selections re-scored with a newer generation
            self._record_recheck(row, result, req)
            return
        ids = req.get("_structure_ids")
        if ids is None:  # evaluation of a generation on held-out frames
            self._record_eval(row, result, req)
            return
        for sid, ew, fw in zip(ids, result["energy_width"], result["force_width"]):
            self.state.db.execute(
                "UPDATE structures SET energy_width=?, force_width=? WHERE id=?", (ew, fw, sid)
            )
        if self.cfg.steering.mode == "async" and self.phase == "async":
            self._select_batch(row["round"], ids)

    def _record_eval(self, row, result: dict, req: dict) -> None:
        scope = req.get("_scope", "generation")
        g = row["generation"]
        if scope == "oob":  # out-of-bag frames: calibration pairs only, no accuracy metrics
            self._calibrate(g, oob_result=result)
            return
        vals = {"n_test": result["n_frames"]}
        if result.get("energy_error") is not None:
            e = np.array(result["energy_error"])
            f = np.array(result["force_rmse"])
            natoms = np.array(result["natoms"])
            vals["energy_rmse_meV_atom"] = float(np.sqrt(np.mean(e**2)) * 1000)
            # force RMSE over all components of all frames
            vals["force_rmse_eV_A"] = float(np.sqrt(np.sum(f**2 * natoms * 3) / np.sum(natoms * 3)))
            vals["force_inside_ci"] = float(np.average(result["force_inside_ci"], weights=natoms))
            vals["force_width_mean"] = float(np.mean(result["force_width"]))
            vals.update(_energy_by_composition(req["frames_extxyz"], e))
        for name, v in vals.items():
            self.state.set_metric(scope, g, name, v)
        if scope == "generation":
            self._calibrate(g, test_result=result)

    def _calibrate(self, g: int, test_result: dict | None = None, oob_result: dict | None = None) -> None:
        """Fit generation g's calibration once its test and out-of-bag evaluations are both
        in (whichever is recorded last calls with its result; the other is read back)."""
        from driver.calibrate import calibrate_generation

        def done(key: str) -> tuple[bool, dict | None]:
            t = self.state.task(key)
            if t is None:
                return True, None  # not asked for (no such frames)
            return t["status"] == "done", json.loads(t["result"]) if t["status"] == "done" else None

        if test_result is None:
            ready, test_result = done(f"eval:g{g}")
            if not ready:
                return
        if oob_result is None:
            ready, oob_result = done(f"oob:g{g}")
            if not ready:
                return
        sel = self.cfg.selection
        cal = calibrate_generation(self.cfg.directory, g, test_result, oob_result, sel, len(self.state.models(g)))
        if cal is None:
            return
        vals = dict(force_scale=cal.force_scale, energy_scale=cal.energy_scale,
                    calibrated=float(cal.force_calibrated), n_calibration_atoms=cal.n_force_pairs)
        if sel.force_threshold_mode == "calibrated":
            vals["force_threshold"] = float(min(cal.force_width_threshold(sel.target_force_error),
                                                0.99 * sel.force_upper))
        for name, v in vals.items():
            self.state.set_metric("generation", g, name, v)
        self.state.event("calibration", (
            f"generation {g}: 95 % force bound = {cal.force_scale:.2f} x width, energy bound = "
            f"{cal.energy_scale:.2f} x width ({cal.source}; {cal.n_force_pairs} atoms"
            + (f"; {cal.note}" if cal.note else "") + ")"))

    def _add_task(self, key: str, function: str, round_: int, generation: int, request: dict) -> None:
        pool = POOL_OF[function]
        request, stage = self.placement.translate(pool, request)
        if stage:
            request["_stage"] = stage  # inputs moved to the pool's site before submission
        self.state.add_task(key, function, pool, round_, generation, request)

    def _staged(self, row, request: dict) -> bool:
        """True when the task's inputs are on its pool's site (starting their transfers)."""
        stage = request.get("_stage")
        if not stage:
            return True
        pool = row["pool"]
        try:
            if self.placement.ready(pool, stage):
                return True
        except StagingFailed as exc:
            self.state.db.execute("UPDATE tasks SET attempts=attempts+1 WHERE key=?", (row["key"],))
            self._fail(self.state.task(row["key"]), TaskFailed(str(exc), code="StagingFailed"))
            return False
        except TransferNeedsAction as exc:
            self.say(f"staging for {row['key']} needs action: {exc}")
            self._pool_blocked_until[pool] = time.time() + 60.0
            return False
        except (BackendUnavailable, TransferError) as exc:
            self.say(f"staging for {row['key']} cannot proceed now ({exc}); retrying")
            self._pool_blocked_until[pool] = time.time() + max(5.0, self.cfg.backend.retry_backoff_s)
            return False
        self._staging_until[row["key"]] = time.time() + STAGING_POLL_S  # transfer still running
        return False

    # ------------------------------------------------------------ the phases
    def _advance(self) -> None:
        # Phases that complete at once chain within one tick, and a rule that creates work
        # runs again at once (e.g. one exploration per idle GPU slot), instead of waiting
        # for the next task to finish.
        for _ in range(8):
            before = self._fingerprint()
            if self._check_budgets():
                pass
            getattr(self, f"_phase_{self.phase}")()
            if self._fingerprint() == before:
                return

    def _open_tasks(self, round_: int | None = None, function: str | None = None) -> list:
        rows = self.state.tasks(status=("pending", "submitted"), function=function)
        return [r for r in rows if round_ is None or r["round"] == round_]

    def _check_budgets(self) -> bool:
        if self.phase in ("final_eval", "volume", "done") or self.state.get_meta("stop_reason"):
            return False
        c = self.cfg.campaign
        reason = None
        if c.max_wall_hours > 0:
            started = float(self.state.get_meta("started", str(time.time())))
            if time.time() - started > c.max_wall_hours * 3600:
                reason = f"wall-time budget of {c.max_wall_hours:g} h reached"
        if reason:
            self._stop(reason)
            return True
        return False

    def _stop(self, reason: str, phase: str | None = None, kind: str = "budget") -> None:
        """Record the stop reason and its kind (``STOP_KINDS``: what the CLI's exit status
        follows). Asynchronous campaigns drain their tasks in flight first."""
        if kind not in STOP_KINDS:
            raise ValueError(f"unknown stop kind {kind!r}")
        if phase is None:
            phase = "async" if self.phase == "async" else "final_eval"
        with self.state.transaction():
            self.state.set_meta("stop_reason", reason)
            self.state.set_meta("stop_kind", kind)
            self.state.set_meta("phase", phase)
        self.state.event("stop", reason)
        self.say(f"stopping: {reason}")

    def _initial_relaxations_pending(self) -> bool:
        """[initial] relax: create the labeler relaxations; True while any is open."""
        from driver import volume

        created = 0
        with self.state.transaction():
            for spec in self.cfg.structures:
                key, fn, req = volume.labeler_relax_request(self.cfg, spec, self.workdir)
                if self.state.task(key) is None:
                    self._add_task(key, fn, 0, -1, req)
                    created += 1
        if created:
            self.say(f"round 0: {created} structures relaxed with the {self.cfg.labeler.kind} labeler before "
                     "the initial data are built around them")
        return bool(created or self._open_tasks(function="relax_label"))

    def start_structure(self, spec):
        """Where the initial data and the MD of a structure start: the labeler-relaxed
        structure when ``[initial] relax`` produced one, else the built structure."""
        if not self.cfg.initial.relax:
            return build_structure(spec)
        if spec.name not in self._starts:
            self._starts[spec.name] = self._relaxed_by_labeler(spec) or build_structure(spec)
        return self._starts[spec.name].copy()

    def _relaxed_by_labeler(self, spec):
        """The structure of task relax-label:<name>, or None (with the reason said)."""
        from remote_al.structures import check_structure, from_extxyz

        row = self.state.task(f"relax-label:{spec.name}")
        res = json.loads(row["result"]) if row is not None and row["status"] == "done" else {}
        if not res.get("relaxed_extxyz"):
            self.say(f"no labeler relaxation of {spec.name} ({row['status'] if row else 'missing'}); "
                     "starting from the built structure")
            return None
        atoms = from_extxyz(res["relaxed_extxyz"])[0]
        atoms.calc = None
        chk = check_structure(atoms, min_dist_A=self.cfg.selection.min_distance_A)
        if not chk.ok:
            self.say(f"labeler-relaxed {spec.name} fails the structure filters ({chk.reason}); "
                     "starting from the built structure")
            return None
        return atoms

    def _phase_generate(self) -> None:
        from remote_al.structures import check_structure, composition_label, initial_perturbations, to_extxyz

        cfg = self.cfg
        if cfg.initial.relax and self._initial_relaxations_pending():
            return
        rng = np.random.default_rng(cfg.campaign.seed)
        n_filtered = 0
        with self.state.transaction():
            for spec in cfg.structures:
                base = self.start_structure(spec)
                for split, n in (("train", cfg.initial.n_per_structure), ("test", cfg.test.n_initial_per_structure)):
                    for atoms in initial_perturbations(base, n, cfg.initial.rattle_A, cfg.initial.strain, rng):
                        check = check_structure(atoms, min_dist_A=cfg.selection.min_distance_A)
                        sid = self.state.add_structure(
                            hash=structure_hash(atoms), origin="initial", split=split, round=0, generation=-1,
                            spec=spec.name, composition=composition_label(atoms), natoms=len(atoms),
                            extxyz=to_extxyz(atoms), status="selected" if check.ok else "filtered",
                        )
                        if sid is None:
                            continue
                        if not check.ok:  # before it costs a labeler call
                            n_filtered += 1
                            self.state.update_structure(sid, reason=check.reason)
                            self.state.decide(0, sid, "filtered", check.reason)
                            continue
                        self.state.decide(0, sid, "label" if split == "train" else "test",
                                          f"initial data: rattled up to {1.5 * cfg.initial.rattle_A:.3f} A, strained {cfg.initial.strain}")
            n_train = sum(1 for r in self.state.structures(round=0) if r["split"] == "train" and r["status"] == "selected")
            if n_train == 0:
                first = next((r["reason"] for r in self.state.structures(round=0) if r["status"] == "filtered"), "")
                self._stop(f"no training data: every initial frame was removed by the structure filter "
                           f"({first}); lower selection.min_distance_A or initial.rattle_A", phase="done", kind="failed")
                return
            self.state.set_meta("phase", "label")
        n = len(self.state.structures(round=0))
        self.say(f"round 0: generated {n} initial structures from {len(cfg.structures)} structures"
                 + (f"; {n_filtered} rejected by the structure filters" if n_filtered else ""))

    def _phase_label(self) -> None:
        r = self.round
        todo = self.state.structures(round=r, status="selected")
        if todo:
            bs = self.cfg.labeler.batch_size
            from remote_al.structures import from_extxyz, to_extxyz

            with self.state.transaction():
                for i in range(0, len(todo), bs):
                    chunk = todo[i : i + bs]
                    ids = [s["id"] for s in chunk]
                    key = f"label:r{r}:{ids[0]}-{ids[-1]}"
                    frames = [from_extxyz(s["extxyz"])[0] for s in chunk]
                    req = LabelRequest(
                        task_key=key, workdir=self.workdir(key), labeler=self.cfg.labeler.kind,
                        structure_ids=tuple(ids), structures_extxyz=to_extxyz(frames),
                        settings=dict(self.cfg.labeler.settings),
                    ).to_dict()
                    self._add_task(key, "label", r, r, req)
                    self.state.db.execute(
                        f"UPDATE structures SET status='labeling' WHERE id IN ({','.join('?' * len(ids))})", ids
                    )
            self.say(f"round {r}: {len(todo)} structures sent to the {self.cfg.labeler.kind} labeler")
            return
        if self._open_tasks(r, "label"):
            return
        n_new = len([x for x in self.state.label_rows("ok", "train") if x["round"] == r])
        if r > 0 and n_new == 0:
            self.say(f"round {r}: no new training labels; keeping generation {r - 1}")
            self._stop_or_next(r, keep_generation=True)
            return
        self._set_phase("train")

    def _phase_train(self) -> None:
        g = self.round
        if not [t for t in self.state.tasks(function="train") if t["generation"] == g]:
            self._start_training(g)
            return
        if self._open_tasks(g, "train"):
            return
        if len(self.state.models(g)) < self.cfg.training.ensemble_size:
            self._stop(f"training of generation {g} failed (see quarantined tasks)", kind="failed")
            return
        self._set_phase("evaluate")

    def _export_dataset(self, g: int) -> None:
        """Record generation g's training set (all training labels so far) and export it."""
        try:
            hashes = self.store.version(g)  # recorded before a restart: the set never changes
        except DatasetError:
            hashes = self.store.select("train", max_round=g)
            self.store.record_version(g, hashes)
        final = self.dir / "datasets" / f"gen-{g:03d}"
        out = self.store.export(g, final, type_map=self.cfg.campaign.type_map)
        crash_point("after_export")
        ids = [self.store.frame(h)["structure_id"] for h in hashes]
        with self.state.transaction():
            self.state.db.execute(
                "INSERT OR REPLACE INTO datasets(generation, path, systems, structure_ids, n_frames, created) "
                "VALUES(?,?,?,?,?,?)",
                (g, out.path, json.dumps(list(out.systems)), json.dumps(ids), out.n_frames, time.time()),
            )

    def _test_frames_extxyz(self) -> tuple[str, int]:
        rows = self.state.label_rows("ok", "test")
        return "".join(r["extxyz"] for r in rows), len(rows)

    def _add_eval_task(self, key: str, g: int, scope: str, frames_extxyz: str,
                       oob_members: tuple[tuple[int, ...], ...] = ()) -> None:
        """Evaluate generation g's ensemble on labeled held-out frames (metrics scope ``scope``)."""
        req = UQRequest(
            task_key=key, workdir=self.workdir(key),
            model_paths=tuple(m["path"] for m in self.state.models(g)),
            frames_extxyz=frames_extxyz, confidence=self.cfg.selection.confidence, oob_members=oob_members,
        ).to_dict()
        req["_scope"] = scope
        self._add_task(key, "uq", self.round, g, req)

    def _add_calibration_tasks(self, g: int) -> int:
        """Generation g's evaluation on the held-out test frames and on its out-of-bag
        frames (driver.calibrate); returns the number of test frames."""
        from driver.calibrate import oob_frames

        text, n = self._test_frames_extxyz()
        if n and self.state.task(f"eval:g{g}") is None:
            self._add_eval_task(f"eval:g{g}", g, "generation", text)
        hashes, members = oob_frames(self.state, g)
        if hashes and self.state.task(f"oob:g{g}") is None:
            frames = "".join(self.store.frame(h)["extxyz"] for h in hashes)
            self._add_eval_task(f"oob:g{g}", g, "oob", frames, oob_members=members)
        return n

    def _phase_evaluate(self) -> None:
        r, g = self.round, self.round
        key = f"eval:g{g}"
        if self.state.task(key) is None:
            with self.state.transaction():
                n = self._add_calibration_tasks(g)
            if n == 0:
                self._stop_or_next(r)
            return
        if self._open_tasks(r, "uq"):
            return
        m = self.state.metrics("generation").get(g, {})
        if m:
            self.say(
                f"generation {g} on {int(m.get('n_test', 0))} held-out frames: energy RMSE "
                f"{m.get('energy_rmse_meV_atom', float('nan')):.2f} meV/atom, force RMSE "
                f"{m.get('force_rmse_eV_A', float('nan')):.3f} eV/A"
            )
        self._stop_or_next(r)

    def _stop_or_next(self, r: int, keep_generation: bool = False) -> None:
        c = self.cfg.campaign
        n_labels = len(self.state.label_rows(status=None))
        if r >= c.max_rounds:
            self._stop(f"round budget of {c.max_rounds} rounds reached")
        elif c.max_label_calls and n_labels >= c.max_label_calls:
            self._stop(f"labeler budget of {c.max_label_calls} calls reached ({n_labels} used)")
        else:
            if keep_generation:  # no new data: carry the ensemble over unchanged
                with self.state.transaction():
                    for mrow in self.state.models(r - 1):
                        self.state.db.execute(
                            "INSERT OR IGNORE INTO models SELECT ?, member, task_key, path, checkpoint, lcurve_path, "
                            "lcurve_last, n_train_frames, wall_s, created FROM models WHERE generation=? AND member=?",
                            (r, r - 1, mrow["member"]),
                        )
            self._set_phase("async" if self.cfg.steering.mode == "async" else "explore", r + 1)

    def _phase_explore(self) -> None:
        r = self.round
        g = r - 1
        md_keys = [row["key"] for row in self.state.tasks(function="md") if row["round"] == r]
        if not md_keys:
            n = len(self._sweep())
            with self.state.transaction():
                for _ in range(n):  # one sweep, the same tasks the asynchronous mode creates
                    self._create_exploration(r, g)
            self.say(f"round {r}: exploring with generation {g}: {n} MD runs")
            return
        if self._open_tasks(r, "md") or self._open_tasks(r, "uq"):
            return
        self._set_phase("select")

    def _candidates(self, rows) -> list[Candidate]:
        from remote_al.structures import check_structure, from_extxyz

        s = self.cfg.selection
        out = []
        for row in rows:
            screened = self._screened.get(row["id"])
            if screened is None:
                a = from_extxyz(row["extxyz"])[0]
                chk = check_structure(a, min_dist_A=s.min_distance_A)
                screened = self._screened[row["id"]] = (chk, fingerprint(a) if chk.ok else None)
            chk, fp = screened
            out.append(Candidate(row["id"], row["energy_width"], row["force_width"], chk.ok, chk.reason, fp))
        return out

    def force_threshold(self) -> float:
        """The configured threshold, or the latest generation's calibrated one."""
        s = self.cfg.selection
        if s.force_threshold_mode == "calibrated":
            row = self.state.db.execute(
                "SELECT value FROM metrics WHERE scope='generation' AND name='force_threshold' "
                "ORDER BY idx DESC LIMIT 1"
            ).fetchone()
            if row and row[0] is not None:
                return float(row[0])
        return s.force_threshold

    def _policy(self, cap: int) -> SelectionPolicy:
        s = self.cfg.selection
        return SelectionPolicy(self.force_threshold(), s.force_upper, s.energy_threshold, cap, s.dedup_tolerance_A)

    def _apply_decisions(self, r: int, decisions, test_ids) -> dict[str, int]:
        """Store decisions and statuses (inside the caller's transaction); returns counts."""
        status_of = {"label": "selected", "confident": "confident", "unphysical": "unphysical",
                     "filtered": "filtered", "duplicate": "duplicate", "skipped": "skipped"}
        counts: dict[str, int] = {}
        for sid in test_ids:
            self.state.decide(r, sid, "test", "random held-out frame for evaluation (never trained on)")
            self.state.update_structure(sid, status="selected", split="test", reason="held-out audit frame")
            counts["test"] = counts.get("test", 0) + 1
        for d in decisions:
            self.state.decide(r, d.id, d.decision, d.reason)
            self.state.update_structure(d.id, status=status_of[d.decision], reason=d.reason)
            counts[d.decision] = counts.get(d.decision, 0) + 1
        return counts

    def _pick_tests(self, r: int, cands, n: int, salt: int = 0) -> set[int]:
        s = self.cfg.selection
        rng = random.Random(self.cfg.campaign.seed * 31 + r * 1009 + salt)
        sane = [c.id for c in cands if c.filter_ok and c.force_width is not None and c.force_width <= s.force_upper]
        return set(rng.sample(sane, min(n, len(sane))))

    def _update_round_metrics(self, r: int) -> dict:
        """Per-round numbers from the structures explored in round r (both modes)."""
        thr, upper = self.force_threshold(), self.cfg.selection.force_upper
        rows = self.state.db.execute(
            "SELECT force_width, status FROM structures WHERE origin='md' AND round=?", (r,)
        ).fetchall()
        dec = dict(self.state.db.execute(
            "SELECT decision, COUNT(*) FROM decisions WHERE round=? GROUP BY decision", (r,)
        ).fetchall())
        widths = [w for w, _ in rows if w is not None]
        evaluated = [w for w, st in rows if w is not None and st != "filtered"]
        share = sum(1 for w in evaluated if w <= thr) / len(evaluated) if evaluated else 0.0
        m = {
            "n_explored": len(rows), "n_selected": dec.get("label", 0), "n_confident": dec.get("confident", 0),
            "n_unphysical": dec.get("unphysical", 0), "n_filtered": dec.get("filtered", 0),
            "n_duplicate": dec.get("duplicate", 0), "n_skipped": dec.get("skipped", 0), "n_test": dec.get("test", 0),
            "confident_share": share,
            "force_width_median": float(np.median(widths)) if widths else None,
            "force_width_p90": float(np.percentile(widths, 90)) if widths else None,
            "force_width_max": float(np.max(widths)) if widths else None,
            "n_above_upper": sum(1 for w in widths if w > upper),
            "force_threshold": thr,
        }
        for name, v in m.items():
            self.state.db.execute(
                "INSERT INTO metrics(scope, idx, name, value) VALUES('round',?,?,?) "
                "ON CONFLICT(scope, idx, name) DO UPDATE SET value=excluded.value", (r, name, v),
            )
        return m

    def _phase_select(self) -> None:
        r = self.round
        cfg = self.cfg
        cands = self._candidates(self.state.structures(round=r, status="candidate"))
        test_ids = self._pick_tests(r, cands, cfg.test.n_per_round)
        decisions = select([c for c in cands if c.id not in test_ids], self._policy(cfg.selection.max_per_round))
        with self.state.transaction():
            counts = self._apply_decisions(r, decisions, test_ids)
            m = self._update_round_metrics(r)
        share = m["confident_share"]
        self.say(
            f"round {r}: {len(cands)} frames explored, confident share {share:.2f}, "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
        if share >= cfg.selection.converged_share and counts.get("label", 0) == 0:
            self._stop(f"converged: {share:.1%} of explored frames confident (target {cfg.selection.converged_share:.0%})",
                       kind="converged")
            return
        self._set_phase("label")

    # ------------------------------------------------------- asynchronous mode
    def _sweep(self) -> list[tuple]:
        """One exploration sweep: (spec, temperature, pressure or None, walker) for every
        combination of each structure's schedule ([exploration], overridden per structure)."""
        e = self.cfg.exploration
        # relaxation explorations first: they probe where the volume curve is read off
        n_members = self.cfg.training.ensemble_size
        # member-major, so that a round that fills its cap early has seen every structure
        out = [(spec, 0.0, "relax", m) for m in range(n_members) for spec in self.cfg.structures] if e.relax else []
        for spec in self.cfg.structures:
            ensemble = spec.ensemble or e.ensemble
            if ensemble == "npt":
                pressures = spec.pressures_GPa or e.pressures_GPa or (e.pressure_GPa,)
            else:
                pressures = (None,)
            for t in spec.temperatures_K or e.temperatures_K:
                for p in pressures:
                    out += [(spec, t, p, w) for w in range(e.walkers)]
        return out

    def _retrain_after(self) -> int:
        return self.cfg.steering.retrain_after or self.cfg.selection.max_per_round

    def _new_train_labels(self, g: int) -> int:
        """Training labels of rounds up to g not yet in generation ``g - 1``'s dataset."""
        prev = self.state.db.execute("SELECT structure_ids FROM datasets WHERE generation=?", (g - 1,)).fetchone()
        used = set(json.loads(prev[0])) if prev else set()
        return sum(1 for x in self.state.label_rows("ok", "train") if x["structure_id"] not in used and x["round"] <= g)

    def _select_batch(self, r: int, ids: list[int]) -> None:
        """Asynchronous selection of one exploration's frames (inside _record's transaction)."""
        cfg = self.cfg
        if self.state.get_meta("stop_reason"):
            return
        rows = self.state.structures(id=ids, status="candidate")
        cands = self._candidates(rows)
        n_tests = self.state.db.execute(
            "SELECT COUNT(*) FROM decisions WHERE round=? AND decision='test'", (r,)
        ).fetchone()[0]
        per_batch = -(-cfg.test.n_per_round // max(1, len(self._sweep())))
        test_ids = self._pick_tests(r, cands, min(per_batch, cfg.test.n_per_round - n_tests), salt=min(ids))
        chosen_rows = self.state.db.execute(
            "SELECT s.* FROM structures s JOIN decisions d ON d.structure_id = s.id "
            "WHERE d.round=? AND d.decision='label'", (r,)
        ).fetchall()
        already = [c for c in self._candidates(chosen_rows)]
        budget = cfg.campaign.max_label_calls
        cap, note = cfg.selection.max_per_round, ""
        k = cfg.selection.max_per_exploration
        if k and len(already) + k < cap:
            cap, note = len(already) + k, f"the cap of {k} per exploration"
        if budget:
            used = self.state.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            open_ids = self.state.db.execute("SELECT COUNT(*) FROM structures WHERE status='labeling'").fetchone()[0]
            cap = min(cap, len(already) + max(0, budget - used - open_ids))
        policy = dataclasses.replace(self._policy(cap), cap_note=note)
        decisions = select([c for c in cands if c.id not in test_ids], policy, already_chosen=already)
        self._apply_decisions(r, decisions, test_ids)
        self._create_label_tasks(r, [d.id for d in decisions if d.decision == "label"] + sorted(test_ids))
        self._update_round_metrics(r)

    def _create_label_tasks(self, r: int, ids: list[int]) -> None:
        from remote_al.structures import from_extxyz, to_extxyz

        bs = self.cfg.labeler.batch_size
        for i in range(0, len(ids), bs):
            chunk = ids[i : i + bs]
            rows = self.state.structures(id=chunk)
            key = f"label:r{r}:{chunk[0]}-{chunk[-1]}"
            req = LabelRequest(
                task_key=key, workdir=self.workdir(key), labeler=self.cfg.labeler.kind,
                structure_ids=tuple(x["id"] for x in rows),
                structures_extxyz=to_extxyz([from_extxyz(x["extxyz"])[0] for x in rows]),
                settings=dict(self.cfg.labeler.settings),
            ).to_dict()
            self._add_task(key, "label", r, r, req)
            self.state.db.execute(
                f"UPDATE structures SET status='labeling' WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )

    def _phase_async(self) -> None:
        """Steady state, pipelined. ``round`` r is the label round: labels selected now go
        into generation r. MD/UQ run with the current generation on free GPU slots; each
        exploration is selected from as soon as its UQ returns and its labels go to the
        CPU at once; generation r starts training as soon as ``retrain_after`` new labels
        arrived (round becomes r + 1 and exploration with the current generation goes on
        during training); a finished generation replaces the ensemble for every MD task
        created afterwards."""
        cfg = self.cfg
        r = self.round
        g_cur = self._current_generation()
        stopping = bool(self.state.get_meta("stop_reason"))
        training = [t for t in self.state.tasks(function="train") if t["generation"] > g_cur]
        training_open = any(t["status"] in ("pending", "submitted") for t in training)
        if training and not training_open:
            g_new = max(t["generation"] for t in training)
            if len(self.state.models(g_new)) < cfg.training.ensemble_size:
                self._stop(f"training of generation {g_new} failed (see quarantined tasks)", kind="failed")
                return
            self._generation_ready(g_new)
            return
        if stopping:  # drain what is in flight, start nothing new
            if not self._open_tasks():
                self._set_phase("final_eval")
            return
        last = cfg.campaign.max_rounds
        if not training_open and r <= last:
            new = self._new_train_labels(r)
            open_r = [t for t in self._open_tasks() if t["round"] <= r and (
                t["function"] in ("label", "md") or (t["function"] == "uq" and t["key"].startswith("uq:md")))]
            drained = not open_r and self._explorations_exhausted(r, g_cur)
            # the last generation waits for every label of its round: nothing paid for is left untrained
            enough = new >= self._retrain_after() and r < last
            if enough or (drained and new > 0):
                self._start_training(r, next_round=r + 1)
                return
            if drained and new == 0:
                why, kind = self._no_more_work_reason(r)
                self._stop(why, kind=kind)
                return
        # keep the GPU busy: a new exploration whenever a GPU slot would otherwise idle, for
        # the first label round (this one, or up to `lookahead_rounds` ahead) that wants more
        if self._gpu_idle():
            ahead = cfg.steering.lookahead_rounds
            # looking ahead only fills GPU slots that a queued training would not take
            train_queued = any(t["status"] == "pending" for t in training)
            for rho in range(r, min(last, r + ahead) + 1):
                if rho > r and train_queued:
                    break
                if not self._explorations_exhausted(rho, g_cur):
                    self._create_exploration(rho, g_cur)
                    break

    def _current_generation(self) -> int:
        return int(self.state.get_meta("current_generation", "0"))

    def _no_more_work_reason(self, r: int) -> tuple[str, str]:
        """Why an asynchronous round has nothing left to do, and the stop kind."""
        budget = self.cfg.campaign.max_label_calls
        used = self.state.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        if budget and used >= budget:
            return f"labeler budget of {budget} calls reached ({used} used)", "budget"
        m = self.state.metrics("round").get(r, {})
        share = m.get("confident_share")
        if share is not None and share >= self.cfg.selection.converged_share:
            return (f"converged: {share:.1%} of explored frames confident "
                    f"(target {self.cfg.selection.converged_share:.0%})", "converged")
        return f"no uncertain structures left to label after {self.cfg.steering.max_sweeps_per_generation} sweeps", "budget"

    def _gpu_idle(self) -> bool:
        """Room for another exploration: fewer explorations (MD and their UQ) open than GPU
        slots. Training queued behind does not block it: explorations are submitted first,
        so MD with the current ensemble interleaves with a generation's training."""
        open_explore = [t for t in self._open_tasks() if t["function"] == "md"
                        or (t["function"] == "uq" and t["key"].startswith("uq:md"))]
        return len(open_explore) < self.backend.slots("gpu")

    def _explorations_exhausted(self, r: int, g: int) -> bool:
        """No more explorations for label round r (with generation g)."""
        md_r = [t for t in self.state.tasks(function="md") if t["round"] == r]
        if len(md_r) >= len(self._sweep()) * self.cfg.steering.max_sweeps_per_generation:
            return True
        selected = self.state.db.execute(
            "SELECT COUNT(*) FROM decisions WHERE round=? AND decision='label'", (r,)
        ).fetchone()[0]
        if selected >= self.cfg.selection.max_per_round:
            return True
        budget = self.cfg.campaign.max_label_calls
        if budget and self.state.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] >= budget:
            return True
        # converged window: the last K explorations of this round were confident enough
        k = self.cfg.steering.converged_window or len(self._sweep())
        done_md = [t for t in md_r if t["status"] == "done"]
        if len(md_r) >= k and len(done_md) == len(md_r):
            keys = [t["key"] for t in done_md[-k:]]
            rows = self.state.db.execute(
                f"SELECT force_width, status FROM structures WHERE source_task IN ({','.join('?' * len(keys))})", keys
            ).fetchall()
            ws = [w for w, st in rows if w is not None and st != "filtered"]
            thr = self.force_threshold()
            if ws and len(ws) == len(rows) and sum(w <= thr for w in ws) / len(ws) >= self.cfg.selection.converged_share:
                return True
        return False

    def _md_guard(self, models) -> dict:
        """MD stops early on overlapping atoms, or when the ensemble leaves its trust window."""
        out = {"stop_min_distance_A": max(0.3, 0.8 * self.cfg.selection.min_distance_A)}
        if self.cfg.exploration.guard:
            out.update(stop_force_width=self.cfg.selection.force_upper,
                       guard_model_paths=tuple(m["path"] for m in models))
        return out

    def _create_exploration(self, r: int, g: int) -> None:
        from remote_al.structures import to_extxyz

        cfg = self.cfg
        models = self.state.models(g)
        n = sum(1 for t in self.state.tasks(function="md") if t["round"] == r)
        sweep = self._sweep()
        spec, t, p, w = sweep[n % len(sweep)]
        k = n // len(sweep)
        e = cfg.exploration
        common = dict(n_frames=spec.n_frames or e.n_frames, seed=cfg.campaign.seed * 7919 + r * 101 + n)
        if p == "relax":  # member w relaxes the built structure (as the volume phase does; ASE in every engine)
            key = f"md:r{r}:{spec.name}:relax:m{w}" + (f":s{k}" if k else "")
            req = MDRequest(
                task_key=key, workdir=self.workdir(key), model_path=models[w % len(models)]["path"],
                structure_extxyz=to_extxyz(build_structure(spec)), ensemble="relax", temperature_K=0.0,
                steps=e.relax_steps, engine="ase", stop_min_distance_A=self._md_guard(models)["stop_min_distance_A"],
                **common,
            ).to_dict()
        else:
            key = f"md:r{r}:{spec.name}:T{t:g}" + (f":P{p:g}" if p is not None else "") + f":w{w}" + (f":s{k}" if k else "")
            req = MDRequest(
                task_key=key, workdir=self.workdir(key), model_path=models[(n + r) % len(models)]["path"],
                structure_extxyz=to_extxyz(self.start_structure(spec)), temperature_K=t, steps=spec.steps or e.steps,
                timestep_fs=e.timestep_fs, ensemble="npt" if p is not None else "nvt", pressure_GPa=p or 0.0,
                engine=e.engine, **self._md_guard(models), **common,
            ).to_dict()
        req["_spec"] = spec.name
        self._add_task(key, "md", r, g, req)

    def _start_training(self, g: int, next_round: int | None = None) -> None:
        """Export generation g's training set and create its member tasks (idempotent);
        ``next_round`` moves the label round in the same transaction."""
        cfg = self.cfg
        self._export_dataset(g)
        ds = self.state.db.execute("SELECT * FROM datasets WHERE generation=?", (g,)).fetchone()
        prev = {m["member"]: m["checkpoint"] for m in self.state.models(g - 1)} if g > 0 else {}
        cont = bool(prev) and cfg.training.continue_from_previous
        steps = cfg.training.numb_steps_continue if cont else cfg.training.numb_steps
        with self.state.transaction():
            for m in range(cfg.training.ensemble_size):
                key = f"train:g{g}:m{m}"
                req = TrainRequest(
                    task_key=key, workdir=self.workdir(key), systems=tuple(json.loads(ds["systems"])),
                    type_map=tuple(cfg.campaign.type_map), member=m,
                    seed=cfg.campaign.seed * 1000 + g * 100 + m * 7 + 1,
                    subset_fraction=cfg.training.subset_fraction, numb_steps=steps,
                    deepmd=dict(cfg.training.deepmd), init_model=prev.get(m) if cont else None,
                ).to_dict()
                self._add_task(key, "train", g, g, req)
            if next_round is not None:
                self.state.set_meta("round", str(next_round))
        self.say(
            f"training generation {g}: {cfg.training.ensemble_size} members on {ds['n_frames']} frames, "
            f"{steps} steps{' (continued)' if cont else ''}"
        )

    def _recheck_selections(self, g: int) -> None:
        """Re-score, with generation g, the structures selected with an older generation
        whose label tasks are still queued (one UQ task; inside the caller's transaction).
        Queued labels are not held back meanwhile: whatever is submitted before the answer
        comes is labeled as selected."""
        from remote_al.structures import from_extxyz, to_extxyz

        key = f"uq:recheck:g{g}"
        if self.state.task(key) is not None:
            return
        groups: dict[str, list[int]] = {}
        frames = []
        for t in self.state.tasks(status="pending", function="label"):
            ids = json.loads(t["request"])["structure_ids"]
            stale = self.state.db.execute(
                f"SELECT s.id, s.extxyz FROM structures s JOIN decisions d ON d.structure_id = s.id "
                f"AND d.round = ? AND d.decision = 'label' WHERE s.id IN ({','.join('?' * len(ids))}) "
                "AND s.generation < ? ORDER BY s.id", (t["round"], *ids, g),
            ).fetchall()
            if stale:
                groups[t["key"]] = [x["id"] for x in stale]
                frames += [from_extxyz(x["extxyz"])[0] for x in stale]
        if not groups:
            return
        models = [m["path"] for m in self.state.models(g)]
        req = UQRequest(task_key=key, workdir=self.workdir(key), model_paths=tuple(models),
                        frames_extxyz=to_extxyz(frames), confidence=self.cfg.selection.confidence).to_dict()
        req["_recheck"] = groups
        self._add_task(key, "uq", self.round, g, req)

    def _record_recheck(self, row, result: dict, req: dict) -> None:
        """Drop from still-queued label tasks the structures generation g is now confident
        about (width at or below the threshold) or finds outside its trust window; each
        drop is a decision with its reason. A label task left empty is done with nothing
        to label. The round then explores again for what it is missing."""
        from remote_al.structures import from_extxyz, to_extxyz

        g = row["generation"]
        thr, upper = self.force_threshold(), self.cfg.selection.force_upper
        ids = [sid for group in req["_recheck"].values() for sid in group]
        width = dict(zip(ids, result["force_width"]))
        for sid, ew, fw in zip(ids, result["energy_width"], result["force_width"]):
            self.state.db.execute("UPDATE structures SET energy_width=?, force_width=? WHERE id=?", (ew, fw, sid))
        rounds = set()
        for task_key, group in req["_recheck"].items():
            t = self.state.task(task_key)
            if t is None or t["status"] != "pending":
                continue  # submitted meanwhile: labeled as selected
            treq = json.loads(t["request"])
            drop = {}
            for sid in group:
                w, g_sel = width[sid], self.state.structures(id=sid)[0]["generation"]
                if w <= thr:
                    drop[sid] = ("confident", f"re-checked with generation {g}: force CI width {w:.3f} eV/A "
                                              f"at or below {thr:g} (selected with generation {g_sel})")
                elif w > upper:
                    drop[sid] = ("unphysical", f"re-checked with generation {g}: force CI width {w:.3f} eV/A "
                                               f"above the trust bound {upper:g} (selected with generation {g_sel})")
            if not drop:
                continue
            for sid, (decision, reason) in drop.items():
                self.state.decide(t["round"], sid, decision, reason)
                self.state.update_structure(sid, status=decision, reason=reason)
            rounds.add(t["round"])
            keep = [i for i, sid in enumerate(treq["structure_ids"]) if sid not in drop]
            if not keep:
                self.state.mark_done(task_key, {"labels": [], "dropped": sorted(drop),
                                                "reason": f"nothing left to label after the re-check with generation {g}"})
                continue
            frames = from_extxyz(treq["structures_extxyz"])
            treq["structure_ids"] = [treq["structure_ids"][i] for i in keep]
            treq["structures_extxyz"] = to_extxyz([frames[i] for i in keep])
            self.state.set_request(task_key, treq)
        for r in sorted(rounds):
            self._update_round_metrics(r)
        if rounds:
            n = self.state.db.execute(
                "SELECT COUNT(*) FROM decisions WHERE reason LIKE ?", (f"re-checked with generation {g}:%",)
            ).fetchone()[0]
            self.state.event("recheck", f"generation {g} re-checked queued selections: {n} no longer labeled")

    def _generation_ready(self, g: int) -> None:
        """Generation g is complete: make it current, evaluate it, check the round budget."""
        with self.state.transaction():
            self._add_calibration_tasks(g)
            self.state.set_meta("current_generation", str(g))
            if self.cfg.steering.mode == "async" and self.cfg.steering.recheck_selections:
                self._recheck_selections(g)
        self.state.event("generation", f"generation {g} is current")
        self.say(f"generation {g} ready; explorations now use it")
        c = self.cfg.campaign
        if g >= c.max_rounds:
            self._stop(f"round budget of {c.max_rounds} rounds reached", phase="async")

    def _phase_final_eval(self) -> None:
        gens = sorted({m["generation"] for m in self.state.models()})
        text, n = self._test_frames_extxyz()
        if n == 0 or not gens:
            self._set_phase("done")
            return
        created = False
        for g in gens:
            key = f"final-eval:g{g}"
            if self.state.task(key) is None:
                self._add_eval_task(key, g, "final", text)
                created = True
        if created:
            self.say(f"final evaluation of {len(gens)} generations on {n} held-out frames")
            return
        if self._open_tasks():
            return
        fm = self.state.metrics("final")
        for g in gens:
            m = fm.get(g, {})
            if m:
                self.say(
                    f"  generation {g}: energy RMSE {m.get('energy_rmse_meV_atom', float('nan')):.2f} meV/atom, "
                    f"force RMSE {m.get('force_rmse_eV_A', float('nan')):.3f} eV/A, "
                    f"{m.get('force_inside_ci', float('nan')):.0%} of force errors inside the 95% CI"
                )
        self._set_phase("volume" if self.cfg.volume.enabled else "done")

    def _phase_volume(self) -> None:
        """Relax each composition with every member of the final ensemble (and a few with
        the labeler): the volume-change curve of driver.volume."""
        from driver import volume

        gens = sorted({m["generation"] for m in self.state.models()})
        if not gens:
            self._set_phase("done")
            return
        g = gens[-1]
        created = 0
        with self.state.transaction():
            for key, fn, req in volume.relax_requests(self.cfg, g, [m["path"] for m in self.state.models(g)],
                                                      self.workdir):
                if self.state.task(key) is None:
                    self._add_task(key, fn, self.round, g, req)
                    created += 1
        if created:
            self.say(f"volume curve: {created} relaxations (ensemble generation {g}; labeler checks: "
                     f"{len(volume.check_specs(self.cfg))})")
            return
        if self._open_tasks(function="relax") or self._open_tasks(function="relax_label"):
            return
        for line in volume.format_table(volume.summarize(self.state, self.cfg)):
            self.say("  " + line)
        self._set_phase("done")

    def _phase_done(self) -> None:
        return

    # -------------------------------------------------------------- progress
    def _progress(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_status < self.status_every_s:
            return
        self._last_status = now
        counts = self.state.task_counts()
        running = {p: 0 for p in ("gpu", "cpu")}
        for key in self.inflight:
            running[self.state.task(key)["pool"]] += 1
        pending = sum(v for (f, st), v in counts.items() if st == "pending")
        n_labels = self.state.db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0]
        n_failed = self.state.db.execute("SELECT COUNT(*) FROM labels WHERE status='failed'").fetchone()[0]
        budget = self.cfg.campaign.max_label_calls
        rm = self.state.metrics("round").get(self.round, {})
        unc = ""
        if rm.get("force_width_median") is not None:
            unc = f" | force CI width median {rm['force_width_median']:.3f} p90 {rm['force_width_p90']:.3f} eV/A"
        elapsed = now - float(self.state.get_meta("started", str(now)))
        self.say(
            f"[{_hms(elapsed)}] round {self.round} {self.phase} | running gpu {running['gpu']}/{self.backend.slots('gpu')} "
            f"cpu {running['cpu']}/{self.backend.slots('cpu')}, queued {pending} | labels {n_labels}"
            f"{'/' + str(budget) if budget else ''} ok, {n_failed} failed{unc}"
        )


# How a campaign stopped: "converged" (its own criterion), "budget" (rounds, labels, wall
# time, no more work) or "failed" (a generation could not be trained, no training data).
STOP_KINDS = ("converged", "budget", "failed")

_CRASH_VISITS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: ``REMOTE_AL_CRASH_AT=name:N`` kills the driver with SIGKILL at the N-th
    visit of the named point, to prove that no moment loses or duplicates work."""
    spec = os.environ.get("REMOTE_AL_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _CRASH_VISITS[name] = _CRASH_VISITS.get(name, 0) + 1
    if _CRASH_VISITS[name] == int(nth or 1):
        import signal

        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _energy_by_composition(frames_extxyz: str, energy_error) -> dict[str, float]:
    """Mean (bias) and RMSE of the energy error per composition, meV/atom: metric names
    ``energy_bias_meV_atom:<composition>`` and ``energy_rmse_meV_atom:<composition>``."""
    from remote_al.structures import composition_label, from_extxyz

    comps = [composition_label(a) for a in from_extxyz(frames_extxyz)]
    e = np.asarray(energy_error, dtype=float) * 1000
    out = {}
    for c in sorted(set(comps)):
        mine = e[[k for k, x in enumerate(comps) if x == c]]
        out[f"energy_bias_meV_atom:{c}"] = float(mine.mean())
        out[f"energy_rmse_meV_atom:{c}"] = float(np.sqrt(np.mean(mine ** 2)))
    return out


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _slim(function: str, result: dict) -> dict:
    """What to keep of a result in the tasks table (frames live in the structures table)."""
    out = dict(result)
    if function == "md":
        out.pop("frames_extxyz", None)
    if function == "relax":
        out.pop("relaxed_extxyz", None)  # in the task's workdir: relaxed.extxyz
    if function == "label":
        out["labels"] = [
            {k: v for k, v in lab.items() if k not in ("forces", "stress", "magmoms")} for lab in result["labels"]
        ]
    return out


def open_campaign_state(directory: str | Path) -> State:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no campaign state at {path}")
    return State(path)


__all__ = ["Campaign", "CampaignLock", "open_campaign_state"]
