"""Training one DeePMD-kit ensemble member (``dp --pt train`` then ``dp --pt freeze``).

Each member trains on its own subset of the frames (its bag, default about 90 %, the same
frames in every generation) with its own seeds; the frames it leaves out are its
validation set, so lcurve.out carries validation columns. A member continues from the
previous generation's checkpoint with ``--init-model`` when there is one; such a continued
training starts its loss prefactors at their limit values by default
(``TrainRequest.continue_prefactors``), so the energy weight is not reset to
``start_pref_e`` each generation. A member killed while training and run again resumes
from its latest checkpoint (``remote_al.train_resume``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from remote_al import train_resume as resume
from remote_al.deepmd_data import parse_lcurve, read_system, subset_system
from remote_al.deepmd_input import deepmd_input
from remote_al.errors import RemoteALError
from remote_al.records import TrainRequest, TrainResult
from remote_al.torch_env import deepmd_env


class TrainingError(RemoteALError, RuntimeError):
    """Raised when a member cannot be trained: no systems, a missing checkpoint to continue
    from, ``dp train``/``dp freeze`` exiting non-zero (with the log's tail) or no checkpoint
    written. ``workdir`` is the member's folder."""

    def __init__(self, message: str, workdir: str):
        self.workdir = workdir
        super().__init__(f"{message} (workdir: {workdir})")


def bag_draws(sysdir, bag: int) -> np.ndarray:
    """One draw in [0, 1) per frame of a system, from the frame's content (types, coordinates
    and cell to 1e-5 A) and the bag: the same frame gets the same draw in every generation,
    whatever system or position it is exported in."""
    data = read_system(sysdir)
    types = np.asarray(data["types"], dtype=np.int64).tobytes()
    head = int(bag).to_bytes(8, "little", signed=True)
    out = []
    for coord, box in zip(data["coord"], data["box"]):
        key = head + types + (np.round(coord, 5) + 0.0).tobytes() + (np.round(box, 5) + 0.0).tobytes()
        out.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2.0**64)
    return np.array(out)


def split_member_data(systems, workdir: Path, fraction: float, bag: int):
    """Per system, the frames this member trains on (its bag), the rest its validation set.

    A frame is in the bag when its draw (``bag_draws``: from the frame's content and the
    bag number, the member's index in a campaign) is below ``fraction``. So a member holds
    out the same frames in every generation: the frames it held out stay out-of-bag for it
    when it is continued from its previous checkpoint, and the calibration keeps about
    ``1 - fraction**M`` of the training frames as out-of-bag pairs instead of only the
    newest ones (a fresh split each generation leaves almost none out of a member's chain).
    A system of two or more frames always leaves its highest draw out (a validation frame);
    a member whose bag would be empty trains on the frame with the lowest draw.

    Returns (train dirs, validation dirs, frames kept, frames in all, and per system the
    sorted indices of the frames this member did NOT train on: its out-of-bag frames)."""
    draws = [bag_draws(sysdir, bag) for sysdir in systems]
    keep = [d < fraction if fraction < 1.0 else np.ones(d.size, dtype=bool) for d in draws]
    for d, k in zip(draws, keep):
        if fraction < 1.0 and d.size > 1 and k.all():
            k[np.argmax(d)] = False  # every system keeps a validation frame
    if draws and not any(k.any() for k in keep) and any(d.size for d in draws):
        i = min((i for i, d in enumerate(draws) if d.size), key=lambda i: draws[i].min())
        keep[i][np.argmin(draws[i])] = True
    train, valid, held_out = [], [], []
    for i, (sysdir, mine) in enumerate(zip(systems, keep)):
        name = f"{i:03d}-{Path(sysdir).name}"
        t = subset_system(sysdir, workdir / "data" / "train" / name, np.flatnonzero(mine))
        v = subset_system(sysdir, workdir / "data" / "valid" / name, np.flatnonzero(~mine))
        held_out.append(tuple(int(j) for j in np.flatnonzero(~mine)))
        if t:
            train.append(t)
        if v:
            valid.append(v)
    return train, valid, int(sum(k.sum() for k in keep)), int(sum(k.size for k in keep)), tuple(held_out)


def _dp_command() -> list[str]:
    exe = Path(sys.executable).with_name("dp")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "deepmd"]


def die_with_parent() -> None:
    """Linux: ask the kernel to kill this process when its parent dies (PR_SET_PDEATHSIG),
    so no orphaned worker or trainer keeps computing a result nobody will collect."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _run(cmd, workdir: Path, env, log_name: str, mode: str = "w"):
    log = workdir / log_name
    with open(log, mode) as fh:
        proc = subprocess.run(
            cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise TrainingError(f"{' '.join(cmd[-4:])} exited with {proc.returncode}:\n{tail}", str(workdir))


def train_member(req: TrainRequest) -> TrainResult:
    """Train and freeze one member in ``req.workdir``. A rerun of the same request in a
    folder where it was killed resumes from the member's latest checkpoint
    (``remote_al.train_resume``); any other folder content is removed first."""
    t0 = time.time()
    workdir = Path(req.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if not req.systems:
        raise TrainingError("no training systems given", str(workdir))
    shutil.rmtree(workdir / "data", ignore_errors=True)  # the same request splits the same frames
    train, valid, kept, total, held_out = split_member_data(req.systems, workdir, req.subset_fraction, req.member)
    inp = deepmd_input(req.type_map, train, valid, req.numb_steps, req.seed, req.deepmd,
                       continued=bool(req.init_model), continue_prefactors=req.continue_prefactors,
                       continue_overrides=req.deepmd_continue, save_freq=req.save_freq)
    text = json.dumps(inp, indent=2)
    fp = resume.fingerprint(text, workdir / "data", req.init_model)
    plan = resume.plan_resume(workdir, fp, req.numb_steps)
    if not plan.step:
        resume.clean(workdir)  # a run of another input, or none to resume: start clean
    resume.log(workdir, plan.reason)
    (workdir / "input.json").write_text(text)
    (workdir / resume.FINGERPRINT).write_text(fp)
    env = deepmd_env(req.device)
    cmd = [*_dp_command(), "--pt", "train", "input.json", "--skip-neighbor-stat"]
    if not plan.step:
        if req.init_model:
            if not Path(req.init_model).exists():
                raise TrainingError(f"checkpoint to continue from is missing: {req.init_model}", str(workdir))
            cmd += ["--init-model", req.init_model]
        _run(cmd, workdir, env, "train.log")
    elif plan.step < req.numb_steps:  # the weights come from the member's own checkpoint
        restart = resume.prepare_restart(workdir, plan)
        _run([*cmd, "--restart", restart.name], workdir, env, "train.log", "a")
        resume.drop_repeated_header(workdir / resume.LCURVE)
        restart.unlink()
    else:  # killed after its last checkpoint: freeze that one
        resume.publish(workdir, plan.checkpoint)
    ckpt = workdir / "model.ckpt.pt"
    if not ckpt.exists():
        cands = sorted(workdir.glob("model.ckpt*.pt"))
        if not cands:
            raise TrainingError("training finished without a checkpoint", str(workdir))
        ckpt = cands[-1]
    _run([*_dp_command(), "--pt", "freeze", "-c", ".", "-o", "model.pth"], workdir, env, "freeze.log")
    lc = parse_lcurve(workdir / "lcurve.out")
    last = {k: float(v[-1]) for k, v in lc.items() if len(v)}
    device = "cuda" if _cuda_used(workdir / "train.log") else "cpu"
    return TrainResult(
        task_key=req.task_key,
        model_path=str(workdir / "model.pth"),
        checkpoint_path=str(ckpt.resolve()),
        lcurve_path=str(workdir / "lcurve.out"),
        lcurve_last=last,
        n_train_frames=kept,
        n_total_frames=total,
        wall_s=time.time() - t0,
        out_of_bag=held_out,
        device=device,
        resumed_from_step=plan.step,
    )


def _cuda_used(log: Path) -> bool:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if "Computing Device:" in line:  # DeePMD-kit's summary, e.g. "Computing Device:     CUDA:0"
            return "CUDA" in line.upper()
    return False
