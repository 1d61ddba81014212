"""The UQ evaluation path (remote_al.fast_uq, behind dynamics.predict_ensemble) gives the
numbers of DeePMD-kit's own DeepPot.eval, frame by frame, on real trained members."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from remote_al import fast_uq
from remote_al.ensemble import predict_ensemble, predict_ensemble_deeppot
from remote_al.structures import cathode_cell, perturb


def _max_diff(a, b) -> float:
    (e0, f0), (e1, f1) = a, b
    assert e0.shape == e1.shape and len(f0) == len(f1)
    return max(float(np.abs(e0 - e1).max()), max(float(np.abs(x - y).max()) for x, y in zip(f0, f1)))


@pytest.fixture(scope="module")
def members(tiny_ensemble):
    return [r.model_path for r in tiny_ensemble]


def _unwrapped(frames, rng):
    for a in frames:  # atoms moved by whole lattice vectors: the same structure
        a.positions += rng.integers(-3, 4, size=(len(a), 3)) @ np.asarray(a.cell)
    return frames


@pytest.mark.parametrize("case", ["rattled", "unwrapped", "mixed_species_small_batches", "larger_cell"])
def test_same_numbers_as_deeppot_one_frame_at_a_time(members, case):
    rng = np.random.default_rng(3)
    batch = 64
    if case == "rattled":
        frames = [perturb(cathode_cell(1.0), 0.08, 0.02, rng) for _ in range(6)]
    elif case == "unwrapped":
        frames = _unwrapped([perturb(cathode_cell(1.0, supercell=(2, 2, 2)), 0.08, 0.02, rng) for _ in range(3)], rng)
    elif case == "mixed_species_small_batches":
        frames = [perturb(cathode_cell(x), 0.05, 0.01, rng) for x in (1.0, 0.75, 1.0, 0.75, 0.75, 1.0, 1.0)]
        batch = 2
    else:
        frames = [perturb(cathode_cell(1.0, supercell=(3, 3, 2)), 0.05, 0.01, rng) for _ in range(2)]
    ref = predict_ensemble_deeppot(members, frames, batch_size=1)
    got = predict_ensemble(members, frames, batch_size=batch)
    assert _max_diff(ref, got) < 1e-8
    # and the forces are not trivially zero: the comparison means something
    assert max(float(np.abs(f).max()) for f in got[1]) > 1e-3


def test_non_periodic_frames_fall_back_to_deeppot(members):
    mol = Atoms("LiNiO2", positions=[[0, 0, 0], [2.0, 0, 0], [0, 1.9, 0], [0, 0, 2.0]], cell=[12, 12, 12], pbc=False)
    other = mol.copy()
    other.positions[1, 0] += 0.1
    frames = [mol, other]
    assert _max_diff(predict_ensemble_deeppot(members, frames, batch_size=1), predict_ensemble(members, frames)) < 1e-8


def test_neighbour_list_matches_ase():
    from ase.neighborlist import neighbor_list

    rng = np.random.default_rng(4)
    frames = [perturb(cathode_cell(1.0, supercell=(2, 2, 2)), 0.08, 0.02, rng) for _ in range(3)]
    frames = _unwrapped(frames, rng)
    x = np.array([a.positions for a in frames])
    c = np.array([np.asarray(a.cell) for a in frames])
    ext, mapping, nlist = fast_uq.neighbor_data(x, c, 5.0)
    for f, a in enumerate(frames):
        i_ase, d_ase = neighbor_list("id", a, 5.0)
        for i in range(len(a)):
            nb = nlist[f, i][nlist[f, i] >= 0]
            d = np.linalg.norm(ext[f, nb] - ext[f, i], axis=1)
            assert np.all(np.diff(d) >= -1e-12), "neighbours are not nearest first"
            np.testing.assert_allclose(np.sort(d), np.sort(d_ase[i_ase == i]), atol=1e-9)
            assert set(mapping[nb]) == set(neighbor_list("ij", a, 5.0)[1][i_ase == i])


def test_plain_interpreter_is_restored():
    import torch

    before = torch._C._get_graph_executor_optimize()
    with fast_uq._plain_interpreter():
        pass
    assert torch._C._get_graph_executor_optimize() == before


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU; the CPU tests above check the same path on CPU")
def test_same_numbers_on_cuda(members):
    """On a GPU (where the TorchScript optimiser stays on), the batched path still gives
    DeepPot.eval's numbers frame by frame."""
    from deepmd.pt.utils.env import DEVICE

    assert DEVICE.type == "cuda"
    rng = np.random.default_rng(6)
    frames = [perturb(cathode_cell(x, supercell=(2, 2, 2)), 0.08, 0.02, rng) for x in (1.0, 0.75) for _ in range(5)]
    ref = predict_ensemble_deeppot(members, frames, batch_size=1)
    got = predict_ensemble(members, frames, batch_size=64)
    assert _max_diff(ref, got) < 1e-6
