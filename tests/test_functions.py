"""The four registered functions, run through the local backend (real serializer + engine).

The session fixtures label with CHGNet and train two DeePMD-kit members through the
backend; the tests below run MD, UQ and labeling through it and check the physics.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from remote_al.deepmd_data import n_frames, parse_lcurve, read_system
from remote_al.records import STAND_IN_NOTE, LabelRequest, MDRequest, MDResult, UQRequest, UQResult
from remote_al.structures import cathode_cell, from_extxyz, to_extxyz

pytestmark = pytest.mark.slow


def test_chgnet_label_of_small_cell(labeled_dir):
    res = labeled_dir["label_result"]
    assert res["labeler"] == "chgnet" and res["labeler_note"] == STAND_IN_NOTE
    assert "stand-in" in res["labeler_note"]
    labels = res["labels"]
    assert all(lab["status"] == "ok" for lab in labels)
    frames = labeled_dir["frames"]
    for lab, atoms in zip(labels, frames):
        assert np.isfinite(lab["energy"]) and -8.0 < lab["energy"] / len(atoms) < -3.0  # eV/atom, an oxide
        f = np.array(lab["forces"])
        assert f.shape == (len(atoms), 3) and np.all(np.isfinite(f))
        assert np.abs(f.sum(axis=0)).max() < 0.05  # forces sum to ~0 in a periodic cell
        assert atoms.info["labeler"] == "chgnet"


def test_deepmd_export_matches_labels(labeled_dir):
    total = sum(n_frames(s) for s in labeled_dir["systems"])
    assert total == len(labeled_dir["frames"])
    by_natoms = {len(a): a for a in labeled_dir["frames"]}
    for s in labeled_dir["systems"]:
        data = read_system(s)
        assert data["type_map"] == ["Li", "Ni", "O"]
        assert data["coord"].shape[1] == 3 * len(data["types"])
        assert len(data["types"]) in by_natoms


def test_training_through_backend(tiny_ensemble):
    assert len(tiny_ensemble) == 2
    for r in tiny_ensemble:
        assert Path(r.model_path).exists() and Path(r.checkpoint_path).exists()
        lc = parse_lcurve(r.lcurve_path)
        assert lc["step"][-1] == 100
        assert "rmse_f_val" in lc and "rmse_f_trn" in lc  # members validate on the frames they left out
        assert r.lcurve_last["step"] == 100
        assert r.n_train_frames < r.n_total_frames  # 90 % subset
        inp = json.loads((Path(r.model_path).parent / "input.json").read_text())
        assert inp["loss"]["start_pref_f"] == 1000.0
    seeds = [json.loads((Path(r.model_path).parent / "input.json").read_text())["model"]["descriptor"]["seed"]
             for r in tiny_ensemble]
    assert seeds[0] != seeds[1]


def test_continuation_with_init_model(tiny_ensemble, labeled_dir, local_backend, tmp_path):
    from remote_al.records import TrainRequest, TrainResult

    prev = tiny_ensemble[0]
    req = TrainRequest(
        task_key="cont", workdir=str(tmp_path / "cont"), systems=tuple(labeled_dir["systems"]),
        type_map=("Li", "Ni", "O"), member=0, seed=11, numb_steps=40, init_model=prev.checkpoint_path,
    )
    r = TrainResult.from_dict(local_backend.submit("gpu", "train", req.to_dict(), "cont").future.result(timeout=600))
    log = (Path(r.model_path).parent / "train.log").read_text()
    assert "init" in log.lower() and Path(r.model_path).exists()
    # continuing starts from trained weights: its first training error is far below a fresh start's
    first = parse_lcurve(r.lcurve_path)["rmse_f_trn"][0]
    fresh_first = parse_lcurve(prev.lcurve_path)["rmse_f_trn"][0]
    assert first < fresh_first


def test_md_through_backend(tiny_ensemble, local_backend, tmp_path):
    start = cathode_cell(1.0)
    req = MDRequest(
        task_key="md", workdir=str(tmp_path / "md"), model_path=tiny_ensemble[0].model_path,
        structure_extxyz=to_extxyz(start), temperature_K=300.0, steps=40, n_frames=4, seed=3,
    )
    res = MDResult.from_dict(local_backend.submit("gpu", "md", req.to_dict(), "md").future.result(timeout=600))
    frames = from_extxyz(res.frames_extxyz)
    assert 1 <= res.n_frames == len(frames) <= 4
    assert Path(res.trajectory_path).exists()
    assert len(from_extxyz(Path(res.trajectory_path).read_text())) == res.n_frames
    assert not np.allclose(frames[-1].positions, start.positions)  # atoms moved
    assert res.volume_start_A3 == pytest.approx(res.volume_end_A3)  # NVT keeps the cell
    # the centre of mass stays where it started (FixCom, not Langevin's deprecated fixcm)
    np.testing.assert_allclose(frames[-1].get_center_of_mass(), start.get_center_of_mass(), atol=1e-6)
    assert not frames[-1].constraints


def test_workers_log_has_no_repeated_notices(tiny_ensemble, labeled_dir, local_backend, tmp_path):
    """A short MD and an ensemble evaluation leave neither DeePMD-kit's batch-size notice
    nor ASE's Langevin ``fixcm`` FutureWarning in the workers' log."""
    models = tuple(r.model_path for r in tiny_ensemble)
    md = MDRequest(task_key="md-log", workdir=str(tmp_path / "md"), model_path=models[0],
                   structure_extxyz=to_extxyz(cathode_cell(1.0)), temperature_K=300.0, steps=20, n_frames=2, seed=5)
    uq = UQRequest(task_key="uq-log", workdir=str(tmp_path / "uq"), model_paths=models,
                   frames_extxyz=Path(labeled_dir["extxyz"]).read_text())
    for fn, req in (("md", md), ("uq", uq)):
        local_backend.submit("gpu", fn, req.to_dict(), req.task_key).future.result(timeout=600)
    log = (Path(local_backend.run_dir) / "engine-gpu" / "workers.log").read_text()
    assert "Task processing completed" in log  # the log is the one the tasks ran under
    assert "DP_INFER_BATCH_SIZE" not in log and "fixcm" not in log and "FutureWarning" not in log


def test_uq_through_backend(tiny_ensemble, labeled_dir, local_backend, tmp_path):
    models = tuple(r.model_path for r in tiny_ensemble)
    text = Path(labeled_dir["extxyz"]).read_text()
    req = UQRequest(task_key="uq", workdir=str(tmp_path / "uq"), model_paths=models, frames_extxyz=text)
    res = UQResult.from_dict(local_backend.submit("gpu", "uq", req.to_dict(), "uq").future.result(timeout=600))
    assert res.n_members == 2 and res.n_frames == len(labeled_dir["frames"])
    assert all(w > 0 for w in res.force_width) and all(w >= 0 for w in res.energy_width)
    assert res.force_rmse is not None and len(res.force_rmse) == res.n_frames  # labels were present
    # the same model twice gives zero width: the statistic, end to end
    same = UQRequest(task_key="uq0", workdir=str(tmp_path / "uq0"), model_paths=(models[0], models[0]),
                     frames_extxyz=text)
    res0 = UQResult.from_dict(local_backend.submit("gpu", "uq", same.to_dict(), "uq0").future.result(timeout=600))
    assert max(res0.force_width) < 1e-6 and max(res0.energy_width) < 1e-9


def test_batched_uq_equals_one_frame_at_a_time(tiny_ensemble, labeled_dir):
    from remote_al.ensemble import predict_ensemble

    models = [r.model_path for r in tiny_ensemble]
    frames = labeled_dir["frames"][:5]
    e_b, f_b = predict_ensemble(models, frames, batch_size=64)
    e_1, f_1 = predict_ensemble(models, frames, batch_size=1)
    np.testing.assert_allclose(e_b, e_1, rtol=1e-8, atol=1e-8)
    for a, b in zip(f_b, f_1):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_label_through_backend(local_backend, tmp_path):
    atoms = cathode_cell(0.75)
    req = LabelRequest(task_key="lab", workdir=str(tmp_path / "lab"), labeler="chgnet",
                       structure_ids=(41,), structures_extxyz=to_extxyz(atoms))
    res = local_backend.submit("cpu", "label", req.to_dict(), "lab").future.result(timeout=600)
    assert res["labels"][0]["structure_id"] == 41 and res["labels"][0]["status"] == "ok"
    assert res["labeler_note"] == STAND_IN_NOTE
    out = from_extxyz(Path(res["output_path"]).read_text())
    assert out[0].info["labeler"] == "chgnet"


def test_remote_error_surfaces_as_task_failed(local_backend, tmp_path):
    from driver.errors import TaskFailed

    req = {"task_key": "bad", "workdir": str(tmp_path), "model_paths": ["only-one.pth"], "frames_extxyz": ""}
    fut = local_backend.submit("gpu", "uq", req, "bad").future
    with pytest.raises(TaskFailed, match="at least 2 models"):
        fut.result(timeout=300)


def test_oversized_payload_refused_before_submission(local_backend, tmp_path):
    from driver.errors import PayloadTooLarge

    big = to_extxyz(cathode_cell(1.0)) * 40000  # ~ 40 MB of text
    req = {"task_key": "big", "workdir": str(tmp_path), "model_paths": ["a", "b"], "frames_extxyz": big}
    with pytest.raises(PayloadTooLarge, match="10 MB"):
        local_backend.submit("gpu", "uq", req, "big")


def test_four_functions_through_globus_compute_engine(tiny_ensemble, labeled_dir, tmp_path, monkeypatch):
    """The engine the HPC templates use (GlobusComputeEngine with parsl's LocalProvider),
    running each registered function, besides the default ProcessPoolEngine."""
    import sys

    from driver.backends.local import LocalBackend
    from remote_al.records import TrainRequest, TrainResult

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    backend = LocalBackend(tmp_path / "gce", gpu_slots=1, cpu_slots=1, engine="gce")
    backend.start()
    try:
        models = tuple(r.model_path for r in tiny_ensemble)
        text = Path(labeled_dir["extxyz"]).read_text()
        start = cathode_cell(1.0)
        subs = {
            "label": backend.submit("cpu", "label", LabelRequest(
                "g-lab", str(tmp_path / "lab"), "chgnet", (7,), to_extxyz(start)).to_dict(), "g-lab"),
            "md": backend.submit("gpu", "md", MDRequest(
                "g-md", str(tmp_path / "md"), models[0], to_extxyz(start), steps=20, n_frames=2).to_dict(), "g-md"),
            "uq": backend.submit("gpu", "uq", UQRequest("g-uq", str(tmp_path / "uq"), models, text).to_dict(), "g-uq"),
            "train": backend.submit("gpu", "train", TrainRequest(
                "g-tr", str(tmp_path / "tr"), tuple(labeled_dir["systems"]), ("Li", "Ni", "O"), 0, 3,
                numb_steps=20).to_dict(), "g-tr"),
        }
        res = {k: s.future.result(timeout=900) for k, s in subs.items()}
    finally:
        backend.shutdown()
    assert res["label"]["labels"][0]["status"] == "ok"
    assert MDResult.from_dict(res["md"]).n_frames >= 1
    assert UQResult.from_dict(res["uq"]).n_frames == len(labeled_dir["frames"])
    assert Path(TrainResult.from_dict(res["train"]).model_path).exists()


def test_task_environment_sets_the_cpu_batch_size_and_restores(monkeypatch):
    from remote_al.torch_env import CPU_INFER_BATCH_SIZE, task_environment

    monkeypatch.delenv("DP_INFER_BATCH_SIZE", raising=False)
    with task_environment("cpu"):
        assert os.environ["DP_INFER_BATCH_SIZE"] == CPU_INFER_BATCH_SIZE == "1024"
    assert "DP_INFER_BATCH_SIZE" not in os.environ
    monkeypatch.setenv("DP_INFER_BATCH_SIZE", "4096")  # the endpoint's own choice wins
    with task_environment("cpu"):
        assert os.environ["DP_INFER_BATCH_SIZE"] == "4096"
    assert os.environ["DP_INFER_BATCH_SIZE"] == "4096"
