"""Progress of running work, read from what the workers write as they go.

- :func:`training_progress`: a DeePMD-kit member in training, from its task workdir:
  the last row of ``lcurve.out`` (step and RMSEs), ``input.json`` (steps asked) and the
  two files' times (time left at the rate so far).
- :func:`md_progress`: an ASE MD exploration, from the ``md_step`` of the last frame
  appended to ``traj.extxyz``.
- :func:`label_progress`: labels done of labels asked, from the campaign state.
- :func:`running_progress`: all of the above for a campaign's submitted tasks (the first
  ``RUNNING_SHOWN``: training members, then MD), and
  :func:`progress_rows` their cells for a table; :class:`ProgressBars` shows them as
  rich progress bars (``remote-al sweep`` does; the campaign loop can, see below).

How a long-running driver shows its members: every few seconds (the campaign loop: at
each status line) call ``bars.update(running_progress(state))`` inside
``with ProgressBars() as bars:``; for work that is not in a campaign state (a sweep),
build the :class:`TaskProgress` list from the workdirs with :func:`training_progress`.

Nothing here changes a file or the state; a workdir that is not there yet (the task
waits in a queue) or a file caught half-written gives ``None``, never an error. The
workdirs must be readable from here: on the local backend they are; with Globus Compute
they are on the endpoint's filesystem unless a site maps them.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from driver.state import State

RUNNING_SHOWN = 20  # running tasks whose progress is read (status table, progress bars)
TAIL_BYTES = 65536  # how much of the end of a trajectory is read for its last step
_MD_STEP = re.compile(rb"md_step=(\d+)")


@dataclass(frozen=True)
class Progress:
    """Where one running task is: ``step`` of ``steps_total``; ``eta_s`` the seconds left
    at the rate so far (None before there is a rate); for training, the last RMSEs."""

    step: int
    steps_total: int
    eta_s: float | None = None
    rmse_e: float | None = None  # eV/atom, training frames
    rmse_f: float | None = None  # eV/Å, training frames

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.steps_total) if self.steps_total > 0 else 0.0


def _eta(step: int, total: int, started: float | None, at: float, now: float) -> float | None:
    """Seconds left: the steps still to go at the rate from ``started`` to ``at`` (when
    ``step`` was written), less the time since ``at``; never below zero."""
    if started is None or step <= 0 or at <= started:
        return None
    rate = step / (at - started)
    return max(0.0, (max(0, total - step)) / rate - max(0.0, now - at))


def _last_row(text: str) -> tuple[list[str], list[float]] | None:
    """The header and the last complete row of an lcurve.out (a row being written, cut
    short or not a number yet, is skipped)."""
    header, rows = None, []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            names = s.lstrip("#").split()
            if names and names[0] == "step":
                header = names
        elif s:
            rows.append(s)
    for row in reversed(rows if header else []):
        try:
            values = [float(x) for x in row.split()]
        except ValueError:
            continue
        if len(values) == len(header):
            return header, values
    return None


def training_progress(workdir: str | os.PathLike, now: float | None = None) -> Progress | None:
    """A training member's progress from its workdir (``lcurve.out``, ``input.json``);
    None before DeePMD-kit wrote its first learning-curve row.

    Time left: the rate from ``input.json`` (written just before ``dp train`` starts, so
    its start-up counts as training time) to ``lcurve.out``'s last change.
    """
    workdir = Path(workdir)
    lcurve, inp = workdir / "lcurve.out", workdir / "input.json"
    try:
        row = _last_row(lcurve.read_text())
        total = int(json.loads(inp.read_text())["training"]["numb_steps"])
        at, started = lcurve.stat().st_mtime, inp.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if row is None:
        return None
    cols = dict(zip(*row))
    step = int(cols["step"])
    return Progress(step=step, steps_total=total, eta_s=_eta(step, total, started, at, now or time.time()),
                    rmse_e=cols.get("rmse_e_trn"), rmse_f=cols.get("rmse_f_trn"))


def md_progress(workdir: str | os.PathLike, steps_total: int, started: float | None = None,
                now: float | None = None) -> Progress | None:
    """An MD exploration's progress from ``workdir/traj.extxyz`` (the ``md_step`` of its
    last frame); None before the first frame. ``started``: when the task started (for
    the time left)."""
    traj = Path(workdir) / "traj.extxyz"
    try:
        size = traj.stat().st_size
        with open(traj, "rb") as fh:
            fh.seek(max(0, size - TAIL_BYTES))
            steps = _MD_STEP.findall(fh.read())
        at = traj.stat().st_mtime
    except OSError:
        return None
    if not steps:
        return None
    step = int(steps[-1])
    return Progress(step=step, steps_total=int(steps_total),
                    eta_s=_eta(step, int(steps_total), started, at, now or time.time()))


def label_progress(state: State) -> tuple[int, int]:
    """``(done, asked)``: structures labeled (ok or failed) and structures sent to a
    labeler so far (every label task's structures, whatever its status)."""
    done = state.label_count()
    return done, max(state.labels_asked(), done)


@dataclass(frozen=True)
class TaskProgress:
    key: str
    function: str  # train | md
    progress: Progress | None  # None: no output yet (starting, or waiting in a queue)


def running_progress(state: State, now: float | None = None,
                     limit: int | None = RUNNING_SHOWN) -> list[TaskProgress]:
    """The progress of the submitted training tasks, then of the MD tasks, each in task
    order: at most ``limit`` of them (None: all), so that thousands of MD runs in flight
    cost ``limit`` file reads, not thousands."""
    out = []
    for row in state.submitted_work(("train", "md"), limit):
        try:
            req = json.loads(row["request"])
            workdir = req["workdir"]
        except (ValueError, KeyError, TypeError):
            continue
        if row["function"] == "train":
            p = training_progress(workdir, now)
        else:
            p = md_progress(workdir, int(req.get("steps") or 0), row["submitted"], now)
        out.append(TaskProgress(row["key"], row["function"], p))
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_rows(tasks: list[TaskProgress]) -> list[list[str]]:
    """Cells of a running-tasks table: task, step of steps, done %, E and F RMSE, time left."""
    rows = []
    for t in tasks:
        p = t.progress
        if p is None:
            rows.append([t.key, "starting", "-", "-", "-", "-"])
            continue
        rows.append([t.key, f"{p.step}/{p.steps_total}", f"{100 * p.fraction:.0f} %",
                     "-" if p.rmse_e is None else f"{p.rmse_e:.3g}", "-" if p.rmse_f is None else f"{p.rmse_f:.3g}",
                     _duration(p.eta_s)])
    return rows


PROGRESS_COLUMNS = ("task", "step", "done", "E RMSE eV/atom", "F RMSE eV/A", "time left")


class ProgressBars:
    """A rich progress bar per running task (training step, force RMSE, time left; MD
    step), redrawn in place on a terminal, silent elsewhere (a log file gets the caller's
    own lines). Use as a context manager; call :meth:`update` with the tasks running now:
    a bar whose task is no longer among them is completed and removed.
    """

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = console or Console(stderr=True)
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
                              TextColumn("{task.fields[rmse]}"), TextColumn("{task.fields[left]}"),
                              console=console, transient=True, disable=not console.is_terminal)
        self._ids: dict[str, int] = {}

    @property
    def shown(self) -> bool:
        """Whether the bars are drawn (a terminal): callers need not read progress otherwise."""
        return not self._bars.disable

    def __enter__(self) -> "ProgressBars":
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    def update(self, tasks: list[TaskProgress]) -> None:
        now = {t.key for t in tasks}
        for key in [k for k in self._ids if k not in now]:
            self._bars.remove_task(self._ids.pop(key))
        for t in tasks:
            _, step, _, _, rmse_f, left = progress_rows([t])[0]
            fields = {"step": step, "rmse": f"F RMSE {rmse_f} eV/A" if rmse_f != "-" else "",
                      "left": f"{left} left" if left != "-" else ""}
            if t.key not in self._ids:
                self._ids[t.key] = self._bars.add_task(t.key, total=None, **fields)
            p = t.progress
            self._bars.update(self._ids[t.key], total=p.steps_total if p else None, completed=p.step if p else 0,
                              **fields)

__all__ = ["PROGRESS_COLUMNS", "Progress", "ProgressBars", "TaskProgress", "label_progress", "md_progress", "progress_rows",
           "running_progress", "training_progress"]
