"""Compositions of layered Li_x MO2 cathodes: metal specs, oxidation states, site counts.

A metal spec (a preset such as ``NMC811``, an element, a formula ``Ni0.9Al0.1`` or a table
of fractions) becomes ``{element: fraction}`` (:func:`parse_metals`); Li, O and the dopants
take fixed oxidation states and Ni (or the one redox-active metal) the balance
(:func:`oxidation_states`); :func:`site_counts` and :func:`suggest_supercell` give whole
numbers of atoms in a supercell of the 4-atom primitive cell. Arrangements of these atoms
ranked by Ewald energy are in ``remote_al.orderings``; the hexagonal lattice parameters of
a cell in ``remote_al.lattice``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Mapping, Sequence

import numpy as np

from remote_al.errors import RemoteALError
from remote_al.structures import layered_limo2


class CompositionError(RemoteALError, ValueError):
    """Raised when a composition, Li content, supercell or ordering cannot be built (fractions
    that do not sum to one, no charge balance, fractional atom counts); the message says how
    to fix it."""


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


def check_li_content(li_content: float) -> float:
    try:
        x = float(li_content)
    except (TypeError, ValueError):
        raise CompositionError(f"li_content must be a number in [0, 1], got {li_content!r}") from None
    if not (math.isfinite(x) and -_TOL <= x <= 1 + _TOL):
        raise CompositionError(f"li_content must lie in [0, 1] (Li_x MO2), got {li_content!r}")
    return min(max(x, 0.0), 1.0)


def check_supercell(supercell) -> tuple[int, int, int]:
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
    x = check_li_content(li_content)
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
    x = check_li_content(li_content)
    sc = check_supercell(supercell)
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
