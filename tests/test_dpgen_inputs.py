"""The DP-GEN inputs of issue #22 (benchmarks/peers/dpgen): what make_inputs.py writes is
the campaign's work, DP-GEN's own argument checks accept it, and fp_chgnet.py gives
CHGNet's labels. DP-GEN itself never runs here.

The DP-GEN checks need DP-GEN's own environment (``benchmarks/peers/dpgen/setup.sh``):
they run its python in a subprocess, and are skipped when it is not there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "benchmarks" / "peers" / "dpgen"
CAMPAIGN = ROOT / "examples" / "linio2.toml"
# DP-GEN's environment: the benchmark's (benchmarks/peers/dpgen/setup.sh) or, for these checks
# alone, the light one `make test` builds (setup.sh --checks-only: no PyTorch, no LAMMPS);
# usable once its `dpgen` script is there (pip writes it after the package)
DPGEN_PYTHON = Path(os.environ.get("REMOTE_AL_DPGEN_PYTHON", PEER / ".venv" / "bin" / "python"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, PEER / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return sys.modules[name]


mi = _load("make_inputs")
fp = _load("fp_chgnet")


@pytest.fixture(scope="module")
def cfg():
    from driver.config import load_config

    return load_config(CAMPAIGN)


def _inputs(cfg, out: Path, walkers: int = 1):
    init = [f"init/{s.name}" for s in cfg.structures]
    confs = [[f"confs/{s.name}/POSCAR"] * walkers for s in cfg.structures]
    param = mi.make_param(cfg, prefix=str(out), init_data_sys=init, sys_configs=confs, campaign=str(CAMPAIGN))
    machine = mi.make_machine(venv=PEER / ".venv", labeler_json=out / "labeler.json")
    return param, machine


def test_param_is_the_campaigns_work(cfg, tmp_path):
    param, machine = _inputs(cfg, tmp_path)
    ex, t, n_sys = cfg.exploration, cfg.training, len(cfg.structures)
    assert param["type_map"] == list(cfg.campaign.type_map) == ["Li", "Ni", "O"]
    assert param["numb_models"] == t.ensemble_size == 4
    assert param["train_backend"] == "pytorch"
    assert len(param["init_data_sys"]) == len(param["sys_configs"]) == n_sys
    # exploration: one model_devi job per round, every system, the campaign's conditions
    jobs = param["model_devi_jobs"]
    assert param["model_devi_engine"] == "lammps" and len(jobs) == cfg.campaign.max_rounds
    for job in jobs:
        assert job["sys_idx"] == list(range(n_sys))
        assert job["temps"] == list(ex.temperatures_K) == [300.0, 700.0]
        assert job["nsteps"] == ex.steps == 600
        assert job["ensemble"] == ex.ensemble
        dumped = range(0, job["nsteps"] + 1, job["trj_freq"])  # DP-GEN's LAMMPS dump steps
        assert len([s for s in dumped if s >= param["model_devi_skip"]]) == ex.n_frames
    assert param["model_devi_dt"] == pytest.approx(ex.timestep_fs / 1000.0)
    # the same per-round label budget: DP-GEN caps per system
    assert param["fp_task_max"] * n_sys == cfg.selection.max_per_round == 12
    assert param["fp_task_min"] == 1
    lo, hi = param["model_devi_f_trust_lo"], param["model_devi_f_trust_hi"]
    assert (lo, hi) == mi.DEFAULT_TRUST and 0 < lo < hi
    # the same DeePMD-kit model and training
    dp = param["default_training_param"]
    assert dp["model"]["type_map"] == param["type_map"]
    assert dp["model"]["descriptor"]["type"] == "se_e2_a"
    assert dp["training"]["numb_steps"] == t.numb_steps == 800
    assert "systems" not in dp["training"]["training_data"]
    for k, v in t.deepmd["loss"].items():
        assert dp["loss"][k] == v
    assert param["training_reuse_iter"] == 1  # DP-GEN continues from the last models from iteration 1 on
    assert param["training_reuse_numb_steps"] == t.numb_steps_continue == 400
    # continue_prefactors "limit": a continued run starts at the limit prefactors
    assert param["training_reuse_start_pref_e"] == t.deepmd["loss"]["limit_pref_e"]
    assert param["training_reuse_start_pref_f"] == t.deepmd["loss"]["limit_pref_f"]
    # the labeler: fp_style custom, fp_chgnet.py with the project's python
    assert param["fp_style"] == "custom"
    assert set(param["fp_params"]) == {"input_fn", "input_fmt", "output_fn", "output_fmt"}
    assert "fp_chgnet.py" in machine["fp"]["command"] and sys.executable in machine["fp"]["command"]
    assert machine["fp"]["command"].count(param["fp_params"]["output_fn"]) >= 1
    for step in ("train", "model_devi", "fp"):
        assert machine[step]["machine"]["batch_type"] == machine[step]["resources"]["batch_type"] == "Shell"
        assert machine[step]["machine"]["context_type"] == "LazyLocalContext"
    assert machine["model_devi"]["command"].split()[-1].endswith("/bin/lmp")
    json.dumps(param), json.dumps(machine)  # plain JSON


def test_scratch_training_and_walkers(cfg, tmp_path):
    init = ["init/a", "init/b"]
    param = mi.make_param(cfg, prefix=str(tmp_path), init_data_sys=init, sys_configs=[["c/P"] * 3, ["d/P"] * 3],
                          retrain="scratch", rounds=5, trust=(0.1, 0.3))
    assert "training_reuse_iter" not in param and "training_reuse_numb_steps" not in param
    assert len(param["model_devi_jobs"]) == 5
    assert (param["model_devi_f_trust_lo"], param["model_devi_f_trust_hi"]) == (0.1, 0.3)
    with pytest.raises(ValueError):
        mi.make_param(cfg, prefix="/", init_data_sys=init, sys_configs=[["c"], ["d"]], trust=(0.3, 0.1))


def test_default_trust_is_round0_of_al_efficiency():
    """DEFAULT_TRUST: the mean over seeds of round 0's median / 95th percentile of DP-GEN's
    max force deviation on the campaign pool (benchmarks/results/al_efficiency.json)."""
    path = ROOT / "benchmarks" / "results" / "al_efficiency.json"  # committed with the project
    r0 = json.loads(path.read_text())["round0"]
    lo, hi = np.mean([r["dpgen_trust"]["campaign"] for r in r0.values()], axis=0)
    assert mi.DEFAULT_TRUST == pytest.approx((lo, hi), abs=0.006)


def test_trust_from_model_devi_files(tmp_path):
    rng = np.random.default_rng(0)
    devi = rng.uniform(0.0, 1.0, size=200)
    for k, part in enumerate((devi[:120], devi[120:])):
        d = tmp_path / f"task.000.00000{k}"
        d.mkdir()
        rows = np.zeros((len(part), 7))
        rows[:, 0] = np.arange(len(part)) * 50
        rows[:, mi.MAX_DEVI_F_COLUMN] = part
        np.savetxt(d / "model_devi.out", rows)
    lo, hi = mi.trust_from_runs([tmp_path])
    assert lo == pytest.approx(np.quantile(devi, 0.5), abs=1e-3)
    assert hi == pytest.approx(np.quantile(devi, 0.95), abs=1e-3)


def _frame():
    from remote_al.structures import cathode_cell, perturb

    return perturb(cathode_cell(0.75), 0.06, 0.02, np.random.default_rng(3))


def test_fp_chgnet_gives_chgnets_labels(tmp_path, monkeypatch):
    """fp_chgnet.py as DP-GEN calls it (input.poscar in, deepmd/npy out), against CHGNet's
    own ASE calculator on the same frame."""
    pytest.importorskip("chgnet")
    import dpdata
    from ase.io import read
    from chgnet.model.dynamics import CHGNetCalculator
    from chgnet.model.model import CHGNet

    system = mi.dpdata_system([_frame()], ["Li", "Ni", "O"])
    system.sort_atom_types()
    system.to("vasp/poscar", str(tmp_path / "POSCAR"))
    monkeypatch.chdir(tmp_path)
    dpdata.System("POSCAR", fmt="vasp/poscar").to("vasp/poscar", "input.poscar")  # DP-GEN's make_fp_custom
    assert fp.main(["--input", "input.poscar", "--input-fmt", "vasp/poscar", "--output", "labeled",
                    "--output-fmt", "deepmd/npy"]) == 0
    got = dpdata.LabeledSystem("labeled", fmt="deepmd/npy")  # as DP-GEN's post_fp reads it
    assert len(got) == 1 and got["atom_names"] == ["Li", "Ni", "O"]

    atoms = read("input.poscar", format="vasp")
    atoms.calc = CHGNetCalculator(model=CHGNet.load(verbose=False, use_device="cpu"), use_device="cpu")
    assert got["energies"][0] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(got["forces"][0], atoms.get_forces(), atol=1e-4)
    np.testing.assert_allclose(got["coords"][0], atoms.positions, atol=1e-6)
    virial = -atoms.get_volume() * atoms.get_stress(voigt=False)
    np.testing.assert_allclose(got["virials"][0], virial, atol=1e-3)
    multi = dpdata.MultiSystems(got, type_map=["Li", "Ni", "O"])  # DP-GEN's collection of fp data
    assert multi.get_nframes() == 1


def _fake_data(cfg, out: Path):
    """init/ and confs/ as make_inputs writes them, with zero labels (nothing is trained)."""
    from driver.preflight import build_structure

    type_map = list(cfg.campaign.type_map)
    for spec in cfg.structures:
        atoms = build_structure(spec)
        system = mi.dpdata_system([atoms, atoms], type_map)
        data = dict(system.data)
        data.update(energies=np.zeros(2), forces=np.zeros((2, len(atoms), 3)))
        dpdata = pytest.importorskip("dpdata")
        dpdata.LabeledSystem(data=data).to("deepmd/npy", str(out / "init" / spec.name))
        poscar = out / "confs" / spec.name / "POSCAR"
        poscar.parent.mkdir(parents=True)
        system.sort_atom_types()
        system.sub_system([0]).to("vasp/poscar", str(poscar))


@pytest.mark.skipif(not (DPGEN_PYTHON.parent / "dpgen").exists(),
                    reason="DP-GEN's environment is not installed: run benchmarks/peers/dpgen/setup.sh --checks-only (make test does)")
def test_dpgen_accepts_the_inputs(cfg, tmp_path):
    """DP-GEN 0.14's own checks in its own environment: param.json and machine.json by its
    arginfo (strict), then its make_train of iteration 0 on the data, whose input.json
    files pass DeePMD-kit's argument check (benchmarks/peers/dpgen/check_inputs.py)."""
    param, machine = _inputs(cfg, tmp_path)
    _fake_data(cfg, tmp_path)
    (tmp_path / "param.json").write_text(json.dumps(param))
    (tmp_path / "machine.json").write_text(json.dumps(machine))
    run = subprocess.run([str(DPGEN_PYTHON), str(PEER / "check_inputs.py"), str(tmp_path / "param.json"),
                          str(tmp_path / "machine.json"), "--make-train"],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert lines, run.stdout + run.stderr
    res = json.loads(lines[-1])
    assert run.returncode == 0 and res["ok"], res
    assert res["members_checked"] == cfg.training.ensemble_size
    assert res["numb_steps"] == cfg.training.numb_steps
    assert len(res["systems"]) == len(cfg.structures)
    assert not (tmp_path / "iter.000000").exists()

    bad = dict(param, fp_task_maximum=12)  # DP-GEN's strict check refuses an unknown key
    (tmp_path / "param.json").write_text(json.dumps(bad))
    run = subprocess.run([str(DPGEN_PYTHON), str(PEER / "check_inputs.py"), str(tmp_path / "param.json"),
                          str(tmp_path / "machine.json")], check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 1 and "fp_task_maximum" in run.stdout


# ------------------------------------------------------------ dpgen simplify (vs_dpgen_simplify.py)
def _load_benchmark(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _labeled(symbols, shift: float, **info):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    n = len(symbols)
    a = Atoms(symbols, positions=np.arange(n * 3, dtype=float).reshape(n, 3) * 0.7 + shift,
              cell=np.eye(3) * 6.0, pbc=True)
    a.calc = SinglePointCalculator(a, energy=-5.0 * n + shift, forces=np.full((n, 3), shift),
                                   stress=np.full(6, 0.01 * shift))
    a.info.update(info)
    return a


def _stage0(d: Path):
    from remote_al.structures import to_extxyz

    d.mkdir(parents=True)
    li, li3 = ["Li", "Ni", "O", "O"], ["Ni", "O", "O"]
    initial = [_labeled(li, 0.1 * i, source="rattled", temperature_K=0.0) for i in range(3)]
    initial += [_labeled(li3, 0.1 * i, source="rattled", temperature_K=0.0) for i in range(2)]
    pool = [_labeled(li, 0.05 * i, source="md", temperature_K=t) for i, t in enumerate([300.0, 700.0, 1000.0, 300.0])]
    pool += [_labeled(li3, 0.3, source="rattled", temperature_K=0.0)]
    (d / "initial.extxyz").write_text(to_extxyz(initial))
    (d / "pool.extxyz").write_text(to_extxyz(pool))


def test_simplify_inputs_are_al_efficiencys_work(tmp_path):
    """vs_dpgen_simplify.py gives DP-GEN al_efficiency's initial data and its labeled pool (the
    campaign pool: MD frames at the campaign's temperatures only), its budget, training steps
    and the trust window; model_devi is DeePMD-kit's `dp --pt model-devi`."""
    vs = _load_benchmark("vs_dpgen_simplify")
    _stage0(tmp_path / "stage0")
    sizes = vs.write_data(tmp_path / "stage0", tmp_path / "data", "campaign", ["Li", "Ni", "O"])
    assert sizes == {"init": 5, "pool": 3}  # the 1000 K and the rattled pool frames are not in the campaign pool
    assert vs._frames_in([tmp_path / "data" / "init"]) == 5 and vs._frames_in([tmp_path / "data" / "pool"]) == 3
    assert vs.write_data(tmp_path / "stage0", tmp_path / "all", "all", ["Li", "Ni", "O"])["pool"] == 5
    forces = np.concatenate([np.load(f) for f in sorted((tmp_path / "data" / "pool").glob("*/set.*/force.npy"))])
    assert np.allclose(forces.reshape(3, -1, 3)[:, 0], [[0.0] * 3, [0.05] * 3, [0.15] * 3])  # labels kept, frame order

    param = vs.make_param(tmp_path / "data", k=20, rounds=6, steps_initial=800, steps_continue=200,
                          trust=(0.48, 0.65), campaign=CAMPAIGN)
    assert param["labeled"] is True and param["pick_data"] == str(tmp_path / "data" / "pool")
    assert param["init_pick_number"] == param["iter_pick_number"] == 20
    assert (param["model_devi_f_trust_lo"], param["model_devi_f_trust_hi"]) == (0.48, 0.65)
    assert sorted(param["init_data_sys"]) == ["init/Li0Ni1O2", "init/Li1Ni1O2"]
    assert param["default_training_param"]["training"]["numb_steps"] == 800
    assert param["training_reuse_numb_steps"] == 200 and param["numb_models"] == 4
    assert param["default_training_param"]["loss"]["start_pref_f"] == 1000.0
    machine = vs.make_machine()
    assert machine["model_devi"]["command"].endswith("bin/dp --pt")
    with pytest.raises(ValueError, match="0 < lo < hi"):
        vs.make_param(tmp_path / "data", k=20, rounds=6, steps_initial=800, steps_continue=200,
                      trust=(0.6, 0.5), campaign=CAMPAIGN)


def test_simplify_bookkeeping(tmp_path):
    """What the benchmark reads back from a simplify run: DP-GEN's window counts per
    model_devi, the last finished step of record.dpgen, the labels each iteration trained on,
    and the labels-to-target comparison with al_efficiency's curves."""
    vs = _load_benchmark("vs_dpgen_simplify")
    log = ("INFO : candidate :    310 in    320 96.88 %\nINFO : accurate  :      6 in    320 1.88 %\n"
           "INFO : failed    :      4 in    320 1.25 %\nINFO : total candidate 310 picked 20\n"
           "INFO : candidate :     12 in    300 4.00 %\nINFO : accurate  :    280 in    300 93.33 %\n"
           "INFO : failed    :      8 in    300 2.67 %\n")
    assert vs.dpgen_counts(log) == [{"candidate": 310, "accurate": 6, "failed": 4},
                                    {"candidate": 12, "accurate": 280, "failed": 8}]
    assert vs.trained_through(tmp_path / "record.dpgen") == (0, -1)
    (tmp_path / "record.dpgen").write_text("0 0\n0 1\n1 8\n2 2\n")
    assert vs.trained_through(tmp_path / "record.dpgen") >= (2, 2)

    for i, picked in enumerate([20, 12]):  # iteration 0 picks 20 at random, iteration 1 only 12 in its window
        train = tmp_path / f"iter.{i:06d}" / "00.train"
        train.mkdir(parents=True)
        for m in range(2):
            (train / f"graph.{m:03d}.pth").write_text("")
        energy = tmp_path / f"iter.{i:06d}" / "01.model_devi" / "data.picked" / "Li1Ni1O2" / "set.000" / "energy.npy"
        energy.parent.mkdir(parents=True)
        np.save(energy, np.zeros(picked))
    (tmp_path / "dpgen.log").write_text(log)
    rows = vs.iterations(tmp_path, n_init=20)
    assert [r["labels"] for r in rows] == [20, 40]
    assert rows[1]["window_counts_of_its_models"]["candidate"] == 310 and "window_counts_of_its_models" not in rows[0]

    curves = {"curves": {"kmeans_group": {"n_labels": [20, 40, 60], "force_rmse_eV_A in-distribution mean": [0.5, 0.4, 0.3]},
                         "random": {"n_labels": [20, 40, 60], "force_rmse_eV_A in-distribution mean": [0.5, 0.45, 0.42]}}}
    cmp = vs.compare(([20.0, 40.0, 60.0], [0.5, 0.42, 0.35]), curves, "kmeans_group")
    assert cmp["target_force_rmse_eV_A"] == 0.35 and cmp["simplify_labels_needed"] == 60.0
    assert cmp["labels_ratio"] == pytest.approx(50.0 / 60.0)  # kmeans_group: 0.35 halfway from 40 to 60 labels
    assert cmp["labels_ratio_random"] is None  # random never gets there
    ended_early = [{"labels": 20, "force_rmse_eV_A": 0.5}, {"labels": 40, "force_rmse_eV_A": 0.4}]
    full = [{"labels": 20, "force_rmse_eV_A": 0.5}, {"labels": 40, "force_rmse_eV_A": 0.4},
            {"labels": 60, "force_rmse_eV_A": 0.3}]
    assert vs.mean_curve([ended_early, full]) == ([20.0, 40.0, 50.0], [0.5, 0.4, pytest.approx(0.35)])


@pytest.mark.skipif(not (DPGEN_PYTHON.parent / "dpgen").exists(),
                    reason="DP-GEN's environment is not installed: run benchmarks/peers/dpgen/setup.sh --checks-only (make test does)")
def test_dpgen_simplify_accepts_the_inputs(tmp_path):
    """`dpgen simplify`'s own checks (its arginfo, strict) and DP-GEN's make_train of iteration 0
    on vs_dpgen_simplify.py's inputs, whose input.json pass DeePMD-kit's argument check."""
    vs = _load_benchmark("vs_dpgen_simplify")
    _stage0(tmp_path / "stage0")
    vs.write_data(tmp_path / "stage0", tmp_path / "data", "campaign", ["Li", "Ni", "O"])
    param = vs.make_param(tmp_path / "data", k=20, rounds=6, steps_initial=800, steps_continue=200,
                          trust=(0.48, 0.65), campaign=CAMPAIGN)
    (tmp_path / "param.json").write_text(json.dumps(param))
    (tmp_path / "machine.json").write_text(json.dumps(vs.make_machine()))
    run = subprocess.run([str(DPGEN_PYTHON), str(PEER / "check_inputs.py"), str(tmp_path / "param.json"),
                          str(tmp_path / "machine.json"), "--simplify", "--make-train"],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert lines, run.stdout + run.stderr
    res = json.loads(lines[-1])
    assert run.returncode == 0 and res["ok"], res
    assert res["param"] == "simplify_jdata_arginfo" and res["members_checked"] == 4 and res["numb_steps"] == 800

    (tmp_path / "param.json").write_text(json.dumps(dict(param, stop_iter=6)))  # read by its code, refused by its check
    run = subprocess.run([str(DPGEN_PYTHON), str(PEER / "check_inputs.py"), str(tmp_path / "param.json"),
                          str(tmp_path / "machine.json"), "--simplify"], check=False, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 1 and "stop_iter" in run.stdout
