"""Li/dopant orderings of a layered Li_x MO2 supercell, ranked by point-charge Ewald energy.

Starting from the layered R-3m lattice of :func:`remote_al.structures.layered_limo2`, this
module places dopants (Co, Mn, Al, Mg, ...) on the transition-metal sites and Li vacancies on
the Li sites of a supercell, and ranks the arrangements by their point-charge Ewald energy
(pymatgen) with the oxidation states of :func:`remote_al.composition.oxidation_states`.

How the ranking stays cheap: the Ewald energy of point charges is a quadratic form in the site
charges, ``E = q^T A q``, with one site-pair matrix ``A`` of the *full* parent supercell (unit
charges on every site, vacancies carry charge 0). ``A`` is computed once per cell; each
arrangement then costs one matrix-vector product. For a neutral arrangement this equals a
direct :class:`pymatgen.analysis.ewald.EwaldSummation` of the arranged structure (the
charged-cell term vanishes; only the Ewald convergence differs).

Symmetry-equivalent copies are skipped by walking up from the lowest energy and keeping an
arrangement only if pymatgen's ``StructureMatcher`` finds it different from every one already
kept. Before calling the matcher, a cheap exact test drops arrangements that a space-group
operation of the parent supercell maps onto one already seen.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import warnings
from typing import Sequence

import numpy as np

from remote_al.composition import (
    CompositionError,
    check_li_content,
    check_supercell,
    oxidation_states,
    parse_metals,
    site_counts,
)
from remote_al.structures import composition_label, layered_limo2


def _multiset_arrangements(n_sites: int, counts: Sequence[int]) -> np.ndarray:
    """All labelings of ``n_sites`` with ``counts[k]`` sites of label k (label 0 fills the rest)."""
    rows: list[np.ndarray] = []

    def rec(free: tuple[int, ...], k: int, lab: np.ndarray):
        if k == len(counts):
            rows.append(lab.copy())
            return
        for chosen in itertools.combinations(free, counts[k]):
            lab[list(chosen)] = k
            chosen_set = set(chosen)
            rec(tuple(i for i in free if i not in chosen_set), k + 1, lab)
            lab[list(chosen)] = 0

    rec(tuple(range(n_sites)), 1, np.zeros(n_sites, dtype=np.int8))
    return np.array(rows, dtype=np.int8).reshape(len(rows), n_sites)


def _n_arrangements(n_sites: int, counts: Sequence[int]) -> int:
    out, free = 1, n_sites
    for c in counts[1:]:
        out *= math.comb(free, c)
        free -= c
    return out


class _Enumeration:
    """Arrangements of one (metals, Li content, supercell), ranked by Ewald energy."""

    def __init__(self, metals: tuple[tuple[str, float], ...], li_content: float, supercell, seed, max_enumerate):
        from pymatgen.analysis.ewald import EwaldSummation
        from pymatgen.core import Lattice, Structure

        fracs = dict(metals)
        self.metals = list(fracs)
        self.li_content = li_content
        self.supercell = supercell
        counts = site_counts(fracs, li_content, supercell)
        self.counts = counts
        self.ox = oxidation_states(counts)

        parent = layered_limo2(metal="Ni", supercell=supercell)
        self.cell = np.asarray(parent.cell, dtype=float).copy()
        self.frac = parent.get_scaled_positions(wrap=True)
        self.frac[np.abs(self.frac - 1.0) < 1e-10] = 0.0
        sym = parent.get_chemical_symbols()
        self.li_sites = np.array([i for i, s in enumerate(sym) if s == "Li"])
        self.tm_sites = np.array([i for i, s in enumerate(sym) if s == "Ni"])
        self.o_sites = np.array([i for i, s in enumerate(sym) if s == "O"])
        self.var_sites = np.concatenate([self.li_sites, self.tm_sites])
        n_li, n_tm = len(self.li_sites), len(self.tm_sites)

        # Labels per variable site: Li sites 0 = Li, 1 = vacancy; TM sites k = self.metals[k].
        # Label 0 is the majority (Ni if present) so enumeration places the minority species.
        n_vac = n_li - counts["Li"]
        tm_counts = [counts[m] for m in self.metals]
        li_counts = [counts["Li"], n_vac]
        n_tm_arr, n_li_arr = _n_arrangements(n_tm, tm_counts), _n_arrangements(n_li, li_counts)
        self.n_total = n_tm_arr * n_li_arr
        self.sampled = self.n_total > max_enumerate
        if not self.sampled:
            tm = _multiset_arrangements(n_tm, tm_counts)
            li = _multiset_arrangements(n_li, li_counts)
            labels = np.concatenate(
                [np.repeat(li, len(tm), axis=0), np.tile(tm, (len(li), 1))], axis=1
            )
        else:
            labels = self._sample(n_li, n_vac, tm_counts, max_enumerate, seed)
        self.labels = labels.astype(np.int8)

        # One site-pair Ewald matrix of the full parent with unit charges: E(q) = q^T A q.
        lattice = Lattice(self.cell)
        unit = Structure(lattice, sym, self.frac, site_properties={"charge": [1.0] * len(sym)})
        self.A = np.asarray(EwaldSummation(unit).total_energy_matrix)
        q = self.charges(self.labels)
        energies = np.einsum("kn,kn->k", q @ self.A, q)
        self.n_atoms = len(sym) - n_vac
        self.energies = energies  # eV per cell
        order_key = np.round(energies, 8)
        self.order = np.argsort(order_key, kind="stable")

        self._perms = None  # symmetry permutations of the variable sites, computed on demand
        self._seen: set[bytes] = set()
        self._kept: list[tuple[int, object]] = []  # (arrangement index, pymatgen Structure)
        self._walk = 0
        self._lock = threading.Lock()
        self._matcher = None
        self._lattice = lattice

    # -- construction helpers
    @staticmethod
    def _sample(n_li, n_vac, tm_counts, k, seed) -> np.ndarray:
        rng = np.random.default_rng(seed)
        li_base = np.array([0] * (n_li - n_vac) + [1] * n_vac, dtype=np.int8)
        tm_base = np.concatenate([np.full(c, i, dtype=np.int8) for i, c in enumerate(tm_counts)])
        seen: dict[bytes, None] = {}
        rows: list[np.ndarray] = []
        attempts = 0
        while len(rows) < k and attempts < 50 * k:
            batch = max(k - len(rows), 64)
            li = rng.permuted(np.tile(li_base, (batch, 1)), axis=1)
            tm = rng.permuted(np.tile(tm_base, (batch, 1)), axis=1)
            for row in np.concatenate([li, tm], axis=1):
                key = row.tobytes()
                if key not in seen:
                    seen[key] = None
                    rows.append(row)
                    if len(rows) == k:
                        break
            attempts += batch
        return np.array(rows, dtype=np.int8)

    def charges(self, labels: np.ndarray) -> np.ndarray:
        labels = np.atleast_2d(labels)
        n_li = len(self.li_sites)
        q = np.empty((len(labels), len(self.frac)))
        q[:, self.o_sites] = self.ox["O"]
        q[:, self.li_sites] = np.where(labels[:, :n_li] == 0, self.ox.get("Li", 0.0), 0.0)
        tm_q = np.array([self.ox[m] for m in self.metals])
        q[:, self.tm_sites] = tm_q[labels[:, n_li:]]
        return q

    def symbols_and_positions(self, k: int):
        """Species and fractional coordinates of arrangement ``k`` (vacancies removed)."""
        lab = self.labels[k]
        n_li = len(self.li_sites)
        species: dict[int, str] = {int(i): "O" for i in self.o_sites}
        for j, i in enumerate(self.li_sites):
            if lab[j] == 0:
                species[int(i)] = "Li"
        for j, i in enumerate(self.tm_sites):
            species[int(i)] = self.metals[lab[n_li + j]]
        rank = {el: r for r, el in enumerate(["Li", *self.metals, "O"])}
        idx = sorted(species, key=lambda i: (rank[species[i]], i))
        return [species[i] for i in idx], self.frac[idx]

    def structure(self, k: int, oxidation: bool = False):
        from pymatgen.core import Structure

        sym, frac = self.symbols_and_positions(k)
        s = Structure(self._lattice, sym, frac)
        if oxidation:
            s.add_oxidation_state_by_element(self.ox)
        return s

    def atoms(self, k: int, ordering: int):
        from ase import Atoms

        sym, frac = self.symbols_and_positions(k)
        atoms = Atoms(sym, scaled_positions=frac, cell=self.cell, pbc=True)
        atoms.wrap()
        atoms.info["ewald_eV"] = float(self.energies[k] / self.n_atoms)
        atoms.info["ordering"] = int(ordering)
        atoms.info["composition"] = composition_label(atoms, metals=tuple(self.metals))
        atoms.info["oxidation_states"] = {el: float(v) for el, v in self.ox.items()}
        return atoms

    # -- symmetry
    def _symmetry_permutations(self) -> np.ndarray:
        if self._perms is None:
            from pymatgen.core import Structure
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            sym = ["O"] * len(self.frac)
            for i in self.li_sites:
                sym[i] = "Li"
            for i in self.tm_sites:
                sym[i] = "Ni"
            parent = Structure(self._lattice, sym, self.frac)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
                ops = SpacegroupAnalyzer(parent, symprec=1e-3).get_symmetry_operations(cartesian=False)
            var = self.var_sites
            vf = self.frac[var]
            pos_of = {int(s): j for j, s in enumerate(var)}
            perms = []
            for op in ops:
                img = op.operate_multi(vf)
                d = img[:, None, :] - vf[None, :, :]
                d -= np.round(d)
                hit = np.linalg.norm(d @ self.cell, axis=2) < 1e-3
                if not np.all(hit.sum(axis=1) == 1):
                    continue  # an operation that does not map sites onto sites: ignore it
                target = hit.argmax(axis=1)
                perm = np.array([pos_of[int(var[t])] for t in target])
                perms.append(perm)
            self._perms = np.array(perms) if perms else np.arange(len(var))[None, :]
        return self._perms

    def _canonical(self, k: int) -> bytes:
        images = self.labels[k][self._symmetry_permutations()]
        return min(row.tobytes() for row in images)

    # -- ranking
    def distinct(self, n: int) -> list[int]:
        """Indices of the ``n`` lowest-energy mutually inequivalent arrangements (fewer if fewer exist)."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        with self._lock:
            if self._matcher is None:
                self._matcher = StructureMatcher()
            while len(self._kept) < n and self._walk < len(self.order):
                k = int(self.order[self._walk])
                self._walk += 1
                key = self._canonical(k)
                if key in self._seen:
                    continue  # a symmetry copy of an arrangement already seen
                self._seen.add(key)
                s = self.structure(k)
                if any(self._matcher.fit(s, other) for _, other in self._kept):
                    continue
                self._kept.append((k, s))
            return [k for k, _ in self._kept[:n]]


@functools.lru_cache(maxsize=32)
def _enumeration(metals: tuple[tuple[str, float], ...], li_content: float, supercell, seed, max_enumerate):
    return _Enumeration(metals, li_content, supercell, seed, max_enumerate)


def _get_enumeration(metals, li_content, supercell, seed, max_enumerate) -> _Enumeration:
    fracs = parse_metals(metals)
    x = check_li_content(li_content)
    sc = check_supercell(supercell)
    if int(max_enumerate) < 1:
        raise CompositionError(f"max_enumerate must be >= 1, got {max_enumerate!r}")
    key = tuple((el, round(f, 12)) for el, f in fracs.items())
    return _enumeration(key, round(x, 12), sc, int(seed), int(max_enumerate))


def distinct_orderings(
    metals="Ni",
    li_content: float = 1.0,
    supercell=(2, 2, 1),
    n: int = 1,
    seed: int = 0,
    max_enumerate: int = 4000,
) -> list:
    """Up to ``n`` lowest-Ewald-energy, mutually inequivalent arrangements as ASE Atoms.

    Dopants go on the transition-metal sites and Li vacancies on the Li sites of
    ``layered_limo2(metal="Ni", supercell=supercell)``. All arrangements are ranked when there
    are at most ``max_enumerate``; otherwise ``max_enumerate`` distinct ones sampled with
    ``np.random.default_rng(seed)``. Each Atoms carries ``info`` keys ``ewald_eV`` (Ewald
    energy per atom), ``ordering`` (rank among the distinct ones, from 0), ``composition`` and
    ``oxidation_states``. Atoms are ordered Li, metals, O. Fewer than ``n`` are returned when
    fewer distinct arrangements exist.
    """
    if int(n) < 1:
        raise CompositionError(f"n must be >= 1, got {n!r}")
    enum = _get_enumeration(metals, li_content, supercell, seed, max_enumerate)
    return [enum.atoms(k, i) for i, k in enumerate(enum.distinct(int(n)))]


def layered_structure(
    metals="Ni",
    li_content: float = 1.0,
    supercell=(2, 2, 1),
    ordering: int = 0,
    seed: int = 0,
    max_enumerate: int = 4000,
):
    """The ``ordering``-th lowest-energy distinct arrangement (0 = lowest Ewald energy)."""
    ordering = int(ordering)
    if ordering < 0:
        raise CompositionError(f"ordering must be >= 0, got {ordering}")
    got = distinct_orderings(metals, li_content, supercell, n=ordering + 1, seed=seed, max_enumerate=max_enumerate)
    if len(got) <= ordering:
        enum = _get_enumeration(metals, li_content, supercell, seed, max_enumerate)
        scope = f"among {len(enum.labels)} sampled arrangements" if enum.sampled else "in total"
        raise CompositionError(
            f"ordering={ordering} requested but only {len(got)} distinct ordering(s) exist {scope} for "
            f"{got[0].info['composition'] if got else metals} in supercell {tuple(supercell)}: use ordering "
            f"0..{len(got) - 1} or a larger supercell"
        )
    return got[ordering]
