"""The steering engine: a durable reconciler over the campaign state, and the only code
that changes it.

Each tick: collect finished futures and record their results (the kind's recorders, in
one transaction that also marks the task done and creates the follow-up tasks), advance
the campaign phase where its work is complete, submit pending tasks up to each pool's
free slots, then wait for the next future. Nothing is held only in memory: a driver
killed at any moment resumes from the state file, reattaches to tasks in flight (or
resubmits those the backend has no record of), and never stores a label twice.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Callable, Mapping

from driver.backends.base import Backend
from driver.campaign import phases_async, phases_end, phases_sync
from driver.campaign.apply import Applier
from driver.campaign.hooks import Hooks
from driver.campaign.lock import CampaignLock
from driver.campaign.plan import Phase, StopKind
from driver.campaign.progress import progress_line
from driver.campaign.recorders import RECORDERS, slim
from driver.campaign.retry import retry_quarantined_tasks
from driver.campaign.rules import check_budgets
from driver.campaign.tasks import Task, TaskKind
from driver.campaign.view import CampaignView
from driver.config import functions_used
from driver.config_models import CampaignConfig
from driver.dataset import DatasetStore
from driver.errors import BackendUnavailable, TaskFailed
from driver.placement import Placement, StagingFailed
from driver.preflight import preflight
from driver.progress import ProgressBars, running_progress
from driver.code_watch import CodeChanged, CodeWatch
from driver.state import State, StateMeta
from driver.team import Site
from driver.transfer import Transfer, TransferError, TransferNeedsAction

STATE_FILE = "state.sqlite"
STAGING_POLL_S = 5.0  # how often a task waiting on a staging transfer looks again
BARS_EVERY_S = 2.0  # how often the progress bars read the running tasks' files

PHASES = {
    Phase.GENERATE: phases_sync.generate, Phase.LABEL: phases_sync.label, Phase.TRAIN: phases_sync.train,
    Phase.EVALUATE: phases_sync.evaluate, Phase.EXPLORE: phases_sync.explore, Phase.SELECT: phases_sync.select_round,
    Phase.ASYNC: phases_async.async_phase, Phase.FINAL_EVAL: phases_end.final_eval,
    Phase.VOLUME: phases_end.volume_curve, Phase.DONE: phases_end.done,
}
# submission order: explorations for the current label round feed the CPU and go first; a
# generation's training comes next, before explorations that look ahead with an older ensemble
SUBMIT_RANK = {"uq": 0, "md": 1, "label": 1, "train": 2}


class Campaign:
    def __init__(self, cfg: CampaignConfig, backend: Backend, say: Callable[[str], None] | None = None,
                 status_every_s: float = 20.0, sites: Mapping[str, Site] | None = None,
                 transfer: Transfer | None = None, hooks: Hooks | None = None, progress_bars: bool = True,
                 code_watch: CodeWatch | None = None):
        preflight(cfg)  # a bad campaign creates nothing, from the CLI or from Python
        backend.require_functions(functions_used(cfg))  # e.g. a team file older than a function
        self.cfg = cfg
        self.dir = cfg.directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = State(self.dir / STATE_FILE)
        self.store = DatasetStore(self.state)
        self.backend = backend
        self.say = say or (lambda msg: print(msg, flush=True))
        self.status_every_s = status_every_s
        self.hooks = hooks or Hooks()
        self.code = code_watch or CodeWatch()  # remote-al upgraded under the driver: stop before recording
        self.progress_bars = progress_bars  # rich bars of running tasks, drawn on a terminal only
        self._bars: ProgressBars | None = None
        self._last_bars = 0.0
        self.inflight: dict[str, Future] = {}
        self._pool_blocked_until: dict[str, float] = {}
        self._staging_until: dict[str, float] = {}  # task key -> when to look at its staging again
        self._last_status = 0.0
        self._unattached = False  # tasks of an earlier driver not reattached yet (backend unreachable)
        # pools on other filesystems (team file [sites]): request paths and staging
        self.placement = Placement(self.dir, sites, transfer, meta=StateMeta(self.state))
        self.view = CampaignView(cfg, self.state, self.store, backend.slots("gpu"), self.say)
        self.applier = Applier(self.state, self.store, self.placement, self.view, self.say, self.hooks)

    # ------------------------------------------------------------- lifecycle
    @property
    def stop_kind(self) -> str:
        """The kind of the recorded stop (``StopKind``), "" while running."""
        return self.state.get_meta("stop_kind", "") or ""

    @property
    def phase(self) -> str:
        return self.view.phase.value

    @property
    def round(self) -> int:
        return self.view.round

    def run(self, max_ticks: int | None = None, retry_quarantined: bool = False) -> str:
        """Run until the campaign is done (returns the stop reason) or ``max_ticks``.
        ``retry_quarantined``: first put the quarantined tasks (but labels) back in the
        queue, once their cause is fixed."""
        lock = CampaignLock(self.dir)
        lock.acquire()
        self._bars = ProgressBars().__enter__() if self.progress_bars else None
        try:
            self._begin()
            if retry_quarantined:
                self.say(retry_quarantined_tasks(self.state))
            self.backend.start()
            self._reattach()
            ticks = idle_ticks = 0
            while self.view.phase != Phase.DONE:
                self._check_code()
                if self._unattached:
                    self._reattach()
                self._collect(timeout=0)
                before = self._fingerprint()
                self._advance()
                if self.view.phase == Phase.DONE:
                    break
                self._submit()
                if not self.inflight and self._fingerprint() == before and not self.state.tasks(status="pending"):
                    idle_ticks += 1
                    if idle_ticks >= 5:
                        raise RuntimeError(
                            f"the steering loop cannot make progress in round {self.view.shown_round}, phase {self.phase}: "
                            "nothing is running or queued and no rule creates work; state is saved in "
                            f"{self.state.path} (please report this)")
                    time.sleep(0.2)
                else:
                    idle_ticks = 0
                self._progress()
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    return "paused"
                self._collect(timeout=self._wait_time())
            reason = self.view.stop_reason
            self._progress(force=True)
            self.say(f"campaign {self.cfg.campaign.name} done: {reason}")
            return reason or "done"
        finally:
            if self._bars is not None:
                self._bars.__exit__(None, None, None)
            if self.view.phase == Phase.DONE:
                self.backend.finish()  # nothing of the campaign is left to run
            else:
                self.backend.shutdown()  # what runs remotely (or in the local engine service) goes on
            lock.release()

    def _begin(self) -> None:
        from driver.config import config_to_dict

        if self.cfg.source and Path(self.cfg.source).exists():
            dest = self.dir / "campaign.toml"
            if Path(self.cfg.source).resolve() != dest.resolve():
                shutil.copyfile(self.cfg.source, dest)
        with self.state.transaction():
            self.state.set_meta("config_json", json.dumps(config_to_dict(self.cfg)))
        if self.state.get_meta("phase") is None:
            with self.state.transaction():
                self.state.set_meta("phase", Phase.GENERATE.value)
                self.state.set_meta("round", "0")
                self.state.set_meta("started", str(time.time()))
            self.state.event("campaign", f"campaign {self.cfg.campaign.name} started")
            self.say(f"campaign {self.cfg.campaign.name}: new, state in {self.state.path}")
        else:
            self.say(f"campaign {self.cfg.campaign.name}: resuming at round {self.view.shown_round}, phase {self.phase}")

    def _check_code(self) -> None:
        try:
            self.code.check()
        except CodeChanged as exc:
            self.state.event("code-changed", str(exc))
            self.say(str(exc))
            raise

    def _fingerprint(self) -> tuple:
        return (self.phase, self.round, *self.state.task_totals(), self.view.stop_reason)

    # ------------------------------------------------------------- phases
    def _advance(self) -> None:
        # Phases that complete at once chain within one tick, and a rule that creates work
        # runs again at once (e.g. one exploration per idle GPU slot), instead of waiting
        # for the next task to finish.
        for _ in range(8):
            before = self._fingerprint()
            self.applier.apply(check_budgets(self.view))
            self.applier.apply(PHASES[self.view.phase](self.view))
            if self._fingerprint() == before:
                return

    # ----------------------------------------------------------- the backend
    def _reattach(self) -> None:
        """Futures for the tasks an earlier driver submitted (those not in flight here):
        reattached, or resubmitted when the backend has no record of them. A backend that
        cannot be reached now is asked again at the next tick."""
        rows = [r for r in self.state.tasks(status="submitted") if r["key"] not in self.inflight]
        self._unattached = False
        if not rows:
            return
        items = [(r["pool"], r["function"], r["backend_id"], r["key"]) for r in rows]
        try:
            many = getattr(self.backend, "reattach_many", None)
            futures = many(items) if many is not None else [self.backend.reattach(*item) for item in items]
        except BackendUnavailable as exc:
            self.say(f"cannot reach the backend to reattach {len(rows)} tasks: {exc}; will retry")
            self._unattached = True
            return
        with self.state.transaction():
            for row, fut in zip(rows, futures):
                if fut is None:
                    self.state.mark_retry(row["key"], "backend had no record after restart; resubmitting", 0)
                    self.state.event("resubmit", f"{row['key']}: lost with the previous driver, resubmitting")
                else:
                    self.inflight[row["key"]] = fut
                    self.state.event("reattach", f"{row['key']}: reattached")

    def _submit(self) -> None:
        """Submit pending tasks up to each pool's free slots. A backend with
        ``submit_many`` (Globus Compute) gets each pool's tasks in one call, a few HTTP
        requests whatever their number; the backend ids are stored in one transaction."""
        now = time.time()
        busy: dict[str, int] = {}
        for pool in self.state.pools_of(list(self.inflight)):
            busy[pool] = busy.get(pool, 0) + 1
        r_now = self.round

        def rank(row) -> tuple:
            k = SUBMIT_RANK.get(row["function"], 4)
            if row["function"] == "md" and row["round"] > r_now:
                k = 3
            return (k, row["id"])

        chosen: dict[str, list] = {}
        for row in sorted(self.state.tasks(status="pending"), key=rank):
            pool = row["pool"]
            if row["not_before"] > now or self._pool_blocked_until.get(pool, 0) > now:
                continue
            if busy.get(pool, 0) >= self.backend.slots(pool) or self._staging_until.get(row["key"], 0.0) > now:
                continue
            if not self._staged(row):
                continue
            chosen.setdefault(pool, []).append(row)
            busy[pool] = busy.get(pool, 0) + 1
        for pool, rows in chosen.items():
            many = getattr(self.backend, "submit_many", None)
            if many is not None and len(rows) > 1:
                try:
                    subs = many(pool, [(r["function"], json.loads(r["request"]), r["key"]) for r in rows])
                except BackendUnavailable as exc:
                    self._offline(pool, exc)
                    continue
                except TaskFailed:  # one task refused before sending: find it one by one
                    self._submit_each(pool, rows)
                    continue
                self.hooks.at("after_submit")
                with self.state.transaction():
                    for row, sub in zip(rows, subs):  # a shorter list: the rest stays pending
                        self.state.mark_submitted(row["key"], sub.backend_id)
                        self.inflight[row["key"]] = sub.future
            else:
                self._submit_each(pool, rows)

    def _submit_each(self, pool: str, rows) -> None:
        for row in rows:
            try:
                sub = self.backend.submit(pool, row["function"], json.loads(row["request"]), row["key"])
            except BackendUnavailable as exc:
                self._offline(pool, exc)
                return
            except TaskFailed as exc:  # refused before sending (too large, not allowed)
                self._fail(row, exc)
                continue
            self.hooks.at("after_submit")
            self.state.mark_submitted(row["key"], sub.backend_id)
            self.inflight[row["key"]] = sub.future

    def _offline(self, pool: str, exc: BackendUnavailable) -> None:
        wait_s = min(300.0, max(5.0, self.cfg.backend.retry_backoff_s))
        self._pool_blocked_until[pool] = time.time() + wait_s
        self.state.event("offline", f"{pool} endpoint unavailable: {exc}")
        self.say(f"{pool} endpoint unavailable ({exc}); queued work kept, retrying in {wait_s:.0f} s")

    def _staged(self, row) -> bool:
        """True when the task's inputs are on its pool's site (starting their transfers)."""
        stage = json.loads(row["stage"])
        if not stage:
            return True
        pool = row["pool"]
        try:
            if self.placement.ready(pool, stage):
                return True
        except StagingFailed as exc:
            self.state.count_attempt(row["key"])
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

    def _wait_time(self) -> float:
        pending = self.state.tasks(status="pending")
        if not self.inflight and not pending:
            return 0.0
        if pending and not self.inflight:
            nb = min(max(r["not_before"], self._pool_blocked_until.get(r["pool"], 0.0),
                         self._staging_until.get(r["key"], 0.0)) for r in pending)
            return max(0.05, min(self.status_every_s, nb - time.time()))
        return self.status_every_s

    def _collect(self, timeout: float) -> None:
        if not self.inflight:
            if timeout > 0:
                time.sleep(min(timeout, 1.0))
            return
        done, _ = wait(list(self.inflight.values()), timeout=timeout, return_when=FIRST_COMPLETED)
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
            self._check_code()  # on a change this result stays with the backend for the next driver
            self.hooks.at("before_record")
            try:
                self._record(Task.from_row(row), result)
            except Exception as exc:
                self._fail(row, TaskFailed(f"result could not be recorded: {type(exc).__name__}: {exc}"))
                continue
            self.hooks.at("after_record")
            forget = getattr(self.backend, "forget", None)
            if forget:
                forget(key)

    def _record(self, task: Task, result: dict) -> None:
        """The kind's recorders, each seeing what the previous ones changed, and the task
        marked done: one transaction."""
        with self.applier.batch():
            for recorder in RECORDERS[task.kind]:
                self.applier.apply(recorder(self.view, task, result))
            self.hooks.at("in_record")
            self.state.mark_done(task.key, slim(task.kind, result))

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
            if row["kind"] == TaskKind.LABEL.value:
                req = json.loads(row["request"])
                for sid in req["structure_ids"]:
                    self.state.fail_label(sid, row["key"], req["labeler"], f"label task quarantined: {summary}")
        self.state.event("quarantine", f"{row['key']} quarantined after {attempts} attempts: {summary}")
        self.say(f"task {row['key']} quarantined after {attempts} attempts: {summary}")

    # -------------------------------------------------------------- progress
    def _progress(self, force: bool = False) -> None:
        now = time.time()
        if self._bars is not None and self._bars.shown and now - self._last_bars >= BARS_EVERY_S:
            self._last_bars = now  # each running member's step, force RMSE and time left; MD steps
            self._bars.update(running_progress(self.state, now))
        if not force and now - self._last_status < self.status_every_s:
            return
        self._last_status = now
        running = {"gpu": 0, "cpu": 0}
        for pool in self.state.pools_of(list(self.inflight)):
            running[pool] += 1
        self.say(progress_line(self.view, self.state.task_counts(), running,
                               {p: self.backend.slots(p) for p in running}, now))


__all__ = ["Campaign", "STATE_FILE", "StopKind"]
