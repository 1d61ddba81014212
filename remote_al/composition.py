"""Composition exploration for layered Li_x MO2 cathodes: delithiation and dopants.

Starting from the layered R-3m lattice of :func:`remote_al.structures.layered_limo2`, this
module places dopants (Co, Mn, Al, Mg, ...) on the transition-metal sites and Li vacancies on
the Li sites of a supercell, and ranks the arrangements by their point-charge Ewald energy
(pymatgen) with fixed oxidation states for Li, O and the dopants; Ni (or the one redox-active
metal) takes the balance.

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
import re
import threading
import warnings
from typing import Mapping, Sequence

import numpy as np

from remote_al.structures import composition_label, layered_limo2


class CompositionError(ValueError):
    """A composition, Li content or supercell that cannot be built; the message says how to fix it."""


NMC_PRESETS: dict[str, dict[str, float]] = {
    "NMC811": {"Ni": 0.8, "Co": 0.1, "Mn": 0.1},
    "NMC622": {"Ni": 0.6, "Co": 0.2, "Mn": 0.2},
    "NMC532": {"Ni": 0.5, "Co": 0.2, "Mn": 0.3},
    "NMC111": {"Ni": 1 / 3, "Co": 1 / 3, "Mn": 1 / 3},
    "NCA": {"Ni": 0.8, "Co": 0.15, "Al": 0.05},
}

# Fixed formal oxidation states. Ni is absent on purpose: it takes the balance.
FIXED_OXIDATION: dict[str, int] = {
    "Li": 1, "Na": 1, "K": 1,
    "O": -2, "F": -1,
    "Mg": 2, "Zn": 2, "Ca": 2, "Cu": 2,
    "Co": 3, "Al": 3, "Ga": 3, "B": 3, "Fe": 3, "Cr": 3, "Sc": 3, "Y": 3, "La": 3,
    "Mn": 4, "Ti": 4, "Zr": 4, "Sn": 4, "Ge": 4, "Si": 4, "Hf": 4,
    "Nb": 5, "Ta": 5, "Sb": 5, "V": 5,
    "Mo": 6, "W": 6,
}

# Plausible range of the balancing (average) oxidation state in a layered oxide.
BALANCE_RANGE: dict[str, tuple[float, float]] = {
    "Ni": (2.0, 4.0),
    "Co": (2.0, 4.0),
    "Mn": (2.0, 4.0),
    "Fe": (2.0, 4.0),
    "Cr": (3.0, 6.0),
    "V": (3.0, 5.0),
    "Ti": (3.0, 4.0),
    "Cu": (1.0, 3.0),
}
_DEFAULT_BALANCE_RANGE = (1.0, 6.0)

_TOL = 1e-6
_ANION_OR_LI = ("Li", "O", "F", "Na", "K")


def _is_transition_metal(el: str) -> bool:
    from ase.data import atomic_numbers

    z = atomic_numbers[el]
    return 21 <= z <= 30 or 39 <= z <= 48 or 57 <= z <= 80


def _metal_sort_key(el: str):
    from ase.data import atomic_numbers

    # Ni first, then heavier before lighter: NMC -> Ni, Co, Mn; NCA -> Ni, Co, Al.
    return (el != "Ni", -atomic_numbers[el], el)


# ------------------------------------------------------------------ compositions
def parse_metals(metals: str | Mapping[str, float] | None) -> dict[str, float]:
    """Metal-site composition as ``{element: fraction}`` summing to one.

    Accepts a preset name (``"NMC811"``, case-insensitive), a single element (``"Ni"``), a
    formula of the metal site (``"Ni0.9Al0.1"``), a mapping ``{"Ni": 0.9, "Al": 0.1}``, or
    ``None`` (LiNiO2). The result is ordered Ni first, then by decreasing atomic number, so
    equal compositions written differently build identical structures.
    """
    from ase.data import chemical_symbols

    if metals is None:
        return {"Ni": 1.0}
    if isinstance(metals, str):
        name = metals.strip()
        presets = {k.upper(): v for k, v in NMC_PRESETS.items()}
        if name.upper() in presets:
            raw: Mapping[str, float] = presets[name.upper()]
        elif name in chemical_symbols[1:]:
            raw = {name: 1.0}
        elif re.fullmatch(r"(?:[A-Z][a-z]?(?:\d+(?:\.\d*)?|\.\d+)?)+", name):
            raw = {}
            for el, amount in re.findall(r"([A-Z][a-z]?)(\d+(?:\.\d*)?|\.\d+)?", name):
                raw[el] = raw.get(el, 0.0) + (float(amount) if amount else 1.0)
        else:
            raise CompositionError(
                f"cannot read metals={metals!r}: give a preset ({', '.join(NMC_PRESETS)}), an element "
                "symbol such as 'Ni', a metal-site formula such as 'Ni0.9Al0.1', or a mapping "
                "{'Ni': 0.9, 'Al': 0.1}"
            )
    elif isinstance(metals, Mapping):
        raw = metals
    else:
        raise CompositionError(
            f"metals must be a preset name, an element symbol or a mapping of fractions, not {type(metals).__name__}"
        )
    if not raw:
        raise CompositionError("metals is empty: give at least one metal, e.g. {'Ni': 1.0}")

    out: dict[str, float] = {}
    for el, frac in raw.items():
        if not isinstance(el, str) or el not in chemical_symbols[1:]:
            raise CompositionError(
                f"unknown element symbol {el!r} in metals={dict(raw)!r}: use symbols like 'Ni', 'Co', 'Mn', 'Al'"
            )
        if el in ("Li", "O"):
            raise CompositionError(
                f"{el} cannot be placed on the transition-metal site here (metals={dict(raw)!r}); "
                "set the Li content with li_content and list only the metals"
            )
        try:
            f = float(frac)
        except (TypeError, ValueError):
            raise CompositionError(f"fraction of {el} must be a number, got {frac!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise CompositionError(
                f"fraction of {el} must be > 0, got {frac!r}; drop elements that are absent"
            )
        out[el] = out.get(el, 0.0) + f
    total = sum(out.values())
    if abs(total - 1.0) > _TOL:
        raise CompositionError(
            f"metal fractions {out} sum to {total:.6g}, not 1: the metal site must be fully occupied; "
            "rescale the fractions (e.g. {'Ni': 0.8, 'Co': 0.1, 'Mn': 0.1})"
        )
    return {el: out[el] for el in sorted(out, key=_metal_sort_key)}


def _balancing_element(present: Sequence[str]) -> str | None:
    if "Ni" in present:
        return "Ni"
    unfixed = [el for el in present if el not in FIXED_OXIDATION]
    if len(unfixed) == 1:
        return unfixed[0]
    if unfixed:
        return None  # ambiguous; the caller reports it
    # Everything has a fixed entry: let the single transition metal take the balance
    # (Li_x CoO2 needs Co beyond +3); with several there is no unique choice.
    tms = [el for el in present if el not in _ANION_OR_LI and _is_transition_metal(el)]
    return tms[0] if len(tms) == 1 else None


def oxidation_states(counts: Mapping[str, int]) -> dict[str, float]:
    """Oxidation state per element that makes ``counts`` charge-neutral.

    Li, O and the dopants take :data:`FIXED_OXIDATION`; the balancing element (Ni; without Ni the
    one metal lacking a fixed entry, or else the single transition metal) takes the average
    state, possibly fractional, that makes the total zero. Elements with a zero count are
    omitted.
    """
    present = {el: int(n) for el, n in counts.items() if int(n) != 0}
    if any(n < 0 for n in present.values()):
        raise CompositionError(f"counts must be non-negative, got {dict(counts)}")
    bal = _balancing_element(list(present))
    fixed_charge = 0.0
    states: dict[str, float] = {}
    for el, n in present.items():
        if el == bal:
            continue
        if el not in FIXED_OXIDATION:
            raise CompositionError(
                f"no fixed oxidation state for {el} in {present} and it is not the balancing element"
                + (f" ({bal})" if bal else "")
                + "; add it to remote_al.composition.FIXED_OXIDATION"
            )
        states[el] = float(FIXED_OXIDATION[el])
        fixed_charge += n * FIXED_OXIDATION[el]
    if bal is None:
        if abs(fixed_charge) < 1e-9:
            return {el: states[el] for el in present}
        raise CompositionError(
            f"cannot charge-balance {present} with fixed oxidation states (net charge {fixed_charge:+g}) and "
            "no unique balancing element: include Ni, or exactly one metal without an entry in FIXED_OXIDATION"
        )
    q = -fixed_charge / present[bal]
    lo, hi = BALANCE_RANGE.get(bal, _DEFAULT_BALANCE_RANGE)
    if not (lo - 1e-9 <= q <= hi + 1e-9):
        raise CompositionError(
            f"charge balance of {present} needs {bal} at {q:+.4g}, outside the plausible range "
            f"+{lo:g}..+{hi:g}: change the Li content or the dopant fractions"
        )
    states[bal] = float(q)
    return {el: states[el] for el in present}


def _check_li_content(li_content: float) -> float:
    try:
        x = float(li_content)
    except (TypeError, ValueError):
        raise CompositionError(f"li_content must be a number in [0, 1], got {li_content!r}") from None
    if not (math.isfinite(x) and -_TOL <= x <= 1 + _TOL):
        raise CompositionError(f"li_content must lie in [0, 1] (Li_x MO2), got {li_content!r}")
    return min(max(x, 0.0), 1.0)


def _check_supercell(supercell) -> tuple[int, int, int]:
    try:
        sc = tuple(int(n) for n in supercell)
    except (TypeError, ValueError):
        raise CompositionError(f"supercell must be three positive integers, got {supercell!r}") from None
    if len(sc) != 3 or min(sc) < 1 or any(float(a) != b for a, b in zip(supercell, sc)):
        raise CompositionError(f"supercell must be three positive integers, got {supercell!r}")
    return sc


def _fractional_counts(fracs: Mapping[str, float], li_content: float, n_fu: int) -> dict[str, float]:
    raw = {"Li": li_content * n_fu}
    raw.update({el: f * n_fu for el, f in fracs.items()})
    raw["O"] = 2.0 * n_fu
    return raw


def _is_integral(raw: Mapping[str, float]) -> bool:
    return all(abs(v - round(v)) <= _TOL for v in raw.values())


@functools.lru_cache(maxsize=256)
def _min_image_distance(supercell: tuple[int, int, int]) -> float:
    from ase.geometry import minkowski_reduce

    prim = np.asarray(layered_limo2(metal="Ni", supercell=(1, 1, 1)).cell)
    cell = np.diag(supercell) @ prim
    reduced, _ = minkowski_reduce(cell)
    return float(np.linalg.norm(reduced, axis=1).min())


def suggest_supercell(metals, li_content, max_formula_units: int = 48) -> tuple[int, int, int]:
    """Smallest diagonal supercell of the 4-atom primitive cell with whole numbers of atoms.

    Ranked by formula units, then by the largest distance between periodic images (most
    compact), then by the most even repetition (smallest largest factor), preferring the larger
    factors first (``(5, 2, 1)`` rather than ``(1, 2, 5)``).
    """
    fracs = parse_metals(metals)
    x = _check_li_content(li_content)
    for n_fu in range(1, int(max_formula_units) + 1):
        if not _is_integral(_fractional_counts(fracs, x, n_fu)):
            continue
        cands = [
            (a, b, n_fu // (a * b))
            for a in range(1, n_fu + 1)
            if n_fu % a == 0
            for b in range(1, n_fu // a + 1)
            if (n_fu // a) % b == 0
        ]
        cands.sort(key=lambda s: (-round(_min_image_distance(s), 3), max(s), tuple(-v for v in s)))
        return cands[0]
    raise CompositionError(
        f"no supercell with up to {max_formula_units} formula units gives whole numbers of atoms for "
        f"Li{x:g} with metals {fracs}: round the fractions to simpler values or raise max_formula_units"
    )


def site_counts(metals, li_content, supercell) -> dict[str, int]:
    """Whole numbers of Li, each metal and O in a Li_x MO2 supercell of the primitive cell."""
    fracs = parse_metals(metals)
    x = _check_li_content(li_content)
    sc = _check_supercell(supercell)
    n_fu = int(np.prod(sc))
    raw = _fractional_counts(fracs, x, n_fu)
    bad = {el: v for el, v in raw.items() if abs(v - round(v)) > _TOL}
    if bad:
        what = ", ".join(f"{el} {v:.4g}" for el, v in bad.items())
        try:
            hint = suggest_supercell(fracs, x)
            fix = f"use supercell={hint} ({int(np.prod(hint))} formula units), the smallest with whole atoms"
        except CompositionError as exc:
            fix = str(exc)
        raise CompositionError(
            f"Li{x:g} with metals {fracs} in supercell {sc} ({n_fu} formula units) needs fractional "
            f"atom counts ({what}); {fix}"
        )
    return {el: int(round(v)) for el, v in raw.items()}


# ------------------------------------------------------------------ enumeration
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
    x = _check_li_content(li_content)
    sc = _check_supercell(supercell)
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


# ------------------------------------------------------------------ lattice
@functools.lru_cache(maxsize=64)
def _hexagonal_map(supercell: tuple[int, int, int]) -> np.ndarray:
    ref = np.asarray(layered_limo2(metal="Ni", supercell=supercell, primitive=True).cell)
    conv = np.asarray(layered_limo2(metal="Ni", supercell=(1, 1, 1), primitive=False).cell)
    return conv @ np.linalg.inv(ref)


def hexagonal_lattice(atoms, supercell=(2, 2, 1)) -> tuple[float, float]:
    """Hexagonal-setting ``(a, c)`` of a (possibly strained) supercell of the primitive cell.

    Maps ``atoms.cell`` linearly onto the conventional hexagonal cell of the same lattice;
    ``a`` is the mean of the two in-plane lengths and ``c`` the third length.
    """
    sc = _check_supercell(supercell)
    cell = np.asarray(atoms.cell, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        raise CompositionError("hexagonal_lattice needs a 3D periodic cell; this one has no volume")
    hexcell = _hexagonal_map(sc) @ cell
    lengths = np.linalg.norm(hexcell, axis=1)

    def angle(i, j):
        return math.degrees(math.acos(np.clip(hexcell[i] @ hexcell[j] / (lengths[i] * lengths[j]), -1, 1)))

    alpha, beta, gamma = angle(1, 2), angle(0, 2), angle(0, 1)
    # Generous bounds: strained or rattled cells pass, a wrong ``supercell`` does not.
    if (
        abs(lengths[0] / lengths[1] - 1) > 0.1
        or abs(gamma - 120) > 15
        or abs(alpha - 90) > 15
        or abs(beta - 90) > 15
    ):
        raise CompositionError(
            f"cell does not look like a {sc} supercell of the primitive layered cell (mapped hexagonal "
            f"lengths {np.round(lengths, 3).tolist()} A, angles {[round(alpha, 1), round(beta, 1), round(gamma, 1)]} "
            "deg); pass the supercell the structure was built with"
        )
    return float(lengths[:2].mean()), float(lengths[2])
