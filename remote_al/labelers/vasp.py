"""VASP labeler: PBE+U single points for Li/Ni/Co/Mn/Al/O cathodes, Materials Project style.

Three layers, in this order in the file:

* pure input rules: the Hubbard U and initial-moment tables, the INCAR a label needs
  (``label_incar``), the atom grouping that POSCAR needs (``poscar_order``);
* pure output parsing: ``parse_vasprun_xml`` and ``parse_outcar`` turn file text into
  ``IonicStep`` records; ``parse_vasp_outputs(rundir)`` reads a run directory
  (vasprun.xml first, OUTCAR as the fallback and for magnetic moments);
* the IO shell: POTCAR lookup, input writing (pymatgen's ``MPStaticSet`` gives the MP base
  INCAR, the KPOINTS and the POSCAR), running the configured command, and ``VaspLabeler``.

An ionic step whose electronic loop ran NELM iterations did not reach EDIFF; VASP 5 still
prints "aborting loop because EDIFF is reached" for it, so convergence is judged from the
iteration count (and VASP 6's explicit "(unconverged)" line), never from that message.
Such a step is never turned into a label.

Energies: ``IonicStep.energy`` is the free energy (TOTEN, ``e_fr_energy``), the quantity
the forces are derivatives of; labels use it. ``energy_sigma0`` is the sigma -> 0
extrapolation that MP reports, kept for reference.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from remote_al.labelers.base import Labeler, LabelingError, validate_label
from remote_al.records import Label

# ----------------------------------------------------------------------- input rules
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

# Outputs kept in each run directory; bulky ones removed after the run.
KEY_INPUTS = ("INCAR", "KPOINTS", "POSCAR")
RUN_OUTPUTS = ("OSZICAR", "OUTCAR", "vasprun.xml", "vasp.out")
BULKY_OUTPUTS = ("WAVECAR", "CHG", "CHGCAR", "PROCAR", "LOCPOT", "ELFCAR", "AECCAR0", "AECCAR1",
                 "AECCAR2", "WAVEDER", "vaspwave.h5")

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


def validated_settings(cls, settings: Mapping[str, Any], bounds=None, refusals=None):
    """``cls(**settings)`` for the settings dataclass ``cls`` of a labeler, once pydantic has
    checked every key: no unknown key (with a did-you-mean), the annotated types, strictly
    (no "4" for 4, no true for 1), finite numbers, and ``bounds`` ({field: {"ge": .., "le":
    ..}}). ``refusals(settings)`` yields (location, reason, fix) for well-typed values that
    cannot be used. Raises LabelingError from the pydantic ValidationError, whose locations
    are the field paths (the driver names them as ``labeler.settings.<path>``)."""
    import difflib
    import typing

    from pydantic import ConfigDict, Field, ValidationError, create_model
    from pydantic_core import InitErrorDetails, PydanticCustomError

    label = cls.__name__.removesuffix("Settings").lower()
    if not isinstance(settings, Mapping):
        raise LabelingError(f"{label} settings must be a table, got {type(settings).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: (hints[f.name], Field(f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                                      **(bounds or {}).get(f.name, {})))
        for f in dataclasses.fields(cls)
    }
    model = create_model(f"{cls.__name__}Check", __config__=ConfigDict(extra="forbid", strict=True,
                                                                      allow_inf_nan=False), **fields)
    try:
        model.model_validate(dict(settings))
        problems = [InitErrorDetails(type=PydanticCustomError("refused", "{problem}", {"problem": reason, "fix": fix}),
                                     loc=tuple(loc), input=settings)
                    for loc, reason, fix in (refusals(settings) if refusals else ())]
        if problems:
            raise ValidationError.from_exception_data(model.__name__, problems)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        hint = f" (fix: {err['ctx']['fix']})" if err["type"] == "refused" else ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(fields), n=1)
            hint = (f" (did you mean {close[0]!r}?)" if close else "") + f"; known settings: {sorted(fields)}"
        where = ".".join(str(p) for p in err["loc"])
        raise LabelingError(f"{label} settings: {where}: {err['msg']}{hint}") from exc
    return cls(**dict(settings))


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


# ------------------------------------------------------------------ output parsing
class VaspOutputError(ValueError):
    """A run directory holds no usable VASP output."""

    def __init__(self, message: str, rundir: Path | None = None):
        super().__init__(message)
        self.rundir = rundir


@dataclass(frozen=True)
class IonicStep:
    """One ionic step of a VASP run. Forces eV/A; stress eV/A^3, Voigt (xx yy zz yz xz xy),
    ASE sign (positive = tensile); magmoms mu_B per atom (OUTCAR only), POSCAR order."""

    index: int  # 1-based, as VASP counts
    energy: float  # free energy TOTEN (force-consistent), eV
    energy_sigma0: float  # energy(sigma->0), eV
    forces: tuple[tuple[float, float, float], ...]
    stress: tuple[float, ...] | None
    magmoms: tuple[float, ...] | None
    n_electronic_steps: int
    nelm: int | None
    converged: bool
    reason: str = ""  # why not converged (or why not a DFT step)
    # "dft": computed with DFT; "ml": predicted by VASP's machine-learned force field
    # (ML_LMLFF), never a label
    source: str = "dft"


def _scf_verdict(index: int, n_electronic: int, nelm: int | None, flagged: bool) -> tuple[bool, str]:
    if nelm is not None and n_electronic >= nelm:
        return False, f"SCF not converged: electronic loop stopped at NELM={nelm} in ionic step {index}"
    if flagged:
        return False, f"SCF not converged: VASP reports EDIFF not reached in ionic step {index}"
    if n_electronic == 0:
        return False, f"no electronic steps recorded for ionic step {index}"
    return True, ""


def _kbar_to_voigt(xx, yy, zz, xy, yz, zx) -> tuple[float, ...]:
    """VASP stress in kB (pressure sign) -> ASE stress in eV/A^3, Voigt order."""
    from ase.units import GPa

    f = -0.1 * GPa
    return (xx * f, yy * f, zz * f, yz * f, zx * f, xy * f)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split()]


def _ml_switched_on(incar_or_parameters) -> bool:
    """Whether a vasprun ``incar``/``parameters`` element turns on VASP's machine-learned
    force field (ML_LMLFF = T, or an ML_MODE other than "none")."""
    flag = incar_or_parameters.find(".//i[@name='ML_LMLFF']")
    if flag is not None and (flag.text or "").strip().upper().startswith("T"):
        return True
    mode = incar_or_parameters.find(".//i[@name='ML_MODE']")
    return mode is not None and (mode.text or "").strip().lower() not in ("", "none")


def parse_vasprun_xml(data: bytes | str) -> list[IonicStep]:
    """Ionic steps of a vasprun.xml, in order. A truncated file (VASP killed) yields its
    complete steps.

    With VASP 6's machine-learned force field (ML_LMLFF), DFT steps are ``<calculation>``
    elements with an electronic loop (``scstep``), and the force field's steps are written
    outside them (an unnamed ``<structure>`` followed by ``forces``, ``stress`` and
    ``energy``, what pymatgen reads as ``md_data``). Those, and a ``<calculation>`` without
    an electronic loop in such a run, come back as ``source="ml"``: never labels."""
    from ase.units import GPa

    if isinstance(data, str):
        data = data.encode("latin-1", errors="replace")
    parser = ET.XMLPullParser(events=("start", "end"))
    nelm: int | None = None
    pstress = 0.0
    ml_on = False
    blocks: list[tuple[str, Any]] = []  # ("calc", element) or ("ml", {tag: element})
    try:
        parser.feed(data)
        parser.close()
    except ET.ParseError:
        pass  # keep the elements completed before the damage
    depth = 0
    for event, elem in parser.read_events():
        if event == "start":
            depth += 1
            if depth == 2 and elem.tag == "structure" and elem.get("name") is None:
                blocks.append(("ml", {}))
            continue
        depth -= 1
        if depth != 1:
            continue
        if elem.tag == "incar":
            ml_on = ml_on or _ml_switched_on(elem)
        elif elem.tag == "parameters":
            ml_on = ml_on or _ml_switched_on(elem)
            # The SCF's NELM sits under "electronic convergence"; VASP 5 repeats the name for
            # the GW response functions (NELM = 1), so a flat lookup would take the wrong one.
            scf = elem.find(".//separator[@name='electronic convergence']/i[@name='NELM']")
            if scf is None:
                scf = elem.find(".//i[@name='NELM']")
            nelm = None if scf is None else int(scf.text)
            pressure = elem.find(".//i[@name='PSTRESS']")
            pstress = 0.0 if pressure is None else float(pressure.text)
        elif elem.tag == "calculation":
            blocks.append(("calc", elem))
        elif blocks and blocks[-1][0] == "ml" and elem.tag in ("structure", "varray", "energy"):
            key = elem.get("name") or elem.tag
            blocks[-1][1].setdefault(key, elem)

    steps = []
    for k, (kind, block) in enumerate(blocks, start=1):
        if kind == "ml":
            step = _vasprun_ml_step(k, block, nelm)
        else:
            step = _vasprun_calculation_step(k, block, nelm, pstress * 0.1 * GPa, ml_on)
        if step is not None:
            steps.append(step)
    return steps


def _vasprun_stress(block) -> tuple[float, ...] | None:
    if block is None:
        return None
    s = [_floats(v.text) for v in block]
    return _kbar_to_voigt(s[0][0], s[1][1], s[2][2], s[0][1], s[1][2], s[0][2])


def _ml_reason(index: int) -> str:
    return f"ionic step {index} was predicted by VASP's machine-learned force field (ML_LMLFF), not computed with DFT"


def _vasprun_ml_step(k: int, block: dict, nelm: int | None) -> IonicStep | None:
    forces = block.get("forces")
    if forces is None:
        return None  # cut off before its forces
    energy = block.get("energy")
    free = energy.find("i[@name='e_fr_energy']") if energy is not None else None
    value = float(free.text) if free is not None else float("nan")
    return IonicStep(k, value, value, tuple(tuple(_floats(v.text)) for v in forces),
                     _vasprun_stress(block.get("stress")), None, 0, nelm, False, _ml_reason(k), "ml")


def _vasprun_calculation_step(k: int, calc, nelm: int | None, pstress_ev_a3: float, ml_on: bool) -> IonicStep | None:
    energy = calc.find("energy/i[@name='e_fr_energy']")
    fblock = calc.find("varray[@name='forces']")
    scsteps = calc.findall("scstep")
    if energy is None or fblock is None:
        return None
    basis = [_floats(v.text) for v in calc.find("structure/crystal/varray[@name='basis']")]
    volume = abs(_det3(basis))
    # e_fr_energy in calculation/energy includes PV (PSTRESS, kB); OUTCAR's TOTEN does not.
    free = float(energy.text) - pstress_ev_a3 * volume
    sigma0 = free
    if scsteps:
        last = scsteps[-1].find("energy")
        sigma0 = free + float(last.find("i[@name='e_0_energy']").text) - float(
            last.find("i[@name='e_fr_energy']").text
        )
    forces = tuple(tuple(_floats(v.text)) for v in fblock)
    stress = _vasprun_stress(calc.find("varray[@name='stress']"))
    if ml_on and not scsteps:
        return IonicStep(k, free, sigma0, forces, stress, None, 0, nelm, False, _ml_reason(k), "ml")
    converged, reason = _scf_verdict(k, len(scsteps), nelm, False)
    return IonicStep(k, free, sigma0, forces, stress, None, len(scsteps), nelm, converged, reason)


def _det3(m) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


_ITERATION = re.compile(r"^-+\s*Iteration\s+(\d+)\s*\(\s*(\d+)\)")
_NELM = re.compile(r"\bNELM\s*=\s*(\d+)")
_NIONS = re.compile(r"NIONS\s*=\s*(\d+)")
# "free  energy   TOTEN  =  -24.127 eV" (DFT) or "free  energy ML TOTEN  = ..." (VASP's
# machine-learned force field). Not "enthalpy is  TOTEN" (TOTEN + PV, with PSTRESS set).
_FREE_ENERGY = re.compile(r"free\s+energy\s+(ML\s+)?TOTEN\s*=\s*(\S+)")
_SIGMA0 = re.compile(r"energy\(sigma->0\)\s*=\s*(\S+)")


def parse_outcar(text: str) -> list[IonicStep]:
    """Ionic steps of an OUTCAR (VASP 5 or 6, collinear), one per ionic step, in order.
    Steps cut off mid-way are dropped.

    With VASP 6's on-the-fly machine learning (``ML_LMLFF``), every ionic step first prints
    the force field's prediction (blocks marked "ML" / "(ML)"); only some steps then run
    DFT. A step with a DFT block is returned with the DFT energy, forces and stress
    (``source="dft"``), a step without one with the prediction (``source="ml"``), which is
    never a label. Indices are VASP's ionic step numbers, each once."""
    lines = text.splitlines()
    nelm = natoms = None
    by_index: dict[int, IonicStep] = {}
    ionic, n_elec, flagged = 0, 0, False  # ionic: the step of the latest DFT iteration header
    last_index = 0  # the highest ionic step index seen (DFT or ML)
    # Pending blocks of the step being read, each with where it came from ("dft" or "ml").
    forces = stress = magmoms = None
    forces_src = stress_src = None
    stress_ml_header = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if natoms is None and (m := _NIONS.search(line)):
            natoms = int(m.group(1))
        elif nelm is None and (m := _NELM.search(line)):
            nelm = int(m.group(1))
        elif m := _ITERATION.match(line):
            if int(m.group(1)) != ionic:
                ionic, n_elec, flagged = int(m.group(1)), 0, False
                magmoms = None
            n_elec = max(n_elec, int(m.group(2)))
        elif "aborting loop EDIFF was not reached" in line:
            flagged = True
        elif "FORCE on cell =-STRESS" in line:
            stress_ml_header = line.lstrip().startswith("ML ")
        elif line.lstrip().startswith("in kB"):
            try:
                stress = _kbar_to_voigt(*_floats(line.split("kB", 1)[1])[:6])
            except ValueError:  # Fortran overflow (*****): no stress
                stress = None
            stress_src = "ml" if stress_ml_header else "dft"
            stress_ml_header = False
        elif "magnetization (x)" in line and natoms:
            start = i + 1
            while start < len(lines) and not lines[start].startswith("---"):
                start += 1
            magmoms = tuple(float(lines[start + 1 + a].split()[-1]) for a in range(natoms))
            i = start + natoms
        elif "POSITION" in line and "TOTAL-FORCE" in line and natoms:
            rows = lines[i + 2 : i + 2 + natoms]
            forces = tuple(tuple(float(x) for x in row.split()[3:6]) for row in rows)
            forces_src = "ml" if "(ML)" in line else "dft"
            i += 1 + natoms
        elif "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" in line:
            src = "ml" if line.lstrip().startswith("ML ") else "dft"
            free = sigma0 = None
            for b in lines[i + 1 : i + 8]:
                if free is None and (m := _FREE_ENERGY.search(b)):
                    free = float(m.group(2))
                elif sigma0 is None and (m := _SIGMA0.search(b)):
                    sigma0 = float(m.group(1))
            if src == "ml":
                # The prediction of a new step, printed before that step's DFT (if any).
                index = last_index + 1
            else:
                index = ionic if ionic > 0 else last_index + 1
            last_index = max(last_index, index)
            if free is not None and forces is not None and forces_src == src:
                if src == "dft":
                    converged, reason = _scf_verdict(index, n_elec, nelm, flagged)
                else:
                    converged, reason = False, (
                        f"ionic step {index} was predicted by VASP's machine-learned force field "
                        "(ML_LMLFF), not computed with DFT"
                    )
                step = IonicStep(index, free, sigma0 if sigma0 is not None else free, forces,
                                 stress if stress_src == src else None,
                                 magmoms if src == "dft" else None,
                                 n_elec if src == "dft" else 0, nelm, converged, reason, src)
                if src == "dft" or index not in by_index:  # DFT replaces the step's prediction
                    by_index[index] = step
            forces = stress = None
            forces_src = stress_src = None
            if src == "dft":
                magmoms = None
        i += 1
    return [by_index[k] for k in sorted(by_index)]


def parse_vasp_outputs(rundir: Path | str) -> list[IonicStep]:
    """Ionic steps of the run in ``rundir``: from vasprun.xml, or from OUTCAR when vasprun.xml
    is missing or holds no complete step. Magnetic moments come from OUTCAR when it has the
    same steps. Raises ``VaspOutputError`` when neither file gives a step."""
    rundir = Path(rundir)
    vasprun, outcar = rundir / "vasprun.xml", rundir / "OUTCAR"
    steps = parse_vasprun_xml(vasprun.read_bytes()) if vasprun.is_file() else []
    outcar_steps = parse_outcar(outcar.read_text(errors="replace")) if outcar.is_file() else []
    if not steps:
        steps = outcar_steps
    elif len(outcar_steps) == len(steps) and outcar_steps[-1].magmoms is not None:
        steps = [
            dataclasses.replace(s, magmoms=o.magmoms) for s, o in zip(steps, outcar_steps)
        ]
    if not steps:
        found = " or ".join(p.name for p in (vasprun, outcar) if p.is_file())
        what = f"no complete ionic step in {found}" if found else "no vasprun.xml or OUTCAR"
        raise VaspOutputError(f"{what} in {rundir}", rundir)
    return steps


# ----------------------------------------------------------------------- IO shell
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


def _vasp_command(settings: VaspSettings, environ: Mapping[str, str] = os.environ) -> list[str]:
    command = settings.command or environ.get("VASP_COMMAND")
    if not command:
        raise LabelingError(
            "no VASP command: set the `command` setting of the vasp labeler "
            "(e.g. \"mpiexec -n 128 vasp_std\") or the VASP_COMMAND environment variable"
        )
    argv = shlex.split(command)
    if shutil.which(argv[0]) is None:
        raise LabelingError(f"VASP command {argv[0]!r} (from {command!r}) is not on PATH; fix the `command` setting")
    return argv


@dataclass(frozen=True)
class RunOutcome:
    step: IonicStep | None  # the last ionic step, when there is one
    failure: str  # "" when ``step`` is converged
    scf_failure: bool  # the failure is an unconverged SCF (worth a retry)


def run_vasp(argv: Sequence[str], rundir: Path, timeout_s: float | None) -> RunOutcome:
    """Run VASP once in ``rundir`` and judge its last ionic step."""
    for name in RUN_OUTPUTS:  # never judge a stale output of an earlier run
        (rundir / name).unlink(missing_ok=True)
    with open(rundir / "vasp.out", "wb") as out:
        proc = subprocess.Popen(list(argv), cwd=rundir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and its ranks too
            proc.wait()
            return RunOutcome(None, f"VASP did not finish within {timeout_s} s (the timeout_s setting)", False)
    for name in BULKY_OUTPUTS:
        (rundir / name).unlink(missing_ok=True)
    # The exit code alone decides nothing: MPI launchers can fail after VASP wrote a
    # complete, converged step, and VASP can exit 0 without one. The outputs decide.
    try:
        step = parse_vasp_outputs(rundir)[-1]
    except VaspOutputError as exc:
        tail = (rundir / "vasp.out").read_text(errors="replace").strip().splitlines()[-3:]
        return RunOutcome(None, f"VASP exited with code {rc}, {exc}; last output: {' | '.join(tail)}", False)
    if step.source != "dft":
        # VASP's own force field predicted the last step (ML_LMLFF on, e.g. from a site-wide
        # INCAR template or ML_ISTART): not a first-principles label, and no retry fixes it.
        return RunOutcome(step, f"{step.reason}; labels must come from DFT: set ML_LMLFF = .FALSE.", False)
    if not step.converged:
        return RunOutcome(step, step.reason, True)
    return RunOutcome(step, "", False)


def _archive_attempt(rundir: Path, attempt: int) -> Path:
    """Keep an attempt's inputs and outputs in ``rundir/attempt-<n>/``."""
    keep = rundir / f"attempt-{attempt}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    for name in KEY_INPUTS:
        if (rundir / name).exists():
            shutil.copy2(rundir / name, keep / name)
    for name in RUN_OUTPUTS:
        if (rundir / name).exists():
            shutil.move(str(rundir / name), keep / name)
    return keep


class VaspLabeler(Labeler):
    """PBE+U single points with VASP; see ``VaspSettings`` for the settings."""

    name = "vasp"
    note = "DFT (VASP, PBE+U, MP conventions)"

    def label(self, structures: Sequence, structure_ids: Sequence[int], workdir: Path) -> list[Label]:
        settings = VaspSettings.from_mapping(self.settings)
        # Setup problems surface here, before any VASP run.
        argv = _vasp_command(settings)
        species = list(dict.fromkeys(s for atoms in structures for s in atoms.get_chemical_symbols()))
        potcars = dict(zip(species, find_potcars(species, settings, potcar_root(settings))))
        labels = []
        for atoms, sid in zip(structures, structure_ids):
            t0 = time.time()
            rundir = Path(workdir) / str(sid)
            try:
                label = self._label_one(atoms, int(sid), rundir, settings, argv, potcars)
            except Exception as exc:  # one bad structure must not lose the others
                label = Label(int(sid), "failed", reason=f"{type(exc).__name__}: {exc} (run dir {rundir})")
            label = dataclasses.replace(label, wall_s=time.time() - t0)
            labels.append(validate_label(label, len(atoms)))
        return labels

    def _label_one(self, atoms, sid, rundir, settings, argv, potcars) -> Label:
        from pymatgen.io.vasp.inputs import Incar

        order = write_vasp_inputs(atoms, rundir, settings, potcars)
        outcome = run_vasp(argv, rundir, settings.timeout_s)
        if outcome.scf_failure and settings.scf_retry:
            first = outcome.failure
            first_dir = _archive_attempt(rundir, 1)
            incar = retry_incar(Incar.from_file(first_dir / "INCAR"), settings)
            Incar(incar).write_file(rundir / "INCAR")
            outcome = run_vasp(argv, rundir, settings.timeout_s)
            if outcome.failure:
                changes = ", ".join(f"{k}={incar[k]}" for k in (*settings.retry_incar, "NELM") if k in incar)
                return Label(sid, "failed", reason=(
                    f"{outcome.failure} (after a retry with {changes}; first try: {first}; run dir {rundir})"
                ))
        if outcome.failure:
            return Label(sid, "failed", reason=f"{outcome.failure} (run dir {rundir})")
        step = outcome.step
        if step.source != "dft" or not step.converged:  # run_vasp never lets one through; a label must not either
            raise LabelingError(f"ionic step {step.index} is not a converged DFT step: {step.reason}")
        return Label(
            structure_id=sid,
            status="ok",
            energy=step.energy,
            forces=tuple(unpermute(step.forces, order)),
            stress=step.stress,
            magmoms=None if step.magmoms is None else tuple(unpermute(step.magmoms, order)),
        )

