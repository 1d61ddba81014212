"""The dataset store: frames once by content, lineage, refused labels, exact re-export.

Frames are real ASE cathode cells with made-up but finite labels on a
SinglePointCalculator; exports are read back with DeePMD-kit's own data loader and
with dpdata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from driver.dataset import DatasetError, DatasetStore, LabelRejected, frame_hash
from driver.state import State
from remote_al.structures import cathode_cell, perturb

pytestmark = pytest.mark.timeout(120)

TYPE_MAP = ("Li", "Ni", "O")


def labeled(atoms, rng, energy=None, forces=None, stress="auto"):
    a = atoms.copy()
    n = len(a)
    e = -4.5 * n + rng.normal(0, 0.1) if energy is None else energy
    f = rng.normal(0, 0.3, size=(n, 3)) if forces is None else forces
    s = rng.normal(0, 0.005, size=6) if isinstance(stress, str) else stress
    kw = {"energy": e, "forces": f}
    if s is not None:
        kw["stress"] = s
    a.calc = SinglePointCalculator(a, **kw)
    return a


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def frames(rng):
    """Six frames of LiNiO2 (16 atoms) and four of Li0.75NiO2 (15 atoms)."""
    out = [labeled(perturb(cathode_cell(1.0), 0.05, 0.02, rng), rng) for _ in range(6)]
    out += [labeled(perturb(cathode_cell(0.75), 0.05, 0.02, rng), rng) for _ in range(4)]
    return out


@pytest.fixture
def state(tmp_path):
    st = State(tmp_path / "campaign" / "state.sqlite")
    yield st
    st.close()


def add_all(store, frames, round_=0, split="train", first_id=1):
    return [store.add(a, labeler="chgnet", labeler_settings={"model": "0.3.0"}, task_key=f"label:r{round_}:b0",
                      structure_id=first_id + i, exploration="initial" if round_ == 0 else f"md:r{round_}:w0",
                      model_generation=round_ - 1, split=split, round_=round_).hash
            for i, a in enumerate(frames)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_frame_is_stored_once_and_counted(state, frames, rng):
    store = DatasetStore(state)
    first = store.add(frames[0], labeler="chgnet", task_key="label:r0:b0", structure_id=1)
    relabeled = labeled(frames[0], rng)  # the same structure, labeled again
    again = store.add(relabeled, labeler="gpaw", task_key="label:r1:b3", structure_id=9,
                      labeler_settings={"mode": "pw"})
    assert first.added and not again.added and first.hash == again.hash
    assert state.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 1
    assert store.duplicates(first.hash) == 1
    lineage = store.lineage(first.hash)  # the first record is kept
    assert lineage["labeler"] == "chgnet" and lineage["structure_id"] == 1
    assert lineage["exploration"] == "initial" and lineage["model_generation"] == -1
    assert lineage["composition"] == "LiNiO2" and lineage["duplicates"] == 1


def test_frame_hash_is_content_at_fixed_precision(frames):
    a = frames[0]
    b = a.copy()
    b.positions += 1e-9  # below the hashed precision
    assert frame_hash(a) == frame_hash(b)
    zero, negzero = a.copy(), a.copy()
    zero.positions[0] = [0.0, 0.0, 0.0]
    negzero.positions[0] = [-0.0, -1e-9, -0.0]  # rounds to -0.0: normalized
    assert frame_hash(zero) == frame_hash(negzero)
    moved = a.copy()
    moved.positions[3, 2] += 1e-4
    assert frame_hash(moved) != frame_hash(a)
    reordered = a[[1, 0] + list(range(2, len(a)))]
    assert frame_hash(reordered) != frame_hash(a)  # atom order is part of a frame
    strained = a.copy()
    strained.cell[0, 0] += 1e-3
    assert frame_hash(strained) != frame_hash(a)


@pytest.mark.parametrize("case, reason", [
    ("nan_energy", "energy is nan"),
    ("inf_force", "forces contain NaN or inf"),
    ("nan_stress", "stress contains NaN or inf"),
    ("no_labels", "no energy/forces"),
    ("failed", "SCF did not converge"),
    ("bad_shape", "forces have shape"),
])
def test_failed_and_nan_labels_are_refused(state, frames, rng, case, reason):
    store = DatasetStore(state)
    a = frames[0]
    n = len(a)
    kwargs = {}
    if case == "nan_energy":
        a = labeled(a, rng, energy=float("nan"))
    elif case == "inf_force":
        f = rng.normal(size=(n, 3))
        f[4, 1] = np.inf
        a = labeled(a, rng, forces=f)
    elif case == "nan_stress":
        a = labeled(a, rng, stress=np.array([0, 0, np.nan, 0, 0, 0]))
    elif case == "no_labels":
        a = a.copy()
        a.calc = None
    elif case == "failed":
        kwargs = {"status": "failed", "reason": "SCF did not converge in 120 steps"}
    elif case == "bad_shape":
        a = labeled(a, rng, forces=np.zeros((n - 1, 3)))
    with pytest.raises(LabelRejected, match=reason):
        store.add(a, labeler="vasp", task_key="label:r1:b0", structure_id=4, **kwargs)
    assert state.db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 0


def test_export_loads_with_deepmd_and_dpdata(state, frames, tmp_path):
    import dpdata
    from deepmd.utils.data import DeepmdData

    store = DatasetStore(state)
    hashes = add_all(store, frames)
    store.record_version(0, store.select("train", max_round=0))
    out = store.export(0, tmp_path / "gen-000", type_map=TYPE_MAP)

    assert out.n_frames == 10 and len(out.systems) == 2  # one system per composition + atom order
    manifest = json.loads((Path(out.path) / "manifest.json").read_text())
    assert manifest["digest"] == out.digest and sorted(sum(manifest["systems"].values(), [])) == sorted(hashes)
    stored_energy = {h: store.frame(h)["energy"] for h in hashes}
    for sysdir in out.systems:
        name = Path(sysdir).name
        want = np.array([stored_energy[h] for h in manifest["systems"][name]])

        data = DeepmdData(sysdir, type_map=list(TYPE_MAP), shuffle_test=False)
        data.add("energy", 1, atomic=False, must=True, high_prec=True)
        data.add("force", 3, atomic=True, must=True, high_prec=False)
        test = data.get_test()
        assert data.get_natoms() in (15, 16) and test["energy"].shape[0] == len(want)
        np.testing.assert_allclose(test["energy"].reshape(-1), want, rtol=0, atol=1e-8)
        assert np.all(np.isfinite(test["force"]))

        system = dpdata.LabeledSystem(sysdir, fmt="deepmd/npy")
        assert system.get_nframes() == len(want)
        assert system["atom_names"] == list(TYPE_MAP)
        np.testing.assert_allclose(system["energies"], want, rtol=0, atol=1e-8)
        assert system["virials"].shape == (len(want), 3, 3)

    from ase.io import read

    back = read(out.extxyz, index=":")
    assert [a.info["frame_hash"] for a in back] == hashes
    assert np.allclose([a.get_potential_energy() for a in back], [stored_energy[h] for h in hashes])


def test_a_generation_is_re_exported_byte_for_byte(state, frames, tmp_path, rng):
    store = DatasetStore(state)
    add_all(store, frames[:6])
    store.record_version(0, store.select("train", max_round=0))
    first = store.export(0, tmp_path / "a" / "gen-000", type_map=TYPE_MAP)
    original = tree_bytes(Path(first.path))

    # The campaign goes on: more frames (one a duplicate), a held-out frame, generation 1.
    add_all(store, frames[6:] + [frames[0]], round_=1, first_id=20)
    add_all(store, [labeled(perturb(cathode_cell(1.0), 0.05, 0.02, rng), rng)], round_=1, split="test",
            first_id=40)
    g1 = store.select("train", max_round=1)
    store.record_version(1, g1)
    assert len(g1) == 10 and store.version(0) == g1[:6]

    # Re-export generation 0 later, from a reopened state file: the same bytes.
    path = state.path
    state.close()
    reopened = State(path)
    try:
        again = DatasetStore(reopened).export(0, tmp_path / "b" / "gen-000", type_map=TYPE_MAP)
        assert tree_bytes(Path(again.path)) == original and again.digest == first.digest
        # Exporting over an existing export replaces it whole.
        DatasetStore(reopened).export(1, Path(first.path), type_map=TYPE_MAP)
        assert json.loads((Path(first.path) / "manifest.json").read_text())["n_frames"] == 10
        assert not Path(first.path + ".tmp").exists()
    finally:
        reopened.close()


def test_versions_are_immutable_and_hold_training_frames_only(state, frames):
    store = DatasetStore(state)
    train = add_all(store, frames[:4])
    test = add_all(store, frames[4:5], split="test", first_id=10)
    digest = store.record_version(0, train)
    assert store.record_version(0, train + train[:1]) == digest  # the same set again: no-op
    with pytest.raises(DatasetError, match="never changes"):
        store.record_version(0, train[:3])
    with pytest.raises(DatasetError, match="held-out"):
        store.record_version(1, train + test)
    with pytest.raises(DatasetError, match="not in the store"):
        store.record_version(1, train + ["0" * 64])
    with pytest.raises(DatasetError, match="no dataset version"):
        store.export(5, "unused", type_map=TYPE_MAP)
    assert store.lineage(train[0])["generations"] == [0]
    assert store.select("test") == test


def test_add_joins_the_callers_transaction(state, frames):
    """Recording a label and its frame is one change: a rollback removes both."""
    store = DatasetStore(state)
    with pytest.raises(RuntimeError):
        with state.transaction():
            store.add(frames[0], labeler="chgnet", task_key="label:r0:b0", structure_id=1)
            raise RuntimeError("driver killed mid-record")
    assert store.select() == []
    with state.transaction():
        DatasetStore(state)  # creating the tables inside a transaction keeps it open
        store.add(frames[0], labeler="chgnet", task_key="label:r0:b0", structure_id=1)
    assert len(store.select()) == 1


@pytest.mark.parametrize("dense_max", [None, 0])  # the numpy path, and ASE's neighbour list
def test_pair_distances_match_ase_neighbour_list(monkeypatch, dense_max):
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    import remote_al.structures as structures

    if dense_max is not None:
        monkeypatch.setattr(structures, "_DENSE_PAIRS_MAX", dense_max)
    rng = np.random.default_rng(3)
    fcc = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    skewed = fcc.copy()  # a sheared cell, atoms moved outside it
    skewed.set_cell(skewed.cell.array + [[0, 0, 0], [2.0, 0, 0], [1.0, 1.5, 0]], scale_atoms=True)
    skewed.positions += rng.normal(0, 0.3, skewed.positions.shape) + 10.0
    tiny = bulk("Ni", "hcp", a=2.5, c=4.0)  # 2 atoms: many images inside the cutoff
    for atoms in (fcc, skewed, tiny, bulk("Si", "diamond", 5.43) * (2, 2, 2)):
        ref = np.sort(neighbor_list("d", atoms, 4.0))
        got = np.sort(structures.pair_distances(atoms, 4.0))
        assert got.shape == ref.shape and np.allclose(got, ref)
        assert structures.min_distance(atoms) == pytest.approx(ref.min())


# ------------------------------------------------------------- system names
def test_systems_are_named_by_composition_and_cell(state, frames, tmp_path, rng):
    import re

    from remote_al.deepmd_data import group_frames, system_names

    store = DatasetStore(state)
    add_all(store, frames)
    store.record_version(0, store.select("train", max_round=0))
    out = store.export(0, tmp_path / "gen-000", type_map=TYPE_MAP)
    names = sorted(Path(p).name for p in out.systems)
    assert [re.sub(r"\d+\.\d", "L", n) for n in names] == ["Li3Ni4O8-LxLxL", "Li4Ni4O8-LxLxL"], names
    a, b, c = frames[0].cell.lengths()
    assert f"Li4Ni4O8-{a:.1f}x{b:.1f}x{c:.1f}" in names  # the first frame's lattice lengths
    manifest = json.loads((Path(out.path) / "manifest.json").read_text())
    assert sorted(manifest["systems"]) == names

    # two atom orders with one composition and cell: unique names, whatever the order asked in
    swapped = frames[0].copy()
    swapped.symbols[[4, 5]] = swapped.symbols[[5, 4]]  # Li <-> Ni: another atom order
    groups = group_frames([swapped, *frames])
    got = system_names(groups)
    assert len(set(got.values())) == len(groups) == 3
    assert got == system_names(dict(reversed(list(groups.items()))))
    assert sorted(v for v in got.values() if v.startswith("Li4")) == [names[1], names[1] + "-2"]


def test_a_campaign_exported_with_the_old_names_keeps_them(state, frames, tmp_path):
    """A state whose generation 0 was exported as ``Li3Ni4O8-cf324732``: exporting it again
    (the loop does on resume) writes the same names, where its training tasks look."""
    import time

    from remote_al.deepmd_data import group_frames, legacy_system_name

    store = DatasetStore(state)
    add_all(store, frames)
    store.record_version(0, store.select("train", max_round=0))
    old = [str(tmp_path / "gen-000" / "deepmd" / legacy_system_name(s)) for s in sorted(group_frames(frames))]
    assert sorted(Path(p).name[:9] for p in old) == ["Li3Ni4O8-", "Li4Ni4O8-"]
    with state.transaction():
        state.db.execute("INSERT INTO datasets VALUES(0,?,?,'[]',10,?)", (str(tmp_path / "gen-000"), json.dumps(old),
                                                                          time.time()))
    out = store.export(0, tmp_path / "gen-000", type_map=TYPE_MAP)
    assert list(out.systems) == old and all(Path(p, "type.raw").exists() for p in old)
    store.record_version(1, store.select("train", max_round=0))  # a generation of its own: the new names
    assert all("x" in Path(p).name for p in store.export(1, tmp_path / "gen-001", type_map=TYPE_MAP).systems)
