"""A member's training killed and run again resumes from its latest checkpoint (issue #26).

(a) real ``dp --pt train`` runs on a tiny set (8 frames, 40 steps, a checkpoint every 10):
a run killed (SIGKILL to its process group) after its first checkpoint and run again with
the same request resumes there and ends like an uninterrupted run: the same steps (each
once in lcurve.out, 40 optimizer steps in the final checkpoint), frames and input.json,
and final errors on the 8 frames within 5 % of it. (b) a changed request and (c) torn checkpoints
do not resume from what they cannot use; they are checked with ``dp`` stubbed out, from
the uninterrupted run's real checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from remote_al.records import TrainRequest, TrainResult

ROOT = Path(__file__).resolve().parent.parent
TYPE_MAP = ("Li", "Ni", "O")
STEPS, SAVE_FREQ = 40, 10
RUN = ("import json, sys\nfrom remote_al.records import TrainRequest\nfrom remote_al.training import train_member\n"
       "train_member(TrainRequest.from_dict(json.load(open(sys.argv[1]))))\n")


@pytest.fixture(scope="module")
def frames() -> list:
    """8 perturbed LiNiO2 / Li0.75NiO2 frames labeled with a Lennard-Jones pair potential
    (a cheap stand-in: what is tested is the training's bookkeeping, not the labels)."""
    from ase.calculators.lj import LennardJones
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.structures import cathode_cell, perturb

    rng = np.random.default_rng(0)
    frames = []
    for x in (1.0, 0.75):
        for _ in range(4):
            a = perturb(cathode_cell(x), 0.05, 0.02, rng)
            a.calc = LennardJones(sigma=2.0, epsilon=0.01, rc=5.0)
            e, f = a.get_potential_energy(), a.get_forces()
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
            frames.append(a)
    return frames


@pytest.fixture(scope="module")
def systems(frames, tmp_path_factory) -> tuple[str, ...]:
    from remote_al.deepmd_data import write_systems

    return tuple(write_systems(frames, tmp_path_factory.mktemp("lj") / "data", TYPE_MAP))


def _request(systems, workdir, **kw) -> TrainRequest:
    args = dict(member=0, seed=3, numb_steps=STEPS, save_freq=SAVE_FREQ) | kw
    return TrainRequest("t", str(workdir), tuple(systems), TYPE_MAP, **args)


@pytest.fixture(scope="module")
def uninterrupted(systems, tmp_path_factory):
    from remote_al.training import train_member

    t0 = time.time()
    res = train_member(_request(systems, tmp_path_factory.mktemp("whole") / "m0"))
    print(f"uninterrupted: {time.time() - t0:.1f} s")
    assert res.resumed_from_step == 0
    return res


def _adam_steps(ckpt) -> int:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


@pytest.mark.slow
def test_a_killed_training_resumes_and_ends_like_an_uninterrupted_one(frames, systems, uninterrupted, tmp_path):
    from remote_al.deepmd_data import parse_lcurve
    from remote_al.training import train_member

    workdir = tmp_path / "m0"
    req = _request(systems, workdir)
    (tmp_path / "req.json").write_text(json.dumps(req.to_dict()))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / "req.json")], cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        while proc.poll() is None and time.time() - t0 < 600:
            if (workdir / "model.ckpt.pt").exists():  # a checkpoint published: kill it now
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_s = time.time() - t0
    assert proc.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    assert not (workdir / "model.pth").exists() and not (workdir / f"model.ckpt-{STEPS}.pt").exists()

    t1 = time.time()
    res = train_member(req)
    print(f"killed after {killed_s:.1f} s, resumed run {time.time() - t1:.1f} s")
    k = res.resumed_from_step
    assert k in (10, 20, 30)
    assert f"resuming from step {k} of {STEPS}" in (workdir / "resume.log").read_text()
    assert "Resuming from restart.pt" in (workdir / "train.log").read_text()
    assert not (workdir / "restart.pt").exists()

    # the same steps: each once in the curve, 40 optimizer steps (DeePMD-kit's own --restart
    # from model.ckpt-k.pt would repeat step k: 41), the last checkpoint at step 40
    lc, whole = parse_lcurve(res.lcurve_path), parse_lcurve(uninterrupted.lcurve_path)
    assert list(lc["step"]) == list(whole["step"]) and lc["step"][-1] == STEPS
    assert Path(res.lcurve_path).read_text().count("# step") == 1
    np.testing.assert_allclose(lc["lr"], whole["lr"], rtol=1e-6)  # the schedule goes on where it was
    assert Path(res.checkpoint_path).name == f"model.ckpt-{STEPS}.pt"
    assert _adam_steps(res.checkpoint_path) == _adam_steps(uninterrupted.checkpoint_path) == STEPS
    # the rows up to step k are the killed run's (DeePMD-kit is deterministic for a seed) ...
    early = lc["step"] <= k
    np.testing.assert_array_equal(lc["rmse_trn"][early], whole["rmse_trn"][early])
    # ... and the rest are a resumed run's: other batches than the uninterrupted run's
    assert not np.array_equal(lc["rmse_trn"][~early], whole["rmse_trn"][~early])

    # the same frames and input
    assert (res.n_train_frames, res.n_total_frames, res.out_of_bag) == \
        (uninterrupted.n_train_frames, uninterrupted.n_total_frames, uninterrupted.out_of_bag)
    whole_dir = str(Path(uninterrupted.model_path).parent)
    assert (workdir / "input.json").read_text().replace(str(workdir), whole_dir) == \
        (Path(whole_dir) / "input.json").read_text()
    # the final models' errors on all 8 frames close (measured: within 0.1 %); not lcurve's
    # last row: one random batch (its force column jumps between 0.10 and 0.13 eV/A with
    # the frame drawn)
    (e_res, f_res), (e_whole, f_whole) = _errors(frames, res.model_path), _errors(frames, uninterrupted.model_path)
    print(f"energy RMSE {e_res:.4f} / {e_whole:.4f} eV/atom, force RMSE {f_res:.4f} / {f_whole:.4f} eV/A "
          "(resumed / uninterrupted)")
    assert e_res == pytest.approx(e_whole, rel=0.05) and f_res == pytest.approx(f_whole, rel=0.05)


def _errors(frames, model_path) -> tuple[float, float]:
    """A model's energy (eV/atom) and force (eV/A) RMSE on ``frames``."""
    from remote_al.ensemble import predict_ensemble

    energies, forces = predict_ensemble([model_path], frames)
    de = [(e - a.get_potential_energy()) / len(a) for e, a in zip(energies[0], frames)]
    df = np.concatenate([(f[0] - a.get_forces()).ravel() for f, a in zip(forces, frames)])
    return float(np.sqrt(np.mean(np.square(de)))), float(np.sqrt(np.mean(np.square(df))))


# ------------------------------------------- decisions, with `dp` stubbed out
class Stop(Exception):
    pass


@pytest.fixture
def stubbed(monkeypatch):
    """train_member with ``dp`` replaced by a stop: returns the command it would run."""
    from remote_al import training

    def stop(cmd, *args, **kw):
        raise Stop(cmd)

    monkeypatch.setattr(training, "_run", stop)

    def run(req) -> list[str]:
        with pytest.raises(Stop) as cmd:
            training.train_member(req)
        return cmd.value.args[0]

    return run


def _killed_copy(systems, uninterrupted, stubbed, workdir, steps=(30, 40)) -> TrainRequest:
    """``workdir`` as a run of the request killed after its checkpoints ``steps`` leaves it:
    the request's input.json and fingerprint (a first, stubbed run), the uninterrupted
    run's checkpoints (it keeps the last two: 30 and 40) and lcurve."""
    req = _request(systems, workdir)
    assert "--restart" not in stubbed(req)
    src = Path(uninterrupted.model_path).parent
    for s in steps:
        shutil.copy(src / f"model.ckpt-{s}.pt", workdir)
    (workdir / "model.ckpt.pt").symlink_to(f"model.ckpt-{max(steps)}.pt")
    shutil.copy(src / "lcurve.out", workdir)
    return req


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow  # the uninterrupted run
def test_a_finished_run_is_only_frozen_and_a_half_written_row_is_dropped(systems, uninterrupted, stubbed,
                                                                          tmp_path):
    req = _killed_copy(systems, uninterrupted, stubbed, tmp_path / "m0")
    cmd = stubbed(req)
    assert "freeze" in cmd and "train" not in cmd
    assert f"only freezing from step {STEPS} of {STEPS}" in (tmp_path / "m0" / "resume.log").read_text()

    from remote_al.train_resume import drop_repeated_header, truncate_lcurve

    lcurve = tmp_path / "lcurve.out"
    head = "# step  rmse_trn  lr\n"
    lcurve.write_text(head + "1 2.0 1e-3\n10 1.0 1e-4\n20 0.5 1e-5\n3")  # "3": a row cut by the kill
    truncate_lcurve(lcurve, 10)
    assert lcurve.read_text() == head + "1 2.0 1e-3\n10 1.0 1e-4\n"
    lcurve.write_text(lcurve.read_text() + head + "12 0.9 9e-5\n")
    drop_repeated_header(lcurve)
    assert lcurve.read_text() == head + "1 2.0 1e-3\n10 1.0 1e-4\n12 0.9 9e-5\n"


@pytest.mark.slow  # the uninterrupted run
def test_b_a_changed_request_does_not_resume(systems, uninterrupted, stubbed, tmp_path):
    continued = {"init_model": uninterrupted.checkpoint_path, "continue_prefactors": "restart"}  # same input.json
    for i, change in enumerate(({"numb_steps": 30}, {"systems": systems[:1]}, continued)):
        workdir = tmp_path / f"m{i}"
        req = _killed_copy(systems, uninterrupted, stubbed, workdir, steps=(30,))
        cmd = stubbed(dataclasses.replace(req, **change))
        assert "train" in cmd and "--restart" not in cmd, change
        assert not list(workdir.glob("model.ckpt*")) and not (workdir / "lcurve.out").exists()
        assert (workdir / "resume.log").read_text().splitlines()[-1].endswith(
            "the folder holds a run of another input, data or starting model: training from the start")
    # the control: the same request resumes from such a folder
    cmd = stubbed(_killed_copy(systems, uninterrupted, stubbed, tmp_path / "same", steps=(30,)))
    assert cmd[-2:] == ["--restart", "restart.pt"] and "--init-model" not in cmd


@pytest.mark.slow  # the uninterrupted run
def test_c_torn_checkpoints_fall_back_to_an_older_one_then_to_a_clean_start(systems, uninterrupted, stubbed,
                                                                            tmp_path):
    import torch

    workdir = tmp_path / "m0"
    req = _killed_copy(systems, uninterrupted, stubbed, workdir)
    _tear(workdir / "model.ckpt-40.pt")  # killed while writing it
    cmd = stubbed(req)
    assert cmd[-2:] == ["--restart", "restart.pt"]
    log = (workdir / "resume.log").read_text()
    assert "model.ckpt-40.pt cannot be loaded" in log and f"resuming from step 30 of {STEPS}" in log
    assert not (workdir / "model.ckpt-40.pt").exists()
    state = torch.load(workdir / "restart.pt", map_location="cpu", weights_only=True)
    assert state["model"]["_extra_state"]["train_infos"]["step"] == 30  # DeePMD-kit's file says 29
    steps = [int(ln.split()[0]) for ln in (workdir / "lcurve.out").read_text().splitlines() if ln[:1] != "#"]
    assert steps[-1] == 30

    _tear(workdir / "model.ckpt-30.pt")
    cmd = stubbed(req)
    assert "train" in cmd and "--restart" not in cmd
    assert "no checkpoint loads: training from the start" in (workdir / "resume.log").read_text()
    assert not list(workdir.glob("model.ckpt*")) and not (workdir / "restart.pt").exists()


def test_save_freq_default_setting_and_override():
    from remote_al.deepmd_input import deepmd_input

    def freq(steps, save_freq=0, overrides=None):
        return deepmd_input(TYPE_MAP, ["t"], [], steps, 1, overrides, save_freq=save_freq)["training"]["save_freq"]

    assert (freq(1500), freq(800), freq(50_000), freq(5)) == (150, 80, 1000, 1)
    assert freq(1500, save_freq=7) == 7
    assert freq(1500, save_freq=7, overrides={"training": {"save_freq": 3}}) == 3
    # results and requests stored before these fields existed read back with the defaults
    old = TrainResult("t", "m.pth", "c.pt", "l", {}, 1, 2, 0.5).to_dict()
    del old["resumed_from_step"]
    assert TrainResult.from_dict(old).resumed_from_step == 0
    old = TrainRequest("t", "w", ("s",), TYPE_MAP, member=0, seed=1).to_dict()
    del old["save_freq"]
    assert TrainRequest.from_dict(old).save_freq == 0
