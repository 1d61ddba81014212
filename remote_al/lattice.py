"""Hexagonal lattice parameters of a (strained) supercell of the layered primitive cell."""

from __future__ import annotations

import functools
import math

import numpy as np

from remote_al.composition import CompositionError, check_supercell
from remote_al.structures import layered_limo2


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
    sc = check_supercell(supercell)
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
