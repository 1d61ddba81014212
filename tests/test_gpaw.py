"""GPAW labeler: real DFT labels of a 4-atom LiNiO2 cell (forces against finite differences
of the energy), the SCF retry, failures that do not lose a batch, and the pure helpers."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.spacegroup import crystal  # noqa: E402

from remote_al.labelers import LabelingError, get_labeler  # noqa: E402
from remote_al.labelers.gpaw import (  # noqa: E402
    GPAWLabeler,
    GPAWSettings,
    calculator_parameters,
    hubbard_setups,
    initial_magmoms,
    reduced_cell_copy,
)
from remote_al.records import Label  # noqa: E402

try:
    import gpaw  # noqa: F401

    HAVE_GPAW, WHY = True, "gpaw is importable"
except ImportError as exc:
    HAVE_GPAW, WHY = False, f"gpaw is not importable ({exc}); install it with scripts/install_gpaw.sh"


def needs_gpaw(test):
    return pytest.mark.gpaw(pytest.mark.skipif(not HAVE_GPAW, reason=WHY)(test))


# Small but real: PBE+U (U_Ni = 6.2 eV by default), spin-polarized, PW 300 eV, k 2x2x2.
SMALL = {"ecut": 300, "kpts": [2, 2, 2]}


def linio2_primitive():
    """4-atom rhombohedral LiNiO2 (R-3m, hex a=2.878 c=14.19), as spglib-style primitive
    cell with 33-degree angles: the labeler must reduce it without turning the frame."""
    return crystal(["Li", "Ni", "O"], basis=[(0, 0, 0), (0, 0, 0.5), (0, 0, 0.2578)], spacegroup=166,
                   cellpar=[2.878, 2.878, 14.19, 90, 90, 120], primitive_cell=True)


# --------------------------------------------------------------------- real DFT
@needs_gpaw
def test_forces_match_finite_differences_of_the_energy(tmp_path):
    h = 0.01  # A, central differences
    tolerance = 0.01  # eV/A; measured deviations here were below 0.002 eV/A
    components = [(1, 0), (2, 2)]  # (atom, axis): Ni x, O z
    atoms = linio2_primitive()
    atoms.rattle(0.05, seed=3)
    frames = [atoms]
    for a, c in components:
        for sign in (+1, -1):
            displaced = atoms.copy()
            displaced.positions[a, c] += sign * h
            frames.append(displaced)

    labels = GPAWLabeler(SMALL).label(frames, list(range(len(frames))), tmp_path)

    assert [l.status for l in labels] == ["ok"] * len(frames), [l.reason for l in labels]
    base = labels[0]
    forces = np.array(base.forces)
    assert forces.shape == (4, 3) and base.stress is None
    assert abs(base.magmoms[1]) > 0.5  # Ni carries the moment
    assert (tmp_path / "0" / "gpaw.txt").is_file() and base.wall_s > 0
    for k, (a, c) in enumerate(components):
        e_plus, e_minus = labels[1 + 2 * k].energy, labels[2 + 2 * k].energy
        fd = -(e_plus - e_minus) / (2 * h)
        assert abs(forces[a, c]) > 0.1  # a component worth checking
        assert forces[a, c] == pytest.approx(fd, abs=tolerance), (a, c)


@needs_gpaw
def test_unconverged_scf_is_retried_then_failed_without_losing_the_batch(tmp_path):
    on_top = Atoms("LiO", positions=[(0, 0, 0), (0, 0, 0)], cell=[4, 4, 4], pbc=True)
    settings = {"ecut": 250, "kpts": [1, 1, 1], "maxiter": 2, "retry_maxiter": 3}
    labels = GPAWLabeler(settings).label([on_top, linio2_primitive()], [11, 12], tmp_path)
    assert [l.structure_id for l in labels] == [11, 12]
    assert labels[0].status == "failed" and labels[0].reason.startswith("GPAW raised AtomsTooClose")
    assert labels[1].status == "failed" and labels[1].energy is None
    assert "SCF not converged in 3 iterations after a retry with mixer" in labels[1].reason
    assert "SCF not converged in 2 iterations with the first mixer" in labels[1].reason
    assert (tmp_path / "12" / "gpaw.txt").is_file() and (tmp_path / "12" / "gpaw-retry.txt").is_file()


@needs_gpaw
def test_retry_with_the_safer_mixer_can_converge(tmp_path):
    lithium = bulk("Li", "bcc", a=3.44)
    settings = {"ecut": 200, "kpts": [2, 2, 2], "maxiter": 2, "retry_maxiter": 200}
    (label,) = GPAWLabeler(settings).label([lithium], [4], tmp_path)
    assert label.status == "ok", label.reason
    assert np.isfinite(label.energy) and np.abs(np.array(label.forces)).max() < 1e-3  # bcc: no force
    assert (tmp_path / "4" / "gpaw-retry.txt").is_file()


# ------------------------------------------------------------------ pure helpers
def test_hubbard_u_setups_follow_the_species_present():
    symbols = ["Li", "Ni", "Co", "Mn", "O", "Ni"]
    assert hubbard_setups(symbols, {"Ni": 6.2, "Co": 3.32, "Mn": 3.9}) == {
        "Ni": ":d,6.2", "Co": ":d,3.32", "Mn": ":d,3.9"}
    assert hubbard_setups(["Li", "Ni", "O"], {}) == {}
    params = calculator_parameters(symbols, GPAWSettings())
    assert params["setups"]["Ni"] == ":d,6.2" and params["spinpol"] is True
    assert params["kpts"] == {"density": 2.0, "gamma": True}


def test_retry_parameters_change_the_mixer_and_iterations():
    settings = GPAWSettings(maxiter=50)
    first = calculator_parameters(["Ni", "O"], settings)
    retry = calculator_parameters(["Ni", "O"], settings, retry=True)
    assert "mixer" not in first and retry["mixer"]["name"] == "pulay"
    assert retry["mixer"]["beta"] < 0.05 and retry["maxiter"] == 100


def test_initial_moments_per_species():
    assert initial_magmoms(["Li", "Ni", "O", "Mn"], {}) == [0.0, 1.0, 0.0, 3.0]
    assert initial_magmoms(["Ni"], {"Ni": 2.0}) == [2.0]


def test_reduced_cell_keeps_the_frame_and_the_order():
    atoms = linio2_primitive()
    atoms.rattle(0.05, seed=1)
    reduced = reduced_cell_copy(atoms)
    assert reduced.get_chemical_symbols() == atoms.get_chemical_symbols()
    assert min(reduced.cell.angles()) > 60 and min(atoms.cell.angles()) < 40
    # New vectors are integer combinations of the old ones (no rotation) ...
    combos = np.linalg.solve(atoms.cell.array.T, reduced.cell.array.T).T
    np.testing.assert_allclose(combos, np.round(combos), atol=1e-9)
    assert abs(abs(np.linalg.det(np.round(combos))) - 1) < 1e-9
    # ... and each atom moved by a lattice vector only.
    shift = np.linalg.solve(atoms.cell.array.T, (reduced.positions - atoms.positions).T).T
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)


def test_unknown_setting_is_a_setup_error(tmp_path):
    with pytest.raises(LabelingError, match="ecutoff"):
        GPAWLabeler({"ecutoff": 300}).label([linio2_primitive()], [1], tmp_path)


def test_missing_gpaw_is_a_setup_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpaw", None)  # import gpaw -> ImportError
    with pytest.raises(LabelingError, match="install_gpaw.sh"):
        GPAWLabeler(SMALL).label([linio2_primitive()], [1], tmp_path)


def test_nan_from_the_calculation_becomes_a_failed_label(tmp_path, monkeypatch):
    # Only the calculation is replaced; label() and its validation run as they are.
    monkeypatch.setitem(sys.modules, "gpaw", sys.modules.get("gpaw") or types.ModuleType("gpaw"))

    def nan_calculation(self, atoms, sid, rundir, settings):
        return Label(sid, "ok", energy=-10.0, forces=((float("nan"), 0.0, 0.0),) + ((0.0, 0.0, 0.0),) * 3)

    monkeypatch.setattr(GPAWLabeler, "_label_one", nan_calculation)
    (label,) = GPAWLabeler(SMALL).label([linio2_primitive()], [6], tmp_path)
    assert label.status == "failed" and "forces contain NaN" in label.reason


def test_registry_builds_the_gpaw_labeler():
    labeler = get_labeler("gpaw", SMALL)
    assert isinstance(labeler, GPAWLabeler) and "GPAW" in labeler.note
