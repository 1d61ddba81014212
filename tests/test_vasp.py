"""VASP labeler: output parsing against ASE's readers, PBE+U inputs for cathode cells,
POTCAR assembly, and the run path (retry, failures) with a stand-in ``vasp`` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from ase.spacegroup import crystal

from remote_al.labelers import LabelingError, get_labeler
from remote_al.labelers.vasp import VaspLabeler
from remote_al.labelers.vasp_inputs import (
    VaspSettings,
    find_potcars,
    poscar_order,
    potcar_root,
    unpermute,
    write_vasp_inputs,
)
from remote_al.labelers.vasp_outputs import VaspOutputError, parse_outcar, parse_vasp_outputs, parse_vasprun_xml

DATA = Path(__file__).parent / "data" / "vasp"

# The conventions the inputs must follow (Materials Project, PBE+U for oxides).
EXPECTED_U = {"Ni": 6.2, "Co": 3.32, "Mn": 3.9}
EXPECTED_MAGMOM = {"Ni": 5.0, "Co": 0.6, "Mn": 5.0}  # others 0.6
EXPECTED_POTCAR = {"Li": "Li_sv", "Ni": "Ni_pv", "Co": "Co", "Mn": "Mn_pv", "O": "O", "Al": "Al",
                   "H": "H", "C": "C"}


def read_steps(path: Path):
    if path.name.startswith("vasprun"):
        return parse_vasprun_xml(path.read_bytes())
    return parse_outcar(path.read_text())


# ------------------------------------------------------------------------ parsing
# ASE's reader cannot read the MLFF OUTCAR (it stops at the "ML" blocks); it has tests of its own below.
@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir() if p.name not in ("README.md", "OUTCAR.ch4.ml")))
def test_parsed_steps_equal_ase_reader(name):
    steps = read_steps(DATA / name)
    frames = read(DATA / name, index=":")
    assert len(steps) == len(frames) > 0
    for step, atoms in zip(steps, frames):
        assert step.energy == pytest.approx(atoms.get_potential_energy(force_consistent=True), abs=1e-8)
        assert step.energy_sigma0 == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(step.forces, atoms.get_forces(), atol=1e-8)
        np.testing.assert_allclose(step.stress, atoms.get_stress(), atol=1e-10)


@pytest.mark.parametrize("name", ["OUTCAR.Ti-O-Ti.vasp6", "vasprun.Ti-O-Ti.vasp6.xml", "vasprun.h2o.md.xml"])
def test_converged_files_have_only_converged_steps(name):
    steps = read_steps(DATA / name)
    assert all(s.converged and s.reason == "" for s in steps)
    assert all(0 < s.n_electronic_steps < s.nelm for s in steps)


def test_nelm_comes_from_the_scf_section_not_the_gw_one():
    # vasprun.h2o.md.xml holds NELM=60 (electronic convergence) and NELM=1 (GW section).
    steps = parse_vasprun_xml((DATA / "vasprun.h2o.md.xml").read_bytes())
    assert [s.nelm for s in steps] == [60, 60, 60]
    assert [s.n_electronic_steps for s in steps] == [21, 12, 6]


def test_steps_that_hit_nelm_are_rejected_with_the_reason():
    text = (DATA / "OUTCAR.ch4.unconverged").read_text()
    # The file's own record: NELM=15, iterations per ionic step from its headers.
    assert re.search(r"NELM\s*=\s*15;", text)
    iterations: dict[int, int] = {}
    for ionic, electronic in re.findall(r"Iteration\s+(\d+)\(\s*(\d+)\)", text):
        iterations[int(ionic)] = max(iterations.get(int(ionic), 0), int(electronic))
    assert iterations == {1: 15, 2: 15, 3: 12}
    assert text.count("aborting loop because EDIFF is reached") == 3  # VASP 5 says so anyway

    steps = parse_outcar(text)
    assert [s.converged for s in steps] == [False, False, True]
    for k in (1, 2):
        assert steps[k - 1].reason == f"SCF not converged: electronic loop stopped at NELM=15 in ionic step {k}"
    assert steps[2].n_electronic_steps == 12 and steps[2].reason == ""


def test_single_electronic_step_with_nelm_one_is_not_converged():
    (step,) = parse_outcar((DATA / "OUTCAR.ch4.1step").read_text())
    assert not step.converged and "NELM=1 in ionic step 1" in step.reason


def test_vasp6_unconverged_message_is_honoured():
    text = (DATA / "OUTCAR.Ti-O-Ti.vasp6").read_text()
    assert parse_outcar(text)[0].converged
    flagged = text.replace("aborting loop because EDIFF is reached", "aborting loop EDIFF was not reached (unconverged)")
    (step,) = parse_outcar(flagged)
    assert not step.converged and "EDIFF not reached in ionic step 1" in step.reason


def test_truncated_vasprun_keeps_complete_steps(tmp_path):
    data = (DATA / "vasprun.h2o.md.xml").read_bytes()
    third = [m.start() for m in re.finditer(rb"<calculation>", data)][2]
    steps = parse_vasprun_xml(data[: third + 300])
    full = parse_vasprun_xml(data)
    assert len(steps) == 2 and steps == full[:2]


def test_outcar_is_the_fallback_for_a_broken_vasprun(tmp_path):
    xml = (DATA / "vasprun.Ti-O-Ti.vasp6.xml").read_bytes()
    (tmp_path / "vasprun.xml").write_bytes(xml[: xml.index(b"<calculation>") + 500])
    shutil.copy(DATA / "OUTCAR.Ti-O-Ti.vasp6", tmp_path / "OUTCAR")
    steps = parse_vasp_outputs(tmp_path)
    assert steps == parse_outcar((DATA / "OUTCAR.Ti-O-Ti.vasp6").read_text())
    (tmp_path / "OUTCAR").unlink()
    with pytest.raises(VaspOutputError) as err:
        parse_vasp_outputs(tmp_path)
    assert err.value.rundir == tmp_path and "vasprun.xml" in str(err.value)


# ------------------------------------------------------------------------- inputs
def layered_limo2(supercell, metals=None, li_keep=None):
    """Layered R-3m LiMO2 (hex a=2.87, c=14.2), 3 formula units per hexagonal cell,
    repeated; ``metals`` assigns the TM sites in order; ``li_keep`` selects Li sites."""
    atoms = crystal(["Li", "Ni", "O"], basis=[(0, 0, 0), (0, 0, 0.5), (0, 0, 0.2578)], spacegroup=166,
                    cellpar=[2.87, 2.87, 14.2, 90, 90, 120]).repeat(supercell)
    symbols = atoms.get_chemical_symbols()
    tm = [i for i, s in enumerate(symbols) if s == "Ni"]
    for i, metal in zip(tm, metals or []):
        symbols[i] = metal
    atoms.set_chemical_symbols(symbols)
    li = [i for i, s in enumerate(symbols) if s == "Li"]
    if li_keep is not None:
        del atoms[[i for k, i in enumerate(li) if not li_keep(k)]]
    return atoms


def li05nio2():
    return layered_limo2((2, 2, 1), li_keep=lambda k: k % 2 == 0)  # Li6 Ni12 O24


def nmc811():
    # 30 TM sites (hex cell x (5, 2, 1)): Ni24 Co3 Mn3, dopants spread over the cell.
    metals = ["Ni"] * 30
    for k in (3, 13, 23):
        metals[k] = "Co"
    for k in (8, 18, 28):
        metals[k] = "Mn"
    return layered_limo2((5, 2, 1), metals=metals)


def stand_in_potcars(root: Path, layout: str, symbols=EXPECTED_POTCAR.values()) -> Path:
    for zval, symbol in enumerate(symbols, start=1):
        d = root / "POT_GGA_PAW_PBE_54" / symbol if layout == "pymatgen" else root / symbol
        d.mkdir(parents=True, exist_ok=True)
        (d / "POTCAR").write_text(
            f"  PAW_PBE {symbol} 06Sep2000\n   TITEL  = PAW_PBE {symbol} 06Sep2000\n"
            f"   ZVAL   =    {zval}.000    mass and valenz\n End of Dataset\n"
        )
    return root


def write_inputs(atoms, rundir, **settings):
    settings = VaspSettings.from_mapping(settings)
    species = list(dict.fromkeys(atoms.get_chemical_symbols()))
    root = stand_in_potcars(rundir.parent / "potcars", "pymatgen")
    potcars = dict(zip(species, find_potcars(species, settings, root)))
    return write_vasp_inputs(atoms, rundir, settings, potcars)


@pytest.mark.parametrize("build", [li05nio2, nmc811], ids=["Li0.5NiO2", "LiNi0.8Co0.1Mn0.1O2"])
def test_pbe_u_inputs_per_species_and_site(build, tmp_path):
    from pymatgen.io.vasp.inputs import Incar, Poscar

    atoms = build()
    order = write_inputs(atoms, tmp_path / "run")
    incar = Incar.from_file(tmp_path / "run" / "INCAR")
    poscar = Poscar.from_file(tmp_path / "run" / "POSCAR")
    species = poscar.site_symbols
    assert sorted(species) == sorted(set(atoms.get_chemical_symbols()))  # each species once
    assert incar["ISPIN"] == 2 and incar["ENCUT"] == 520 and incar["NSW"] == 0
    assert incar["LDAU"] is True and incar["LDAUTYPE"] == 2
    assert incar["LDAUU"] == pytest.approx([EXPECTED_U.get(s, 0.0) for s in species])
    assert [l == 2 for l in incar["LDAUL"]] == [s in EXPECTED_U for s in species]
    site_symbols = [str(site.specie) for site in poscar.structure]
    assert incar["MAGMOM"] == pytest.approx([EXPECTED_MAGMOM.get(s, 0.6) for s in site_symbols])
    assert len(incar["MAGMOM"]) == len(atoms)
    # POSCAR atom i is input atom order[i], same place in the cell.
    assert site_symbols == [atoms[i].symbol for i in order]
    frac = atoms.get_scaled_positions()[order]
    delta = (poscar.structure.frac_coords - frac + 0.5) % 1.0 - 0.5
    assert np.abs(delta).max() < 1e-8


def test_nmc811_cell_is_8_1_1():
    counts = {s: nmc811().get_chemical_symbols().count(s) for s in ("Ni", "Co", "Mn", "Li", "O")}
    assert counts == {"Ni": 24, "Co": 3, "Mn": 3, "Li": 30, "O": 60}


def test_kpoints_follow_the_reciprocal_density(tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp.inputs import Kpoints

    atoms = nmc811()
    meshes = {}
    for density in (64, 300):
        order = write_inputs(atoms, tmp_path / str(density), kpoints_density=density)
        kpoints = Kpoints.from_file(tmp_path / str(density) / "KPOINTS")
        assert kpoints.style == Kpoints.supported_modes.Gamma
        structure = AseAtomsAdaptor.get_structure(atoms[order])
        expected = Kpoints.automatic_density_by_vol(structure, density, force_gamma=True)
        assert tuple(kpoints.kpts[0]) == tuple(expected.kpts[0])
        meshes[density] = np.array(kpoints.kpts[0])
    assert np.prod(meshes[300]) > np.prod(meshes[64])
    # Longest real-space axis (a = 5 x 2.87 A) gets the fewest divisions.
    assert meshes[300][0] <= meshes[300][1]


def test_kspacing_replaces_the_kpoints_file(tmp_path):
    from pymatgen.io.vasp.inputs import Incar

    write_inputs(li05nio2(), tmp_path / "run", kspacing=0.3)
    assert not (tmp_path / "run" / "KPOINTS").exists()
    assert Incar.from_file(tmp_path / "run" / "INCAR")["KSPACING"] == pytest.approx(0.3)


def test_every_incar_setting_can_be_overridden(tmp_path):
    from pymatgen.io.vasp.inputs import Incar

    write_inputs(nmc811(), tmp_path / "a", incar={"ENCUT": 600, "ISMEAR": -5, "ALGO": "Normal"}, nelm=150,
                 magmom={"Ni": 1.0})
    incar = Incar.from_file(tmp_path / "a" / "INCAR")
    assert (incar["ENCUT"], incar["ISMEAR"], incar["ALGO"], incar["NELM"]) == (600, -5, "Normal", 150)
    assert set(incar["MAGMOM"]) == {1.0, 0.6, 5.0}  # Ni 1.0, Co 0.6, Mn 5.0, Li/O 0.6
    write_inputs(nmc811(), tmp_path / "b", hubbard_u={})
    incar = Incar.from_file(tmp_path / "b" / "INCAR")
    assert incar["LDAU"] is False and "LDAUU" not in incar


def test_unknown_setting_is_a_setup_error():
    with pytest.raises(LabelingError, match="kpoint_density"):
        VaspSettings.from_mapping({"kpoint_density": 64})


def test_poscar_order_round_trip():
    symbols = ["O", "Li", "Ni", "O", "Li", "Co", "O"]
    order, species = poscar_order(symbols)
    assert species == ["O", "Li", "Ni", "Co"]
    grouped = [symbols[i] for i in order]
    assert grouped == ["O", "O", "O", "Li", "Li", "Ni", "Co"]
    assert unpermute(grouped, order) == symbols


# ------------------------------------------------------------------------- POTCAR
@pytest.mark.parametrize("layout", ["pymatgen", "flat"])
def test_potcar_is_assembled_in_poscar_species_order(layout, tmp_path):
    from pymatgen.io.vasp.inputs import Poscar

    atoms = nmc811()
    root = stand_in_potcars(tmp_path / "potcars", layout)
    settings = VaspSettings(potcar_dir=str(root))
    species = list(dict.fromkeys(atoms.get_chemical_symbols()))
    potcars = dict(zip(species, find_potcars(species, settings, potcar_root(settings, environ={}))))
    write_vasp_inputs(atoms, tmp_path / "run", settings, potcars)
    poscar_species = Poscar.from_file(tmp_path / "run" / "POSCAR").site_symbols
    text = (tmp_path / "run" / "POTCAR").read_text()
    titles = re.findall(r"TITEL\s*=\s*PAW_PBE (\S+)", text)
    assert titles == [EXPECTED_POTCAR[s] for s in poscar_species]
    assert text.count("End of Dataset") == len(poscar_species)


def test_potcar_dir_from_environment(tmp_path):
    root = stand_in_potcars(tmp_path / "psp", "flat")
    assert potcar_root(VaspSettings(), environ={"PMG_VASP_PSP_DIR": str(root)}) == root


def _labeler_that_must_not_run(tmp_path, **settings):
    marker = tmp_path / "vasp-was-run"
    command = f"{sys.executable} -c \"open({str(marker)!r}, 'w')\""
    return VaspLabeler({"command": command, **settings}), marker


def test_missing_potcar_dir_names_the_variable_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)
    labeler, marker = _labeler_that_must_not_run(tmp_path)
    with pytest.raises(LabelingError) as err:
        labeler.label([li05nio2()], [1], tmp_path / "work")
    assert "PMG_VASP_PSP_DIR" in str(err.value) and "potcar_dir" in str(err.value)

    labeler, marker = _labeler_that_must_not_run(tmp_path, potcar_dir=str(tmp_path / "nowhere"))
    with pytest.raises(LabelingError) as err:
        labeler.label([li05nio2()], [1], tmp_path / "work")
    assert str(tmp_path / "nowhere") in str(err.value) and "PMG_VASP_PSP_DIR" in str(err.value)
    assert not marker.exists()


def test_missing_potcar_file_names_the_path(tmp_path):
    root = stand_in_potcars(tmp_path / "potcars", "pymatgen")
    shutil.rmtree(root / "POT_GGA_PAW_PBE_54" / "Mn_pv")
    labeler, marker = _labeler_that_must_not_run(tmp_path, potcar_dir=str(root))
    with pytest.raises(LabelingError) as err:
        labeler.label([li05nio2(), nmc811()], [1, 2], tmp_path / "work")
    message = str(err.value)
    assert str(root / "POT_GGA_PAW_PBE_54" / "Mn_pv" / "POTCAR") in message
    assert "PMG_VASP_PSP_DIR" in message and "potcar_dir" in message
    assert not marker.exists() and not (tmp_path / "work").exists()


def test_missing_command_is_a_setup_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_COMMAND", raising=False)
    root = stand_in_potcars(tmp_path / "potcars", "flat")
    with pytest.raises(LabelingError, match="`command`"):
        VaspLabeler({"potcar_dir": str(root)}).label([li05nio2()], [1], tmp_path / "work")
    with pytest.raises(LabelingError, match="not on PATH"):
        VaspLabeler({"potcar_dir": str(root), "command": "no-such-vasp-binary -n 4"}).label(
            [li05nio2()], [1], tmp_path / "work")


# ---------------------------------------------- VASP 6 on-the-fly machine learning
# OUTCAR.ch4.ml: VASP 6 MD of CH4 (NSW = 10, PSTRESS = 1 kB) with ML_LMLFF = .TRUE. Every ionic
# step prints the force field's prediction first ("ML" blocks); steps 1, 2, 3 and 6 then ran
# DFT. Values below were read off the file by hand ("free  energy   TOTEN" lines and the
# "TOTAL-FORCE (eV/Angst)" blocks without "(ML)").
ML_DFT_TOTEN = {1: -24.12709802, 2: -24.12724275, 3: -24.12737148, 6: -24.12697674}
ML_DFT_ENTHALPY = {1: -23.50294738, 2: -23.50301418, 3: -23.50307590, 6: -23.50252675}
ML_DFT_FORCES = {
    1: [[-0.020999, 0.037724, 0.054091], [0.071295, -0.008772, 0.003936], [-0.032029, -0.063643, 0.001782],
        [-0.014802, 0.031482, -0.059424], [-0.002097, 0.002870, -0.000339]],
    3: [[-0.003244, 0.002252, 0.005300], [0.019887, -0.006329, 0.001733], [0.003680, 0.006508, 0.000486],
        [-0.005964, 0.007259, -0.014990], [-0.013299, -0.010050, 0.007630]],
    6: [[0.024419, -0.049633, -0.069040], [-0.071515, -0.003306, -0.000696], [0.046633, 0.083639, -0.001086],
        [0.009183, -0.034893, 0.065236], [-0.007990, 0.004255, 0.005674]],
}
# Step 3's DFT "in kB" line (XX YY ZZ XY YZ ZX, pressure sign); its ML prediction printed +0.07148 ...
ML_STEP3_KB = (-0.14701, -0.11335, -0.14239, 0.01982, 0.00854, -0.00669)


def test_mlff_outcar_tells_dft_steps_from_predicted_ones():
    steps = parse_outcar((DATA / "OUTCAR.ch4.ml").read_text())
    assert [s.index for s in steps] == list(range(1, 11))  # each ionic step once
    assert [s.index for s in steps if s.source == "dft"] == [1, 2, 3, 6]
    for s in steps:
        if s.source == "ml":
            assert not s.converged and "machine-learned force field" in s.reason
            assert s.magmoms is None and s.n_electronic_steps == 0
        else:
            assert s.converged and s.n_electronic_steps > 0, s.reason


def test_mlff_outcar_energies_are_toten_without_pv_and_forces_of_the_same_step():
    by = {s.index: s for s in parse_outcar((DATA / "OUTCAR.ch4.ml").read_text())}
    for k, toten in ML_DFT_TOTEN.items():
        assert by[k].energy == toten and by[k].energy != ML_DFT_ENTHALPY[k]
    for k, forces in ML_DFT_FORCES.items():
        np.testing.assert_array_equal(by[k].forces, forces)
    # step 6's force-field prediction (printed before its DFT) is not what comes back
    assert by[6].forces[0] != (0.018774, -0.046009, -0.053197)


def test_mlff_outcar_stress_is_the_dft_one_in_ase_units_and_sign():
    from ase.units import GPa

    step3 = {s.index: s for s in parse_outcar((DATA / "OUTCAR.ch4.ml").read_text())}[3]
    xx, yy, zz, xy, yz, zx = ML_STEP3_KB
    expected = -0.1 * GPa * np.array([xx, yy, zz, yz, zx, xy])  # ASE: Voigt order, tensile positive
    np.testing.assert_allclose(step3.stress, expected, rtol=1e-12)
    assert all(v > 0 for v in step3.stress[:3])  # VASP's negative pressure is tension


def _with_ml_steps(xml: str, after_calculation: int, ml_last: bool = False) -> str:
    """vasprun.h2o.md.xml as VASP 6 writes it with ML_LMLFF: the flag in the incar block and
    force-field steps outside <calculation> (unnamed structure, forces, stress, energy)."""
    xml = xml.replace("<incar>", '<incar>\n  <i type="logical" name="ML_LMLFF"> T  </i>', 1)
    calcs = [i for i in range(len(xml)) if xml.startswith("</calculation>", i)]
    start = xml.index("<calculation>")
    end = xml.index("</calculation>", start)
    calc = xml[start:end]
    structure = calc[calc.index("<structure>"):calc.index("</structure>") + len("</structure>")]
    forces = calc[calc.index('<varray name="forces" >'):]
    forces = forces[:forces.index("</varray>") + len("</varray>")]
    ml_block = f"\n {structure}\n {forces}\n <energy>\n  <i name=\"e_fr_energy\"> -1.0 </i>\n </energy>\n"
    if ml_last:
        cut = xml.index("</modeling>") if "</modeling>" in xml else len(xml)
        return xml[:cut] + ml_block + xml[cut:]
    at = calcs[after_calculation - 1] + len("</calculation>")
    return xml[:at] + ml_block + xml[at:]


def test_mlff_vasprun_steps_outside_calculations_are_not_dft():
    xml = (DATA / "vasprun.h2o.md.xml").read_text()
    steps = parse_vasprun_xml(_with_ml_steps(xml, after_calculation=1))
    assert [s.source for s in steps] == ["dft", "ml", "dft", "dft"]
    assert [s.index for s in steps] == [1, 2, 3, 4]
    plain = parse_vasprun_xml(xml)
    assert [s.energy for s in steps if s.source == "dft"] == [s.energy for s in plain]
    last = parse_vasprun_xml(_with_ml_steps(xml, 0, ml_last=True))[-1]
    assert last.source == "ml" and not last.converged


def test_mlff_vasprun_calculation_without_electronic_loop_is_not_dft():
    xml = _with_ml_steps((DATA / "vasprun.h2o.md.xml").read_text(), after_calculation=1)
    first = xml.index("<calculation>")
    scf_end = xml.rindex("</scstep>", first, xml.index("</calculation>", first)) + len("</scstep>")
    stripped = xml[:first] + "<calculation>" + xml[scf_end:]
    assert parse_vasprun_xml(stripped)[0].source == "ml"


# ----------------------------------------------------------- run path, fake VASP
# Stands in for VASP: checks its inputs, logs the INCAR it saw, writes canned real outputs.
FAKE_VASP = r'''
import json, pathlib, re, shutil, sys, time
modes, data = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2])
cwd = pathlib.Path.cwd()
mode = modes.get(cwd.name, modes.get("*"))
for name in ("INCAR", "POSCAR", "POTCAR", "KPOINTS"):
    if not (cwd / name).is_file():
        sys.exit(f"fake vasp: no {name} in {cwd}")
incar = (cwd / "INCAR").read_text()
with open(cwd.parent / "calls.jsonl", "a") as log:
    log.write(json.dumps({"dir": cwd.name, "mode": mode, "incar": incar}) + "\n")
retry = re.search(r"^\s*ALGO\s*=\s*All\s*$", incar, re.M | re.I) is not None
outcar = (data / "OUTCAR.ch4.unconverged").read_text()
step2 = outcar.rindex("\n", 0, outcar.index("Iteration      2(   1)")) + 1
(cwd / "WAVECAR").write_bytes(b"\0" * 1024)
if mode == "converges-on-retry":
    (cwd / "OUTCAR").write_text(outcar if retry else outcar[:step2])
elif mode == "never-converges":
    (cwd / "OUTCAR").write_text(outcar[:step2])
elif mode == "mlff":  # a run with ML_LMLFF on: its last ionic step is the force field's
    shutil.copy(data / "OUTCAR.ch4.ml", cwd / "OUTCAR")
elif mode == "mlff-first-step":  # the same run cut after ionic step 1 (a DFT step, PSTRESS = 1 kB)
    ml = (data / "OUTCAR.ch4.ml").read_text()
    second = ml.index("ML FORCE on cell", ml.index("ML FORCE on cell") + 1)
    (cwd / "OUTCAR").write_text(ml[:second])
elif mode == "h2o":
    shutil.copy(data / "vasprun.h2o.md.xml", cwd / "vasprun.xml")
elif mode == "nan":
    i = outcar.rindex("free  energy   TOTEN")
    (cwd / "OUTCAR").write_text(outcar[:i] + "free  energy   TOTEN  =        NaN " + outcar[outcar.index("eV", i):])
elif mode == "crash":
    print("fake vasp: internal error", flush=True)
    sys.exit(3)
elif mode == "hang":
    time.sleep(60)
'''


@pytest.fixture
def fake_vasp(tmp_path):
    script = tmp_path / "fake_vasp.py"
    script.write_text(FAKE_VASP)
    root = stand_in_potcars(tmp_path / "potcars", "pymatgen")

    def make(modes: dict, **settings):
        command = f"{sys.executable} {script} '{json.dumps(modes)}' {DATA}"
        return VaspLabeler({"command": command, "potcar_dir": str(root), **settings})

    return make


def calls(workdir: Path) -> list[dict]:
    path = workdir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def methane_shuffled():
    """CH4 of the canned OUTCAR with C moved to second place; ``perm[i]`` = canned index."""
    canned = read(DATA / "OUTCAR.ch4.unconverged", index=-1)
    perm = [0, 4, 1, 2, 3]
    return canned[perm], canned, perm


def test_scf_failure_is_retried_with_safer_settings(fake_vasp, tmp_path):
    atoms, canned, perm = methane_shuffled()
    work = tmp_path / "work"
    (label,) = fake_vasp({"*": "converges-on-retry"}).label([atoms], [7], work)
    assert label.status == "ok", label.reason
    assert label.energy == pytest.approx(canned.get_potential_energy(force_consistent=True), abs=1e-8)
    np.testing.assert_allclose(label.forces, canned.get_forces()[perm], atol=1e-8)
    assert label.wall_s > 0

    first, second = calls(work)
    assert re.search(r"^NELM = 100$", first["incar"], re.M) and not re.search(r"ALGO = All", first["incar"])
    for tag in ("ALGO = All", "NELM = 200", "AMIX = 0.1", "BMIX = 0.01"):
        assert re.search(rf"^{tag}$", second["incar"], re.M), tag
    rundir = work / "7"
    for name in ("INCAR", "KPOINTS", "POSCAR", "OUTCAR", "vasp.out"):
        assert (rundir / name).is_file() and (rundir / "attempt-1" / name).is_file(), name
    assert not (rundir / "WAVECAR").exists()
    assert "NELM=15 in ionic step 1" in parse_vasp_outputs(rundir / "attempt-1")[-1].reason


def test_scf_that_never_converges_gives_a_failed_label(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    work = tmp_path / "work"
    (label,) = fake_vasp({"*": "never-converges"}).label([atoms], [3], work)
    assert label.status == "failed" and label.energy is None
    assert "SCF not converged: electronic loop stopped at NELM=15 in ionic step 1" in label.reason
    assert "retry with ALGO=All" in label.reason and str(work / "3") in label.reason
    assert len(calls(work)) == 2


def test_no_retry_when_disabled(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    (label,) = fake_vasp({"*": "never-converges"}, scf_retry=False).label([atoms], [3], tmp_path / "w")
    assert label.status == "failed" and "NELM=15" in label.reason and "after a retry" not in label.reason
    assert len(calls(tmp_path / "w")) == 1


def test_one_crash_does_not_lose_the_batch(fake_vasp, tmp_path):
    water = read(DATA / "vasprun.h2o.md.xml", index=-1)
    atoms, _, _ = methane_shuffled()
    work = tmp_path / "work"
    labels = fake_vasp({"1": "crash", "*": "h2o"}).label([atoms, water], [1, 2], work)
    assert [l.structure_id for l in labels] == [1, 2]
    assert labels[0].status == "failed"
    assert "exited with code 3" in labels[0].reason and "internal error" in labels[0].reason
    assert labels[1].status == "ok"
    assert labels[1].energy == pytest.approx(water.get_potential_energy(force_consistent=True), abs=1e-8)
    np.testing.assert_allclose(labels[1].forces, water.get_forces(), atol=1e-8)
    np.testing.assert_allclose(labels[1].stress, water.get_stress(), atol=1e-10)
    assert [c["dir"] for c in calls(work)] == ["1", "2"]  # a crash is not an SCF failure: no retry


def test_timeout_kills_the_run(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    t0 = time.time()
    (label,) = fake_vasp({"*": "hang"}, timeout_s=1).label([atoms], [5], tmp_path / "w")
    assert time.time() - t0 < 20
    assert label.status == "failed" and "did not finish within 1 s" in label.reason


def test_nan_energy_becomes_a_failed_label(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    (label,) = fake_vasp({"*": "nan"}).label([atoms], [9], tmp_path / "w")
    assert label.status == "failed" and label.energy is None
    assert "invalid label" in label.reason and "nan" in label.reason


def test_a_run_that_ends_on_a_force_field_step_gives_no_label(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    work = tmp_path / "work"
    (label,) = fake_vasp({"*": "mlff"}).label([atoms], [4], work)
    assert label.status == "failed" and label.energy is None and label.forces is None
    assert "ionic step 10 was predicted by VASP's machine-learned force field" in label.reason
    assert "ML_LMLFF = .FALSE." in label.reason
    assert len(calls(work)) == 1  # not an SCF failure: no retry


def test_a_dft_step_with_pstress_labels_the_free_energy_not_the_enthalpy(fake_vasp, tmp_path):
    atoms, _, _ = methane_shuffled()
    (label,) = fake_vasp({"*": "mlff-first-step"}).label([atoms], [4], tmp_path / "w")
    assert label.status == "ok", label.reason
    assert label.energy == ML_DFT_TOTEN[1]
    order = poscar_order(atoms.get_chemical_symbols())[0]
    np.testing.assert_array_equal(label.forces, unpermute([tuple(f) for f in ML_DFT_FORCES[1]], order))


def test_a_rerun_repeats_no_vasp_run_but_a_crash(fake_vasp, tmp_path):
    """The label journal (remote_al.label_journal) through the task: the same request run
    again repeats neither a label nor an SCF failure (both decided by the structure), but
    runs again a crash without an ionic step (it may have been the kill of the task)."""
    from remote_al.functions import label_structures
    from remote_al.records import LabelRequest
    from remote_al.structures import to_extxyz

    water = read(DATA / "vasprun.h2o.md.xml", index=-1)
    atoms, _, _ = methane_shuffled()
    work = tmp_path / "work"
    settings = fake_vasp({"1": "crash", "2": "never-converges", "*": "h2o"}).settings
    req = LabelRequest("label-vasp", str(work), "vasp", (1, 2, 3), to_extxyz([atoms, atoms, water]), settings)
    first = label_structures(req)
    assert [l["status"] for l in first["labels"]] == ["failed", "failed", "ok"] and first["reused"] == 0
    assert [c["dir"] for c in calls(work)] == ["1", "2", "2", "3"]  # 2 was retried
    again = label_structures(req)
    assert [c["dir"] for c in calls(work)][4:] == ["1"]
    assert again["reused"] == 2 and again["labels"][1:] == first["labels"][1:]
    assert "exited with code 3" in again["labels"][0]["reason"]


def test_registry_builds_the_vasp_labeler():
    labeler = get_labeler("vasp", {"kpoints_density": 100})
    assert isinstance(labeler, VaspLabeler) and "VASP" in labeler.note


# ------------------------------------------------------------------ real VASP
HAVE_VASP = bool(os.environ.get("VASP_COMMAND")) and bool(os.environ.get("PMG_VASP_PSP_DIR"))


@pytest.mark.vasp
@pytest.mark.skipif(not HAVE_VASP, reason="needs a VASP executable (VASP_COMMAND) and POTCARs (PMG_VASP_PSP_DIR); "
                                          "the fake-VASP tests above cover the same run path here")
def test_real_vasp_labels_a_small_cell(tmp_path):
    """On a machine with VASP: one LiNiO2 primitive cell at coarse settings gives a
    converged, finite label with forces summing to ~0."""
    from remote_al.structures import layered_limo2, perturb

    atoms = perturb(layered_limo2(metal="Ni", supercell=(1, 1, 1), primitive=True), 0.03, 0.0,
                    np.random.default_rng(0))
    labeler = VaspLabeler({"kpoints_density": 100, "incar": {"ENCUT": 400, "EDIFF": 1e-4}, "timeout_s": 3600})
    (label,) = labeler.label([atoms], [1], tmp_path / "work")
    assert label.status == "ok", label.reason
    assert np.isfinite(label.energy) and np.all(np.isfinite(label.forces))
    assert np.abs(np.sum(label.forces, axis=0)).max() < 0.05
