"""Shared fixtures: a tiny labeled dataset and a tiny trained ensemble, built once per run.

Everything here is real: CHGNet labels, DeePMD-kit training (``dp --pt train``), the
local backend's Globus Compute serializer and ProcessPoolEngine.
"""

from __future__ import annotations

import os
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np
import pytest

TYPE_MAP = ("Li", "Ni", "O")


@pytest.fixture(scope="session")
def labeled_dir(tmp_path_factory):
    """CHGNet-labeled perturbed LiNiO2 / Li0.75NiO2 frames as extxyz and deepmd/npy."""
    from remote_al.deepmd_data import write_systems
    from remote_al.functions import label_structures
    from remote_al.records import LabelRequest
    from remote_al.structures import cathode_cell, from_extxyz, perturb, to_extxyz

    root = tmp_path_factory.mktemp("labeled")
    rng = np.random.default_rng(0)
    frames = []
    for x in (1.0, 0.75):
        base = cathode_cell(x)
        frames += [perturb(base, 0.05, 0.02, rng) for _ in range(6)]
    res = label_structures(
        LabelRequest("label-fixture", str(root / "label"), "chgnet", tuple(range(len(frames))), to_extxyz(frames))
    )
    labeled = from_extxyz(open(res["output_path"]).read())
    systems = write_systems(labeled, root / "deepmd", TYPE_MAP)
    return {"root": root, "extxyz": res["output_path"], "systems": systems, "frames": labeled, "label_result": res}


@pytest.fixture(scope="session")
def local_backend(tmp_path_factory):
    from driver.backends.local import LocalBackend

    backend = LocalBackend(tmp_path_factory.mktemp("engine"), gpu_slots=2, cpu_slots=1)
    backend.start()
    yield backend
    backend.shutdown()


@pytest.fixture(scope="session")
def tiny_ensemble(labeled_dir, local_backend, tmp_path_factory):
    """Two members trained 100 steps each, in parallel through the local backend."""
    from remote_al.records import TrainRequest, TrainResult

    root = tmp_path_factory.mktemp("train")
    subs = []
    for m in range(2):
        req = TrainRequest(
            task_key=f"train-{m}", workdir=str(root / f"m{m}"), systems=tuple(labeled_dir["systems"]),
            type_map=TYPE_MAP, member=m, seed=11 + m, numb_steps=100,
        )
        subs.append(local_backend.submit("gpu", "train", req.to_dict(), f"fixture-train-{m}"))
    results = [TrainResult.from_dict(s.future.result(timeout=900)) for s in subs]
    return results


@pytest.fixture(autouse=True)
def _no_engine_service_left(request):
    """A test that leaves a campaign's local engine service running (a paused campaign, a
    killed driver) ends it: services outlive drivers by design, not tests."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None:
        return
    from driver.backends.local_service import ServiceDir

    for lock in Path(tmp).rglob("service.lock"):
        ServiceDir(lock.parent).stop(timeout_s=20)


@pytest.fixture(autouse=True, scope="session")
def _no_engine_service_left_at_the_end(tmp_path_factory):
    """The same for campaigns in module- or session-scoped folders, once all tests are done."""
    yield
    from driver.backends.local_service import ServiceDir

    for lock in tmp_path_factory.getbasetemp().rglob("service.lock"):
        ServiceDir(lock.parent).stop(timeout_s=20)
