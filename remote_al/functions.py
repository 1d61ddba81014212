"""The registered functions: what runs on a Globus Compute endpoint.

Each takes one request record (or its dict) and returns one JSON-serializable ``dict``.
These are what ``remote-al register`` registers and what the local backend runs through
the real Globus Compute serializer and endpoint engine. Heavy imports happen inside.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from remote_al.records import (
    LabelRequest,
    LabelResult,
    MDRequest,
    RelaxRequest,
    TrainRequest,
    UQRequest,
)
from remote_al.torch_env import task_environment


def _prepare(cls, request):
    """The ``cls`` record of ``request`` (the record or its dict); ``TypeError`` otherwise.

    It leaves ``os.environ`` alone: what a worker needs there (one thread, no GPU for
    ``device="cpu"``) is set for the duration of the task by ``_run``, through
    ``remote_al.torch_env.task_environment``, because DeePMD-kit and torch read it when
    they are imported, inside the task.
    """
    if isinstance(request, Mapping):
        request = cls.from_dict(request)
    if not isinstance(request, cls):
        raise TypeError(f"expected a {cls.__name__} or its dict, got {type(request).__name__}")
    return request


def _run(cls, request, work: Callable[[Any], Any]) -> dict:
    """``work(record)`` in the task's thread and device environment, as a dict."""
    req = _prepare(cls, request)
    with task_environment(getattr(req, "device", "auto")):
        return work(req).to_dict()


def _md(req: MDRequest):
    if req.engine == "lammps":
        from remote_al.lammps_md import run_md_lammps as run
    elif req.engine == "ase":
        from remote_al.dynamics import run_md as run
    else:
        raise ValueError(f"unknown MD engine {req.engine!r}: use 'ase' or 'lammps'")
    return run(req)


def run_md(request: MDRequest | Mapping[str, Any]) -> dict:
    """MD with one DeePMD model (or with the labeler: ``labeler`` set); returns MDResult as a dict."""
    return _run(MDRequest, request, _md)


def evaluate_uncertainty(request: UQRequest | Mapping[str, Any]) -> dict:
    """Ensemble Student-t CI widths per frame; returns UQResult as a dict."""
    from remote_al.ensemble import evaluate_uncertainty as _eval

    return _run(UQRequest, request, _eval)


def label_structures(request: LabelRequest | Mapping[str, Any]) -> dict:
    """Label structures with the named labeler; returns LabelResult as a dict.

    Each label is kept in ``workdir/labels/`` as soon as it is done; the same request run
    again (after a kill) reuses the kept labels and labels only the rest
    (``remote_al.label_journal``). Labeled frames are also written to
    ``workdir/labeled.extxyz`` (with the structure id, labeler and status in each frame's
    info) for provenance.
    """
    return _run(LabelRequest, request, _label)


def _label(req: LabelRequest) -> LabelResult:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from remote_al.label_journal import label_with_journal
    from remote_al.labelers import get_labeler
    from remote_al.structures import from_extxyz

    t0 = time.time()
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    structures = from_extxyz(req.structures_extxyz)
    if len(structures) != len(req.structure_ids):
        raise ValueError(f"{len(structures)} structures but {len(req.structure_ids)} ids")
    labeler = get_labeler(req.labeler, req.settings)
    labels, reused = label_with_journal(labeler, structures, req.structure_ids, workdir, req.settings)
    out = []
    for atoms, lab in zip(structures, labels):
        a = atoms.copy()
        a.info.update(structure_id=lab.structure_id, labeler=labeler.name, label_status=lab.status)
        if lab.status == "ok":
            a.calc = SinglePointCalculator(a, energy=lab.energy, forces=lab.forces, stress=lab.stress)
        out.append(a)
    path = workdir / "labeled.extxyz"
    write(path, out, format="extxyz")
    return LabelResult(
        task_key=req.task_key,
        labeler=labeler.name,
        labeler_note=labeler.note,
        labels=tuple(lab.to_dict() for lab in labels),
        output_path=str(path),
        wall_s=time.time() - t0,
        reused=reused,
    )


def train_member(request: TrainRequest | Mapping[str, Any]) -> dict:
    """Train and freeze one ensemble member; returns TrainResult as a dict."""
    from remote_al.training import train_member as _train

    return _run(TrainRequest, request, _train)


def relax_structure(request: RelaxRequest | Mapping[str, Any]) -> dict:
    """Relax positions and cell with each ensemble member or with the labeler; RelaxResult as a dict."""
    from remote_al.relax import relax_structure as _relax

    return _run(RelaxRequest, request, _relax)


def probe_environment(_: Any = None) -> dict:
    """Versions and devices of this worker, for ``remote-al doctor``."""
    import platform
    import sys
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return {
        "python": platform.python_version(),
        "python_minor": f"{sys.version_info.major}.{sys.version_info.minor}",
        "remote_al": version("remote-al"),
        "deepmd_kit": version("deepmd-kit"),
        "dill": version("dill"),
        "globus_compute_sdk": version("globus-compute-sdk"),
        "globus_compute_endpoint": version("globus-compute-endpoint"),
        "torch": version("torch"),
        "gpus": gpus,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "hostname": platform.node(),
    }


# What every registered function needs on its first call, beyond its own module: the
# structure I/O (ASE's extxyz reader and writer) and the records.
WARM_MODULES = ("numpy", "ase.io", "ase.io.extxyz", "ase.neighborlist", "ase.calculators.singlepoint",
                "remote_al.records", "remote_al.structures")


def warm_up(request: Mapping[str, Any]) -> dict:
    """Import ``request["modules"]`` (and WARM_MODULES) in this worker and hold it for
    ``hold_s`` seconds, so a batch of these occupies every worker once: the first real
    tasks then run on started workers with their imports done, as on an endpoint that has
    been up for a while."""
    import importlib

    t0 = time.time()
    for name in (*WARM_MODULES, *request.get("modules", ())):
        importlib.import_module(name)
    time.sleep(float(request.get("hold_s", 1.0)))
    return {"pid": os.getpid(), "import_s": time.time() - t0}
