"""Training one DeePMD-kit ensemble member (``dp --pt train`` then ``dp --pt freeze``).

Each member trains on its own random subset of the frames (default 90 %) with its own
seeds; the frames it leaves out are its validation set, so lcurve.out carries validation
columns. A member continues from the previous generation's checkpoint with
``--init-model`` when there is one; such a continued training starts its loss prefactors
at their limit values by default (``TrainRequest.continue_prefactors``), so the energy
weight is not reset to ``start_pref_e`` each generation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from remote_al.deepmd_data import n_frames, parse_lcurve, subset_system
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


def split_member_data(systems, workdir: Path, fraction: float, seed: int):
    """Per system, a seeded random ``fraction`` of frames for training, the rest validation.

    Returns (train dirs, validation dirs, frames kept, frames in all, and per system the
    sorted indices of the frames this member did NOT train on: its out-of-bag frames)."""
    rng = np.random.default_rng(seed)
    train, valid, held_out = [], [], []
    total = kept = 0
    for i, sysdir in enumerate(systems):
        n = n_frames(sysdir)
        total += n
        perm = rng.permutation(n)
        n_train = n if fraction >= 1.0 else max(1, int(round(fraction * n)))
        if n_train == n and n > 1 and fraction < 1.0:
            n_train = n - 1
        kept += n_train
        name = f"{i:03d}-{Path(sysdir).name}"
        t = subset_system(sysdir, workdir / "data" / "train" / name, np.sort(perm[:n_train]))
        v = subset_system(sysdir, workdir / "data" / "valid" / name, np.sort(perm[n_train:]))
        held_out.append(tuple(int(j) for j in np.sort(perm[n_train:])))
        if t:
            train.append(t)
        if v:
            valid.append(v)
    return train, valid, kept, total, tuple(held_out)


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


def _run(cmd, workdir: Path, env, log_name: str):
    log = workdir / log_name
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise TrainingError(f"{' '.join(cmd[-4:])} exited with {proc.returncode}:\n{tail}", str(workdir))


def train_member(req: TrainRequest) -> TrainResult:
    t0 = time.time()
    workdir = Path(req.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)  # a retried task starts clean
    workdir.mkdir(parents=True)
    if not req.systems:
        raise TrainingError("no training systems given", str(workdir))
    train, valid, kept, total, held_out = split_member_data(req.systems, workdir, req.subset_fraction, req.seed)
    inp = deepmd_input(req.type_map, train, valid, req.numb_steps, req.seed, req.deepmd,
                       continued=bool(req.init_model), continue_prefactors=req.continue_prefactors,
                       continue_overrides=req.deepmd_continue)
    (workdir / "input.json").write_text(json.dumps(inp, indent=2))
    env = deepmd_env(req.device)
    cmd = [*_dp_command(), "--pt", "train", "input.json", "--skip-neighbor-stat"]
    if req.init_model:
        if not Path(req.init_model).exists():
            raise TrainingError(f"checkpoint to continue from is missing: {req.init_model}", str(workdir))
        cmd += ["--init-model", req.init_model]
    _run(cmd, workdir, env, "train.log")
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
