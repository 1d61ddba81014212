"""Structure generation, filters and extxyz text IO.

Pure construction in ASE (no downloaded structures): layered R-3m LiMO2 cells built
from their Wyckoff positions, supercells, Li removal, rattling and straining. Filters
(minimum interatomic distance, cell sanity) run before a structure costs a labeler call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# Experimental-ish lattice of LiNiO2 (hexagonal setting of R-3m), Angstrom.
LINIO2_A = 2.878
LINIO2_C = 14.19
LINIO2_Z_O = 0.2578


def layered_limo2(
    metal: str = "Ni",
    a: float = LINIO2_A,
    c: float = LINIO2_C,
    z_oxygen: float = LINIO2_Z_O,
    supercell: Sequence[int] = (2, 2, 1),
    primitive: bool = True,
):
    """Layered LiMO2 (alpha-NaFeO2 type, R-3m): Li 3a, M 3b, O 6c.

    ``primitive=True`` starts from the 4-atom rhombohedral cell, so a (2, 2, 1) supercell
    holds 4 formula units (16 atoms): small enough for fast MD and labels, large enough
    for Li contents in steps of 1/4.
    """
    from ase.spacegroup import crystal

    atoms = crystal(
        ["Li", metal, "O"],
        basis=[(0, 0, 0), (0, 0, 0.5), (0, 0, z_oxygen)],
        spacegroup=166,
        cellpar=[a, a, c, 90, 90, 120],
        primitive_cell=primitive,
    )
    atoms = atoms.repeat(tuple(int(n) for n in supercell))
    atoms.wrap()
    return atoms


def remove_lithium(atoms, fraction_removed: float, seed: int = 0):
    """Remove ``round(fraction_removed * n_Li)`` Li atoms chosen at random (seeded)."""
    li = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Li"]
    n_remove = int(round(fraction_removed * len(li)))
    if abs(n_remove - fraction_removed * len(li)) > 1e-6:
        raise ValueError(
            f"removing {fraction_removed:g} of {len(li)} Li sites is not an integer number of atoms; "
            "use a larger supercell or another Li content"
        )
    rng = np.random.default_rng(seed)
    drop = set(rng.choice(li, size=n_remove, replace=False).tolist()) if n_remove else set()
    out = atoms[[i for i in range(len(atoms)) if i not in drop]]
    return out


def cathode_cell(li_content: float = 1.0, metal: str = "Ni", supercell=(2, 2, 1), seed: int = 0):
    """Li_x MO2 cell: layered LiMO2 supercell with ``1 - x`` of the Li removed."""
    atoms = layered_limo2(metal=metal, supercell=supercell)
    if li_content < 1.0:
        atoms = remove_lithium(atoms, 1.0 - li_content, seed=seed)
    return atoms


def perturb(atoms, rattle_A: float, strain: float, rng: np.random.Generator):
    """Copy of ``atoms`` with Gaussian displacements and a random symmetric strain."""
    out = atoms.copy()
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out.set_cell(np.dot(out.get_cell(), np.eye(3) + eps), scale_atoms=True)
    out.positions += rng.normal(0.0, rattle_A, size=out.positions.shape)
    out.wrap()
    return out


def initial_perturbations(base, n: int, rattle_A: float, strain: float, rng: np.random.Generator):
    """Round 0's ``n`` copies of ``base``: rattle amplitudes spread from a quarter to 1.5x
    ``rattle_A`` (near and far from equilibrium), each with a random strain up to ``strain``."""
    return [perturb(base, rattle_A * (0.25 + 1.25 * i / max(1, n - 1)), strain, rng) for i in range(n)]


# --------------------------------------------------------------------- filters
@dataclass(frozen=True)
class FilterResult:
    ok: bool
    reason: str = ""


# above this many (pair x image) distances, ASE's neighbour list (linear in atoms) is used
_DENSE_PAIRS_MAX = 2_000_000


def pair_distances(atoms, cutoff: float = 4.0) -> np.ndarray:
    """Every distance below ``cutoff`` from an atom to another atom or to a periodic image
    (both orders, as ``ase.neighborlist.neighbor_list("d", atoms, cutoff)`` returns them).

    Small cells, the common case here, take all pairs against all images that can lie
    within the cutoff at once in numpy: about a hundred times faster than ASE's general
    neighbour list for 16-100 atoms. Larger cells use ASE's."""
    n = len(atoms)
    cell = np.asarray(atoms.get_cell(), dtype=float)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    volume = abs(np.linalg.det(cell)) if pbc.all() else 0.0
    if n == 0:
        return np.zeros(0)
    if volume > 1e-9:
        heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        reach = np.ceil(cutoff / heights).astype(int)
        n_images = int(np.prod(2 * reach + 1))
        if n * n * n_images <= _DENSE_PAIRS_MAX:
            frac = np.linalg.solve(cell.T, np.asarray(atoms.get_positions(), dtype=float).T).T
            pos = (frac % 1.0) @ cell  # wrapped: images within `reach` cells suffice
            shifts = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
            vec = pos[None, :, None, :] - pos[:, None, None, :] + (shifts @ cell)[None, None, :, :]
            d = np.sqrt(np.einsum("ijsk,ijsk->ijs", vec, vec))
            zero = int(np.flatnonzero((shifts == 0).all(axis=1))[0])
            d[np.arange(n), np.arange(n), zero] = np.inf  # an atom and itself
            return d[d < cutoff]
    from ase.neighborlist import neighbor_list

    return neighbor_list("d", atoms, cutoff)


def min_distance(atoms, distances: np.ndarray | None = None) -> float:
    """Smallest interatomic distance under periodic boundary conditions (Angstrom);
    ``distances``: ``pair_distances(atoms, 4.0)`` when the caller has it already."""
    if len(atoms) < 2:
        return float("inf")
    d = pair_distances(atoms, 4.0) if distances is None else distances
    if len(d) == 0:
        return float("inf")
    return float(d.min())


def check_structure(
    atoms,
    min_dist_A: float = 1.2,
    cell_length_A: tuple[float, float] = (2.0, 60.0),
    cell_angle_deg: tuple[float, float] = (20.0, 160.0),
    distances: np.ndarray | None = None,
) -> FilterResult:
    """Pre-labeling sanity: finite positions, cell bounds, no overlapping atoms
    (``distances``: ``pair_distances(atoms, 4.0)`` when the caller has it already)."""
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        return FilterResult(False, "positions contain NaN or inf")
    par = atoms.cell.cellpar()
    lengths, angles = par[:3], par[3:]
    if lengths.min() < cell_length_A[0] or lengths.max() > cell_length_A[1]:
        return FilterResult(
            False, f"cell lengths {np.round(lengths, 2).tolist()} A outside {list(cell_length_A)}"
        )
    if angles.min() < cell_angle_deg[0] or angles.max() > cell_angle_deg[1]:
        return FilterResult(False, f"cell angles {np.round(angles, 1).tolist()} deg outside {list(cell_angle_deg)}")
    return distance_check(min_distance(atoms, distances), min_dist_A)


def distance_check(dmin: float, min_dist_A: float) -> FilterResult:
    """The overlap filter of :func:`check_structure` on a smallest distance known already."""
    if dmin < min_dist_A:
        return FilterResult(False, f"atoms {dmin:.2f} A apart, below the minimum {min_dist_A} A")
    return FilterResult(True)


# ---------------------------------------------------------------------- extxyz
def to_extxyz(frames) -> str:
    """Frames (one Atoms or a list) as extxyz text, with labels if they carry them."""
    from ase.io import write

    if not isinstance(frames, (list, tuple)):
        frames = [frames]
    buf = io.StringIO()
    write(buf, list(frames), format="extxyz")
    return buf.getvalue()


def from_extxyz(text: str) -> list:
    """Parse extxyz text into a list of Atoms (labels kept on a SinglePointCalculator)."""
    from ase.io import read

    if not text.strip():
        return []
    return read(io.StringIO(text), index=":", format="extxyz")


def read_structure_file(path) -> "object":
    """Read one structure from a file ASE understands; clear error if it cannot."""
    from ase.io import read

    try:
        return read(str(path))
    except Exception as exc:  # ASE raises many types for bad files
        raise ValueError(f"cannot read structure file {path}: {exc}") from exc


def formula(atoms) -> str:
    return atoms.get_chemical_formula(mode="metal")


def composition_label(atoms, metals: Iterable[str] = ("Ni", "Co", "Mn", "Al")) -> str:
    """A readable label like 'Li0.75NiO2' normalized to one transition-metal site."""
    symbols = atoms.get_chemical_symbols()
    n_m = sum(symbols.count(m) for m in metals)
    if n_m == 0:
        return formula(atoms)
    parts = []
    for el in ["Li", *metals, "O"]:
        n = symbols.count(el)
        if n:
            x = n / n_m
            parts.append(el if abs(x - 1) < 1e-9 else f"{el}{x:.3g}")
    return "".join(parts)
