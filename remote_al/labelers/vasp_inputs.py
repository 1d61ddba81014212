"""VASP inputs of a label: PBE+U single points, Materials Project style.

Pure input rules (the Hubbard U and initial-moment tables, the INCAR a label needs
(``label_incar``), the atom grouping that POSCAR needs (``poscar_order``)), the checked
settings of the vasp labeler (``VaspSettings``), the POTCAR lookup and the input writer
(pymatgen's ``MPStaticSet`` gives the MP base INCAR, the KPOINTS and the POSCAR).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from remote_al.labelers.base import LabelingError, validated_settings

# Materials Project (legacy MPRelaxSet) U values for oxides, eV. Other species get U = 0.
HUBBARD_U: dict[str, float] = {"Ni": 6.2, "Co": 3.32, "Mn": 3.9}

# Initial magnetic moments (mu_B) per species, MP convention: transition metals start
# high-spin (Co low-spin), everything else at 0.6. The SCF relaxes them; check the final ones.
INITIAL_MAGMOM: dict[str, float] = {"Ni": 5.0, "Co": 0.6, "Mn": 5.0}
DEFAULT_MAGMOM = 0.6

# MP's preferred POTCARs (the same as pymatgen's MPRelaxSet) for the cathode elements.
POTCAR_SYMBOLS: dict[str, str] = {
    "Li": "Li_sv", "Ni": "Ni_pv", "Co": "Co", "Mn": "Mn_pv", "O": "O", "Al": "Al",
}

# What a training label needs on top of the MP static set: a single point (no ionic
# moves), Gaussian smearing (the tetrahedron method's forces are not variational), a
# tight SCF, exact projectors, no symmetrisation of rattled frames, no large files.
LABEL_INCAR: dict[str, Any] = {
    "ENCUT": 520,
    "ISPIN": 2,
    "NSW": 0,
    "IBRION": -1,
    "ISIF": 2,
    "ISMEAR": 0,
    "SIGMA": 0.05,
    "EDIFF": 1e-6,
    "PREC": "Accurate",
    "LREAL": False,
    "LASPH": True,
    "ISYM": 0,
    "LWAVE": False,
    "LCHARG": False,
    "LORBIT": 11,
}

# Second try after an unconverged SCF: all-band minimiser and damped density mixing
# (the first steps custodian's electronic-convergence handler takes), with more iterations.
SCF_RETRY_INCAR: dict[str, Any] = {"ALGO": "All", "AMIX": 0.1, "BMIX": 0.01, "AMIX_MAG": 0.4, "BMIX_MAG": 0.01}
RETRY_MIN_NELM = 200

# pymatgen's directory names per POTCAR functional (PotcarSingle.functional_dir).
FUNCTIONAL_DIRS: dict[str, str] = {
    "PBE": "POT_GGA_PAW_PBE",
    "PBE_52": "POT_GGA_PAW_PBE_52",
    "PBE_54": "POT_GGA_PAW_PBE_54",
    "PBE_64": "POT_PAW_PBE_64",
    "LDA": "POT_LDA_PAW",
    "LDA_52": "POT_LDA_PAW_52",
    "LDA_54": "POT_LDA_PAW_54",
    "LDA_64": "POT_LDA_64",
}


@dataclass(frozen=True)
class VaspSettings:
    """The ``settings`` mapping of the vasp labeler, checked. Every INCAR tag can be
    overridden with ``incar`` (applied last)."""

    command: str | None = None  # e.g. "mpiexec -n 128 vasp_std"; else $VASP_COMMAND
    potcar_dir: str | None = None  # else $PMG_VASP_PSP_DIR
    potcar_functional: str = "PBE_54"
    potcar_symbols: Mapping[str, str] = field(default_factory=dict)  # e.g. {"Ni": "Ni"}
    incar: Mapping[str, Any] = field(default_factory=dict)
    hubbard_u: Mapping[str, float] = field(default_factory=lambda: dict(HUBBARD_U))
    magmom: Mapping[str, float] = field(default_factory=dict)  # per species, over INITIAL_MAGMOM
    kpoints_density: float = 64  # k-points per reciprocal-A^3 (pymatgen reciprocal_density)
    kspacing: float | None = None  # if set: INCAR KSPACING (1/A), no KPOINTS file
    nelm: int = 100
    timeout_s: float | None = None  # per VASP run; None: no limit
    scf_retry: bool = True
    retry_incar: Mapping[str, Any] = field(default_factory=lambda: dict(SCF_RETRY_INCAR))

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "VaspSettings":
        """Checked settings (``validated_settings``: keys, types, finite numbers, bounds).
        Labels must be DFT: an ``incar`` or ``retry_incar`` that switches on VASP's on-the-fly
        machine-learned force field (``ML_LMLFF`` true, or an ``ML_MODE`` other than none)
        is refused, since VASP would then predict some ionic steps instead of computing them.
        Raises LabelingError."""

        def mlff(values):
            for key in ("incar", "retry_incar"):
                table = values.get(key) or {}
                for tag, value in (table.items() if isinstance(table, Mapping) else ()):
                    name = str(tag).strip().upper()
                    if name == "ML_LMLFF":  # a VASP logical: true, .TRUE., T, ...
                        on = value is True or (isinstance(value, str) and value.strip().strip(".").upper()[:1] == "T")
                    elif name == "ML_MODE":  # train, select, refit, run: all use the force field
                        on = value is not None and str(value).strip().lower() not in ("", "none")
                    else:
                        continue
                    if on:
                        shown = str(value).lower() if isinstance(value, bool) else repr(value)
                        yield ((key, tag), f"{tag} = {shown} switches on VASP's machine-learned force field: "
                               "some ionic steps would be ML predictions, and labels must be DFT",
                               f"remove {tag} from {key} (or set ML_LMLFF = false)")

        return validated_settings(cls, settings, refusals=mlff, bounds={
            "kpoints_density": {"gt": 0, "le": 10_000},  # k-points per reciprocal A^3
            "kspacing": {"gt": 0, "le": 5.0},  # 1/A
            "nelm": {"ge": 1, "le": 10_000},
            "timeout_s": {"gt": 0, "le": 30 * 86_400},
        })


def poscar_order(symbols: Sequence[str]) -> tuple[list[int], list[str]]:
    """Atom order that groups each species once, species in order of first appearance.

    Returns (order, species): POSCAR atom i is input atom ``order[i]``.
    """
    species = list(dict.fromkeys(symbols))
    order = sorted(range(len(symbols)), key=lambda i: species.index(symbols[i]))
    return order, species


def unpermute(values: Sequence, order: Sequence[int]) -> list:
    """Inverse of ``[values[i] for i in order]``: POSCAR-ordered values back to input order."""
    out: list = [None] * len(order)
    for poscar_index, input_index in enumerate(order):
        out[input_index] = values[poscar_index]
    return out


def label_incar(species: Sequence[str], counts: Sequence[int], settings: VaspSettings) -> dict[str, Any]:
    """The INCAR tags remote-al sets on top of the MP base: label rules, +U per species in
    POSCAR order, MAGMOM per site, NELM, k-spacing, then the user's ``incar`` overrides."""
    incar = dict(LABEL_INCAR)
    incar["NELM"] = int(settings.nelm)
    u = [float(settings.hubbard_u.get(s, 0.0)) for s in species]
    if any(value != 0.0 for value in u):
        incar.update(
            LDAU=True,
            LDAUTYPE=2,
            LDAUL=[2 if value != 0.0 else -1 for value in u],
            LDAUU=u,
            LDAUJ=[0.0] * len(species),
            LDAUPRINT=1,
            LMAXMIX=4,
        )
    else:
        incar["LDAU"] = False
    magmom_table = {**INITIAL_MAGMOM, **settings.magmom}
    incar["MAGMOM"] = [
        float(magmom_table.get(s, DEFAULT_MAGMOM)) for s, n in zip(species, counts) for _ in range(n)
    ]
    if settings.kspacing is not None:
        incar["KSPACING"] = float(settings.kspacing)
        incar["KGAMMA"] = True
    incar.update(settings.incar)
    return incar


def retry_incar(incar: Mapping[str, Any], settings: VaspSettings) -> dict[str, Any]:
    """INCAR for the second try after an unconverged SCF."""
    safer = dict(settings.retry_incar)
    safer.setdefault("NELM", max(2 * int(incar.get("NELM", 60)), RETRY_MIN_NELM))
    return {**incar, **safer}


# ----------------------------------------------------------------------- POTCARs and writing
def potcar_root(settings: VaspSettings, environ: Mapping[str, str] = os.environ) -> Path:
    """The POTCAR directory from the ``potcar_dir`` setting or $PMG_VASP_PSP_DIR."""
    if settings.potcar_dir:
        root, source = Path(settings.potcar_dir), "the `potcar_dir` setting"
    elif environ.get("PMG_VASP_PSP_DIR"):
        root, source = Path(environ["PMG_VASP_PSP_DIR"]), "PMG_VASP_PSP_DIR"
    else:
        raise LabelingError(
            "no POTCAR directory: set the PMG_VASP_PSP_DIR environment variable or the "
            "`potcar_dir` setting of the vasp labeler to the directory that holds "
            f"{FUNCTIONAL_DIRS.get(settings.potcar_functional, '<functional>')}/<symbol>/POTCAR "
            "or <symbol>/POTCAR"
        )
    if not root.is_dir():
        raise LabelingError(
            f"POTCAR directory {root} (from {source}) does not exist; set PMG_VASP_PSP_DIR or "
            "the `potcar_dir` setting to an existing directory"
        )
    return root


def potcar_symbol(element: str, settings: VaspSettings) -> str:
    return settings.potcar_symbols.get(element) or POTCAR_SYMBOLS.get(element) or element


def find_potcars(species: Sequence[str], settings: VaspSettings, root: Path) -> list[Path]:
    """One POTCAR file per species, in the given order. Looks in ``root/<functional dir>/``
    (pymatgen layout) then ``root/``, for ``<symbol>/POTCAR`` or ``POTCAR.<symbol>``."""
    functional_dir = FUNCTIONAL_DIRS.get(settings.potcar_functional, settings.potcar_functional)
    found, missing = [], []
    for element in species:
        symbol = potcar_symbol(element, settings)
        candidates = [
            base / name
            for base in (root / functional_dir, root)
            for name in (Path(symbol) / "POTCAR", Path(f"POTCAR.{symbol}"))
        ]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(f"{element}: {candidates[0]} (or {candidates[2]})")
        else:
            found.append(hit)
    if missing:
        raise LabelingError(
            "missing POTCAR files: " + "; ".join(missing)
            + ". Set PMG_VASP_PSP_DIR or the `potcar_dir` setting to a directory holding them"
            " (symbols can be changed with the `potcar_symbols` setting)"
        )
    return found


def write_vasp_inputs(atoms, rundir: Path, settings: VaspSettings, potcars: Mapping[str, Path]) -> list[int]:
    """Write INCAR, KPOINTS (unless KSPACING), POSCAR and the assembled POTCAR into ``rundir``.

    Returns the POSCAR order (POSCAR atom i is input atom ``order[i]``).
    """
    import warnings

    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp.inputs import Incar
    from pymatgen.io.vasp.sets import MPStaticSet

    symbols = atoms.get_chemical_symbols()
    order, species = poscar_order(symbols)
    counts = [symbols.count(s) for s in species]
    structure = Structure(
        Lattice(atoms.cell.array),
        [symbols[i] for i in order],
        atoms.positions[order],
        coords_are_cartesian=True,
    )
    ours = label_incar(species, counts, settings)
    kpoints_settings = {} if settings.kspacing is not None else {"reciprocal_density": settings.kpoints_density}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POTCAR-functional and LASPH notes about the MP base
        input_set = MPStaticSet(
            structure,
            sort_structure=False,
            force_gamma=True,
            user_incar_settings={k: v for k, v in ours.items() if not k.startswith("LDAU") and k != "MAGMOM"},
            user_kpoints_settings=kpoints_settings,
            user_potcar_functional=settings.potcar_functional,
            user_potcar_settings={e: potcar_symbol(e, settings) for e in species},
        )
        incar = dict(input_set.incar)
        kpoints = input_set.kpoints
        poscar = input_set.poscar
    for key in [k for k in incar if k.startswith("LDAU")]:
        del incar[key]
    incar.update(ours)
    if settings.kspacing is None:
        incar.pop("KSPACING", None)
    if poscar.site_symbols != species:
        raise RuntimeError(f"POSCAR species {poscar.site_symbols} differ from {species}")

    rundir.mkdir(parents=True, exist_ok=True)
    Incar(incar).write_file(rundir / "INCAR")
    poscar.write_file(rundir / "POSCAR")
    if kpoints is not None:
        kpoints.write_file(rundir / "KPOINTS")
    elif (rundir / "KPOINTS").exists():
        (rundir / "KPOINTS").unlink()
    with open(rundir / "POTCAR", "wb") as out:
        for element in species:
            out.write(potcars[element].read_bytes())
    (rundir / "POTCAR.spec").write_text("\n".join(potcar_symbol(e, settings) for e in species) + "\n")
    return order
