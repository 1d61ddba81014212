"""Composition exploration: delithiated and doped layered cells ranked by Ewald energy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from remote_al import lattice, orderings
from remote_al.composition import CompositionError, oxidation_states, parse_metals, site_counts, suggest_supercell
from remote_al.lattice import hexagonal_lattice
from remote_al.orderings import distinct_orderings, layered_structure
from remote_al.structures import check_structure, layered_limo2

AL_DOPED = {"Ni": 0.75, "Al": 0.25}


def _counts(atoms) -> dict[str, int]:
    sym = atoms.get_chemical_symbols()
    return {el: sym.count(el) for el in set(sym)}


def _total_charge(atoms) -> float:
    ox = atoms.info["oxidation_states"]
    return float(sum(ox[s] for s in atoms.get_chemical_symbols()))


def _pmg(atoms):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


# ------------------------------------------------------------------ compositions
def test_parse_metals_presets_and_validation():
    assert parse_metals(None) == {"Ni": 1.0}
    assert parse_metals("Ni") == {"Ni": 1.0}
    assert parse_metals("nmc811") == {"Ni": 0.8, "Co": 0.1, "Mn": 0.1}
    assert list(parse_metals({"Al": 0.1, "Ni": 0.9})) == ["Ni", "Al"]  # canonical order
    assert parse_metals("Ni0.9Al0.1") == {"Ni": 0.9, "Al": 0.1}
    assert sum(parse_metals("NMC111").values()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(CompositionError, match="Xx"):
        parse_metals({"Ni": 0.5, "Xx": 0.5})
    with pytest.raises(CompositionError, match="Xx"):
        parse_metals("Xx")
    with pytest.raises(CompositionError, match="sum to 0.9"):
        parse_metals({"Ni": 0.8, "Co": 0.1})
    with pytest.raises(CompositionError, match="> 0"):
        parse_metals({"Ni": 1.1, "Co": -0.1})


def test_oxidation_states_balance():
    assert oxidation_states({"Li": 2, "Ni": 4, "O": 8})["Ni"] == pytest.approx(3.5)
    ox = oxidation_states({"Li": 10, "Ni": 8, "Co": 1, "Mn": 1, "O": 20})
    assert ox["Ni"] == pytest.approx(2.875) and ox["Co"] == 3 and ox["Mn"] == 4
    # No Ni: the single transition metal balances (Li0.5CoO2 -> Co+3.5).
    assert oxidation_states({"Li": 2, "Co": 4, "O": 8})["Co"] == pytest.approx(3.5)
    with pytest.raises(CompositionError, match="plausible range"):
        oxidation_states({"Li": 4, "Ni": 4, "O": 5})  # Ni+1.5
    with pytest.raises(CompositionError, match="plausible range"):
        oxidation_states({"Li": 0, "Ni": 8, "Co": 1, "Mn": 1, "O": 20})  # Ni+4.125


def test_site_counts_and_suggested_supercell():
    assert site_counts("Ni", 0.75, (2, 2, 1)) == {"Li": 3, "Ni": 4, "O": 8}
    sc = suggest_supercell("NMC811", 1.0)
    assert int(np.prod(sc)) == 10 and sorted(sc) == [1, 2, 5]
    assert int(np.prod(suggest_supercell("NMC811", 0.5))) == 10
    assert suggest_supercell("Ni", 0.5) == (2, 1, 1)
    assert suggest_supercell("Ni", 0.25) == (2, 2, 1)
    with pytest.raises(CompositionError) as err:
        site_counts("NMC811", 1.0, (2, 2, 1))
    assert str(sc) in str(err.value) and "Co" in str(err.value)
    with pytest.raises(CompositionError, match=r"supercell=\(5, 2, 1\)"):
        distinct_orderings("NMC811", 1.0, (2, 2, 1))


@pytest.mark.parametrize(
    "metals,x,supercell",
    [("Ni", 1.0, (2, 2, 1)), ("Ni", 0.75, (2, 2, 1)), ("Ni", 0.5, (2, 2, 1)), ("Ni", 0.25, (2, 2, 1)),
     ("NMC811", 1.0, None), ("NMC811", 0.5, None)],
)
def test_generated_composition_and_neutrality(metals, x, supercell):
    supercell = supercell or suggest_supercell(metals, x)
    n_fu = int(np.prod(supercell))
    atoms = layered_structure(metals, x, supercell)
    fracs = parse_metals(metals)
    expected = {"Li": round(x * n_fu), "O": 2 * n_fu, **{el: round(f * n_fu) for el, f in fracs.items()}}
    assert _counts(atoms) == {el: n for el, n in expected.items() if n}
    assert abs(_total_charge(atoms)) < 1e-9
    assert atoms.info["ordering"] == 0 and np.isfinite(atoms.info["ewald_eV"])
    frac = atoms.get_scaled_positions(wrap=False)
    assert np.all((frac >= -1e-9) & (frac < 1 + 1e-9))
    assert check_structure(atoms, min_dist_A=1.2).ok


# ------------------------------------------------------------------ orderings
def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


@pytest.mark.parametrize("metals,x,n_arrangements", [("Ni", 0.5, 6), (AL_DOPED, 0.5, 24)])
def test_distinct_orderings_are_inequivalent_sorted_and_complete(metals, x, n_arrangements):
    got = distinct_orderings(metals, x, (2, 2, 1), n=3)
    energies = [a.info["ewald_eV"] for a in got]
    assert energies == sorted(energies)
    assert [a.info["ordering"] for a in got] == list(range(len(got)))
    sm = _matcher()
    for a, b in itertools.combinations(got, 2):
        assert not sm.fit(_pmg(a), _pmg(b))

    # Independent count of symmetry-distinct arrangements: group all of them with the matcher.
    enum = orderings._get_enumeration(metals, x, (2, 2, 1), 0, 4000)
    assert len(enum.labels) == n_arrangements and not enum.sampled
    groups = sm.group_structures([enum.structure(k) for k in range(len(enum.labels))])
    everything = distinct_orderings(metals, x, (2, 2, 1), n=100)
    assert len(everything) == len(groups)  # fewer than n exist -> all of them, no error
    assert len(got) == min(3, len(groups))
    # The lowest-energy arrangement overall is ordering 0.
    assert got[0].info["ewald_eV"] == pytest.approx(enum.energies.min() / len(got[0]), abs=1e-12)


def test_quadratic_form_matches_direct_ewald():
    from pymatgen.analysis.ewald import EwaldSummation

    enum = orderings._get_enumeration(AL_DOPED, 0.5, (2, 2, 1), 0, 4000)
    ks = range(len(enum.labels))
    quad = np.array([enum.energies[k] for k in ks])
    direct = np.array([EwaldSummation(enum.structure(k, oxidation=True)).total_energy for k in ks])
    # Same up to a constant (here the constant is ~0: neutral cells, same charges).
    shift = direct - quad
    assert np.ptp(shift) < 1e-5
    assert np.ptp(quad) > 0.1  # the test is not vacuous: arrangements really differ
    for i, j in itertools.combinations(range(len(quad)), 2):
        if abs(direct[i] - direct[j]) > 1e-4:
            assert (quad[i] < quad[j]) == (direct[i] < direct[j])


def test_layered_structure_ordering_and_errors():
    first, second = distinct_orderings("Ni", 0.5, (2, 2, 1), n=2)
    again = layered_structure("Ni", 0.5, (2, 2, 1), ordering=1)
    assert again.get_chemical_symbols() == second.get_chemical_symbols()
    assert np.allclose(again.positions, second.positions)
    again.positions[0] += 1.0  # callers may mutate what they get; the cache must not change
    assert np.allclose(layered_structure("Ni", 0.5, (2, 2, 1), ordering=1).positions, second.positions)
    with pytest.raises(CompositionError, match="only 2 distinct"):
        layered_structure("Ni", 0.5, (2, 2, 1), ordering=2)


def test_reproducible_with_sampling():
    sc = suggest_supercell("NMC811", 0.5)
    args = dict(metals="NMC811", li_content=0.5, supercell=sc, n=2, seed=3, max_enumerate=300)
    a = distinct_orderings(**args)
    assert orderings._get_enumeration("NMC811", 0.5, sc, 3, 300).sampled
    orderings._enumeration.cache_clear()
    b = distinct_orderings(**args)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        assert np.array_equal(x.positions, y.positions) and np.array_equal(x.cell[:], y.cell[:])
        assert x.info == y.info
    sm = _matcher()
    assert not sm.fit(_pmg(a[0]), _pmg(a[1]))
    assert a[0].info["ewald_eV"] <= a[1].info["ewald_eV"]


def test_check_structure_rejects_overlap():
    atoms = layered_structure(AL_DOPED, 0.5, (2, 2, 1))
    assert check_structure(atoms, min_dist_A=1.2).ok
    bad = atoms.copy()
    i, j = 0, len(bad) - 1
    bad.positions[i] = bad.positions[j] + np.array([0.5, 0.0, 0.0])
    res = check_structure(bad, min_dist_A=1.2)
    assert not res.ok and "0.50 A" in res.reason


# ------------------------------------------------------------------ lattice
@pytest.mark.parametrize("supercell", [(2, 2, 1), (5, 2, 1), (1, 1, 1), (2, 2, 2)])
def test_hexagonal_lattice_reference_and_scaling(supercell):
    ref = layered_limo2(supercell=supercell)
    a, c = hexagonal_lattice(ref, supercell)
    assert a == pytest.approx(2.878, abs=1e-6) and c == pytest.approx(14.19, abs=1e-6)
    s = 1.037
    scaled = ref.copy()
    scaled.set_cell(ref.cell[:] * s, scale_atoms=True)
    a2, c2 = hexagonal_lattice(scaled, supercell)
    assert a2 == pytest.approx(s * 2.878, abs=1e-6) and c2 == pytest.approx(s * 14.19, abs=1e-6)
    # c-axis strain changes c only.
    strained = ref.copy()
    hexmap = lattice._hexagonal_map(tuple(supercell))
    h = hexmap @ ref.cell[:]
    h[2] *= 1.05
    strained.set_cell(np.linalg.solve(hexmap, h), scale_atoms=True)
    a3, c3 = hexagonal_lattice(strained, supercell)
    assert a3 == pytest.approx(2.878, abs=1e-6) and c3 == pytest.approx(1.05 * 14.19, abs=1e-6)


def test_hexagonal_lattice_of_generated_structure():
    atoms = layered_structure("Ni", 0.5, (2, 2, 1))
    assert hexagonal_lattice(atoms, (2, 2, 1)) == pytest.approx((2.878, 14.19), abs=1e-6)
    with pytest.raises(CompositionError, match="supercell"):
        hexagonal_lattice(layered_limo2(supercell=(2, 2, 1)), (1, 1, 1))
