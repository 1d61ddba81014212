"""Resuming a member's training that was killed, from its own latest checkpoint (issue #26).

A training task that is killed (a worker lost, a driver restart that resubmits the task)
is run again with the same request, in the same folder. ``dp --pt train`` writes a
checkpoint ``model.ckpt-<k>.pt`` every ``save_freq`` steps (``torch.save``, then the
``model.ckpt.pt`` symlink is pointed at it), so the folder usually holds a checkpoint a
few minutes old. ``plan_resume`` decides what the rerun does:

- the run in the folder had another input (input.json, the member's data or the model it
  was continued from differ: ``fingerprint``) or left no checkpoint: start clean;
- otherwise the newest checkpoint that loads (a torn one, killed while written, does not;
  the one before it is tried) at step k: resume with ``dp --pt train --restart`` from
  step k, or, when k is the run's last step (killed while freezing), only freeze; none
  loads: start clean.

Each decision is appended to ``resume.log`` in the folder with its reason.

DeePMD-kit 3.2 stores in ``model.ckpt-<k>.pt`` the step index k - 1 (the step it was
saved at, counted from 0) and ``--restart`` starts at that index, so it would run step k
a second time. The restart therefore goes from a copy (``restart.pt``) whose step is k:
the resumed run trains steps k + 1 .. numb_steps, as many as the rest of an uninterrupted
run, with the optimizer state and learning rate of step k. What is not restored is the
position in DeePMD-kit's random batch order (it starts again from the seed), so a resumed
member sees other batches after step k than an uninterrupted one and ends close to it,
not equal.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CKPT_PREFIX = "model.ckpt"  # training.save_ckpt of remote_al.deepmd_input
LCURVE = "lcurve.out"
FINGERPRINT = "input.sha256"  # the fingerprint of the run this folder holds
RESUME_LOG = "resume.log"
RESTART_CKPT = "restart.pt"
_NUMBERED = re.compile(re.escape(CKPT_PREFIX) + r"-(\d+)\.pt$")


@dataclass(frozen=True)
class ResumePlan:
    """What a rerun in the folder does: ``step`` 0: train from the start; otherwise resume
    from the checkpoint ``checkpoint`` at ``step`` (freeze only when that is the last).
    ``reason``: the decision in words, as logged."""

    step: int = 0
    checkpoint: Path | None = None
    reason: str = ""
    state: Any = None  # the loaded checkpoint


def fingerprint(input_text: str, datadir: Path, init_model: str | None) -> str:
    """A hash of what decides a run's result: the input.json text, every file of the
    member's split data (names and content) and the checkpoint it continues from."""
    h = hashlib.sha256()
    h.update(input_text.encode())
    h.update(b"\0init-model\0" + (init_model or "").encode())
    for f in sorted(p for p in Path(datadir).rglob("*") if p.is_file()):
        h.update(b"\0" + f.relative_to(datadir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def numbered_checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """The ``model.ckpt-<k>.pt`` files of the folder (not the symlink), newest first."""
    out = []
    for p in Path(workdir).glob(f"{CKPT_PREFIX}-*.pt"):
        m = _NUMBERED.match(p.name)
        if m and not p.is_symlink():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def _load(path: Path):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    int(state["model"]["_extra_state"]["train_infos"]["step"])  # a checkpoint of a training
    return state


def plan_resume(workdir: Path, fp: str, numb_steps: int) -> ResumePlan:
    """What a run with fingerprint ``fp`` does in ``workdir`` (see the module doc)."""
    workdir = Path(workdir)
    ckpts = numbered_checkpoints(workdir)
    if not ckpts:
        return ResumePlan(reason="no checkpoint in the folder: training from the start")
    stored = workdir / FINGERPRINT
    if not stored.exists() or stored.read_text().strip() != fp:
        return ResumePlan(reason="the folder holds a run of another input, data or starting model: "
                                 "training from the start")
    torn = []
    for step, path in ckpts:
        if step > numb_steps:
            continue
        try:
            state = _load(path)
        except Exception as exc:  # a torn write: zip errors, EOF, missing keys
            torn.append(f"{path.name} cannot be loaded ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        what = "only freezing" if step >= numb_steps else "resuming"
        return ResumePlan(step, path, "; ".join(torn + [f"{what} from step {step} of {numb_steps}"]), state)
    return ResumePlan(reason="; ".join(torn + ["no checkpoint loads: training from the start"]))


def log(workdir: Path, message: str) -> None:
    with open(Path(workdir) / RESUME_LOG, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def clean(workdir: Path, keep=("data", RESUME_LOG)) -> None:
    """Remove everything of an earlier run from the folder but ``keep``."""
    for p in Path(workdir).iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def prepare_restart(workdir: Path, plan: ResumePlan) -> Path:
    """Make the folder ready for ``dp --pt train --restart``: drop the checkpoints newer
    than the plan's (torn ones), cut lcurve.out to the steps up to it (the resumed run
    appends the rest) and write ``restart.pt``: the checkpoint with its step set to the
    steps it holds (the module doc says why). Returns that file's path."""
    import torch

    workdir = Path(workdir)
    for step, path in numbered_checkpoints(workdir):
        if step > plan.step:
            path.unlink()
    truncate_lcurve(workdir / LCURVE, plan.step)
    state = plan.state
    state["model"]["_extra_state"]["train_infos"]["step"] = plan.step
    out = workdir / RESTART_CKPT
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out


def publish(workdir: Path, checkpoint: Path) -> None:
    """Point ``model.ckpt.pt`` and the ``checkpoint`` file (what ``dp --pt freeze -c .``
    reads) at ``checkpoint``, as DeePMD-kit does after writing it: a kill between the two
    leaves them at the one before."""
    link = Path(workdir) / f"{CKPT_PREFIX}.pt"
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(checkpoint.name)
    os.replace(tmp, link)
    (Path(workdir) / "checkpoint").write_text(checkpoint.name)


def _is_data(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def truncate_lcurve(path: Path, step: int) -> None:
    """Keep the header and the rows of lcurve.out up to ``step``."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row cut off by the kill
    path.write_text("".join(ln for ln in lines if not _is_data(ln) or float(ln.split()[0]) <= step))


def drop_repeated_header(path: Path) -> None:
    """The resumed run writes lcurve.out's header again before its rows: keep the first."""
    if not path.exists():
        return
    out, seen_data = [], False
    for ln in path.read_text().splitlines(keepends=True):
        if _is_data(ln):
            seen_data = True
        elif seen_data and ln.strip().startswith("#"):
            continue
        out.append(ln)
    path.write_text("".join(out))
