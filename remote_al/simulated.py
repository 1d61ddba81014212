"""Simulated workload: the registered functions' contracts, with sleeps instead of physics.

Used by the steering benchmark and by the durability and fault tests, through the real
local backend (Globus Compute serializer and engine). Each function sleeps for
``REMOTE_AL_SIM_UNIT_S * duration`` seconds (durations in units, from
``REMOTE_AL_SIM_DURATIONS`` as JSON, default md 10, uq 1, label 30, train 60) and
returns a well-formed result record; values are deterministic functions of the inputs.

Fault injection, for tests:
- ``REMOTE_AL_SIM_FAIL_ONCE_DIR``: each task whose key contains a substring listed in
  ``REMOTE_AL_SIM_FAIL_ONCE`` (comma-separated) raises once, then succeeds (the marker
  file in that directory remembers the first failure across processes);
- ``REMOTE_AL_SIM_NAN_IDS``: structure ids (comma-separated) whose labels come back NaN;
- ``REMOTE_AL_SIM_LOG_DIR``: each label execution appends the structure ids it labeled
  to a file there, so tests can count executions;
- ``REMOTE_AL_SIM_WIDTH_DECAY``: the ensemble's CI widths are multiplied by this factor
  per generation of its models (default 1: every generation equally uncertain), so tests
  can make later generations confident about structures an earlier one selected.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from remote_al.records import (
    STAND_IN_NOTE,
    Label,
    LabelRequest,
    LabelResult,
    MDRequest,
    MDResult,
    TrainRequest,
    TrainResult,
    UQRequest,
    UQResult,
)

DEFAULT_DURATIONS = {"md": 10.0, "uq": 1.0, "label": 30.0, "train": 60.0}


def _sleep(kind: str, n: int = 1) -> None:
    unit = float(os.environ.get("REMOTE_AL_SIM_UNIT_S", "0.01"))
    durations = dict(DEFAULT_DURATIONS)
    durations.update(json.loads(os.environ.get("REMOTE_AL_SIM_DURATIONS", "{}")))
    time.sleep(unit * durations[kind] * n)


def _maybe_fail(task_key: str) -> None:
    keys = [k for k in os.environ.get("REMOTE_AL_SIM_FAIL_ONCE", "").split(",") if k]
    folder = os.environ.get("REMOTE_AL_SIM_FAIL_ONCE_DIR")
    if not folder or not any(k in task_key for k in keys):
        return
    marker = Path(folder) / (task_key.replace(":", "_").replace("/", "_") + ".failed")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("failed once\n")
        raise RuntimeError(f"simulated failure of {task_key} (first attempt)")


def _rng(*parts: Any) -> np.random.Generator:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _as(cls, request):
    return cls.from_dict(request) if isinstance(request, Mapping) else request


def run_md(request) -> dict:
    from remote_al.structures import from_extxyz, perturb, to_extxyz

    req = _as(MDRequest, request)
    _maybe_fail(req.task_key)
    _sleep("md")
    (start,) = from_extxyz(req.structure_extxyz)[:1]
    rng = _rng(req.task_key, req.seed)
    frames = [perturb(start, 0.02 + 0.1 * rng.random(), 0.01, rng) for _ in range(req.n_frames)]
    Path(req.workdir).mkdir(parents=True, exist_ok=True)
    traj = Path(req.workdir) / "traj.extxyz"
    text = to_extxyz(frames)
    traj.write_text(text)
    v = float(start.get_volume())
    return MDResult(req.task_key, str(traj), text, len(frames), req.steps, 0.0, req.temperature_K, v, v).to_dict()


def _model_generation(path: str) -> int:
    """The generation a simulated model was trained for (its file names its task key)."""
    import re

    try:
        m = re.search(r"train:g(\d+):", Path(path).read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def evaluate_uncertainty(request) -> dict:
    from remote_al.structures import from_extxyz

    req = _as(UQRequest, request)
    _maybe_fail(req.task_key)
    _sleep("uq")
    frames = from_extxyz(req.frames_extxyz)
    n = len(frames)
    decay = float(os.environ.get("REMOTE_AL_SIM_WIDTH_DECAY", "1"))
    scale = decay ** max((_model_generation(p) for p in req.model_paths), default=0) if decay != 1 else 1.0
    fw, ew, atom_w, atom_e = [], [], [], []
    for a in frames:
        rng = _rng(np.round(a.positions, 4).tobytes().hex()[:64], len(req.model_paths))
        fw.append(scale * float(rng.gamma(2.0, 0.08)))
        ew.append(scale * float(rng.gamma(2.0, 0.002)))
        # per atom: widths up to the frame's, errors heavy-tailed around them (shapes of real ones)
        w = fw[-1] * np.concatenate([[1.0], rng.uniform(0.3, 1.0, len(a) - 1)])
        atom_w.extend(w.tolist())
        atom_e.extend((w * np.abs(rng.standard_t(3, len(a)))).tolist())
    out = dict(task_key=req.task_key, n_members=len(req.model_paths), n_frames=n,
               natoms=tuple(len(a) for a in frames), energy_width=tuple(ew), force_width=tuple(fw),
               energy_mean=tuple(0.0 for _ in frames))
    if req.features:  # both kinds as the per-atom width histogram: the stand-in has no descriptor
        from remote_al.uq import atom_width_histogram

        per_frame = np.split(np.array(atom_w), np.cumsum([len(a) for a in frames])[:-1]) if n else []
        out["frame_features"] = tuple(tuple(float(v) for v in row) for row in atom_width_histogram(per_frame))
    if req.return_forces:
        out.update(forces_mean=tuple(tuple((0.0, 0.0, 0.0) for _ in a) for a in frames),
                   energy_total_mean=tuple(0.0 for _ in frames), atom_force_width=tuple(atom_w))
    if n and all(a.calc is not None for a in frames):
        gen = sum(int(c) for p in req.model_paths for c in p if c.isdigit()) % 7
        scale = 1.0 / (1 + gen)
        out.update(energy_error=tuple(0.01 * scale for _ in frames), force_rmse=tuple(0.2 * scale for _ in frames),
                   force_error_max=tuple(0.5 * scale for _ in frames), force_inside_ci=tuple(0.9 for _ in frames),
                   atom_force_width=tuple(atom_w), atom_force_error=tuple(atom_e))
    return UQResult(**out).to_dict()


def label_structures(request) -> dict:
    from remote_al.structures import from_extxyz

    req = _as(LabelRequest, request)
    _maybe_fail(req.task_key)
    frames = from_extxyz(req.structures_extxyz)
    _sleep("label", len(frames))
    nan_ids = {int(x) for x in os.environ.get("REMOTE_AL_SIM_NAN_IDS", "").split(",") if x}
    log_dir = os.environ.get("REMOTE_AL_SIM_LOG_DIR")
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(log_dir) / f"labels-{os.getpid()}.log", "a") as fh:
            fh.write(" ".join(str(i) for i in req.structure_ids) + "\n")
    from remote_al.labelers.base import validate_label

    labels = []
    for sid, a in zip(req.structure_ids, frames):
        rng = _rng("label", sid, np.round(a.positions, 4).tobytes().hex()[:64])
        f = rng.normal(0, 0.3, size=(len(a), 3))
        f -= f.mean(axis=0)
        if sid in nan_ids:
            f[0, 0] = float("nan")
        lab = Label(sid, "ok", energy=float(-5.0 * len(a) + rng.normal(0, 0.05)),
                    forces=tuple(tuple(float(c) for c in row) for row in f))
        labels.append(validate_label(lab, len(a)).to_dict())
    return LabelResult(req.task_key, "simulated", STAND_IN_NOTE + " (simulated workload)", tuple(labels),
                       req.workdir, 0.0).to_dict()


def train_member(request) -> dict:
    req = _as(TrainRequest, request)
    _maybe_fail(req.task_key)
    _sleep("train")
    wd = Path(req.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "model.pth").write_text(f"simulated model {req.task_key}\n")
    (wd / "model.ckpt.pt").write_text(f"simulated checkpoint {req.task_key}\n")
    (wd / "lcurve.out").write_text(
        "#  step      rmse_trn    rmse_e_trn    rmse_f_trn         lr\n"
        f"{req.numb_steps} 1.0 0.01 0.2 1e-5\n"
    )
    return TrainResult(req.task_key, str(wd / "model.pth"), str(wd / "model.ckpt.pt"), str(wd / "lcurve.out"),
                       {"step": float(req.numb_steps), "rmse_e_trn": 0.01, "rmse_f_trn": 0.2}, 1, 1, 0.0).to_dict()


FUNCTIONS = {
    "md": "remote_al.simulated:run_md",
    "uq": "remote_al.simulated:evaluate_uncertainty",
    "label": "remote_al.simulated:label_structures",
    "train": "remote_al.simulated:train_member",
    "probe": "remote_al.functions:probe_environment",
}
