"""The input.json a member trains with: a continued generation keeps its loss weights.

DeePMD-kit restarts its learning-rate and prefactor schedules at step 0 of an
``--init-model`` training, so with one schedule for every generation the energy weight
would fall back to ``start_pref_e`` each generation (issue #20: the energy drift). Checked
with DeePMD-kit's own argument checker (``normalize``), as ``dp train`` and the preflight do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from remote_al.deepmd_input import deepmd_input

TYPE_MAP = ["Li", "Ni", "O"]
EXAMPLE_LOSS = {"loss": {"start_pref_e": 0.2, "limit_pref_e": 2.0, "start_pref_f": 1000.0, "limit_pref_f": 1.0}}


def _checked(inp: dict) -> dict:
    argcheck = pytest.importorskip("deepmd.utils.argcheck")
    compat = pytest.importorskip("deepmd.utils.compat")
    return argcheck.normalize(compat.update_deepmd_input(inp, warning=False))


def _input(**kw) -> dict:
    return deepmd_input(TYPE_MAP, ["train"], ["valid"], 400, 7, EXAMPLE_LOSS, **kw)


def test_a_first_generation_runs_the_whole_schedule():
    loss = _checked(_input())["loss"]
    assert (loss["start_pref_e"], loss["limit_pref_e"]) == (0.2, 2.0)
    assert (loss["start_pref_f"], loss["limit_pref_f"]) == (1000.0, 1.0)


def test_a_continued_generation_starts_at_the_limit_prefactors_by_default():
    inp = _input(continued=True)
    loss = _checked(inp)["loss"]
    assert (loss["start_pref_e"], loss["limit_pref_e"]) == (2.0, 2.0)
    assert (loss["start_pref_f"], loss["limit_pref_f"]) == (1.0, 1.0)
    assert (loss["start_pref_v"], loss["limit_pref_v"]) == (0.0, 0.0)
    first = _input()
    assert inp["learning_rate"] == first["learning_rate"] and inp["model"] == first["model"]


def test_restart_keeps_the_schedule_and_overrides_come_last():
    assert _input(continued=True, continue_prefactors="restart")["loss"] == _input()["loss"]
    dpgen = {"loss": {"start_pref_e": 0.1, "start_pref_f": 100.0}, "learning_rate": {"start_lr": 1e-4}}
    inp = _input(continued=True, continue_overrides=dpgen)
    checked = _checked(inp)
    assert (checked["loss"]["start_pref_e"], checked["loss"]["start_pref_f"]) == (0.1, 100.0)
    assert checked["loss"]["limit_pref_e"] == 2.0 and checked["learning_rate"]["start_lr"] == 1e-4
    # the continuation does not leak into a first generation's input
    assert _input(continue_overrides=dpgen)["learning_rate"]["start_lr"] == 1e-3


def test_an_unknown_continuation_is_refused():
    with pytest.raises(ValueError, match="continue_prefactors"):
        _input(continued=True, continue_prefactors="reset")


def test_train_member_writes_the_continued_input(tmp_path, monkeypatch):
    """The member's input.json: continued (init_model) -> limit prefactors; the request's
    ``deepmd_continue`` on top. ``dp train`` itself is replaced by a stop after the input."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al import training
    from remote_al.deepmd_data import write_systems
    from remote_al.records import TrainRequest

    frames = []
    for k in range(4):
        a = Atoms("LiNiO2", positions=np.random.default_rng(k).random((4, 3)) * 3, cell=[4, 4, 4], pbc=True)
        a.calc = SinglePointCalculator(a, energy=-1.0 * k, forces=np.zeros((4, 3)))
        frames.append(a)
    systems = tuple(write_systems(frames, tmp_path / "data", TYPE_MAP))
    ckpt = tmp_path / "model.ckpt.pt"
    ckpt.write_bytes(b"")

    class Stop(Exception):
        pass

    def stop(cmd, workdir, env, log_name):
        raise Stop(cmd)

    monkeypatch.setattr(training, "_run", stop)

    def written(**kw) -> dict:
        req = TrainRequest("t", str(tmp_path / "m0"), systems, tuple(TYPE_MAP), member=0, seed=3,
                           numb_steps=50, deepmd=EXAMPLE_LOSS, **kw)
        with pytest.raises(Stop) as cmd:
            training.train_member(req)
        assert ("--init-model" in cmd.value.args[0]) == bool(kw.get("init_model"))
        return json.loads((tmp_path / "m0" / "input.json").read_text())

    assert written()["loss"]["start_pref_f"] == 1000.0
    assert written(init_model=str(ckpt))["loss"]["start_pref_f"] == 1.0
    assert written(init_model=str(ckpt), continue_prefactors="restart")["loss"]["start_pref_f"] == 1000.0
    lr = written(init_model=str(ckpt), deepmd_continue={"learning_rate": {"start_lr": 2e-4}})["learning_rate"]
    assert lr["start_lr"] == 2e-4
    # a request stored before these fields existed reads back with the defaults
    old = TrainRequest("t", "w", systems, tuple(TYPE_MAP), member=0, seed=3).to_dict()
    del old["continue_prefactors"], old["deepmd_continue"]
    assert TrainRequest.from_dict(old).continue_prefactors == "limit"
