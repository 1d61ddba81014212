"""VASP output parsing: ``vasprun.xml`` and ``OUTCAR`` text to ``IonicStep`` records.

``parse_vasprun_xml`` and ``parse_outcar`` are pure (file text in, steps out);
``parse_vasp_outputs(rundir)`` reads a run directory (vasprun.xml first, OUTCAR as the
fallback and for magnetic moments).

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
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_al.errors import RemoteALError

class VaspOutputError(RemoteALError, ValueError):
    """Raised by ``parse_vasp_outputs`` when a run directory holds no usable VASP output
    (no vasprun.xml or OUTCAR with a complete ionic step)."""

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
