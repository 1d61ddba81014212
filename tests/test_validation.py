"""Every bad input is stopped before any work (issue #18, part 2).

Each case is a real campaign TOML file (and, where it needs one, a real structure file:
POSCAR, extxyz, CIF) written to tmp_path and run through the real CLI entry point,
``remote-al run``. Each must exit with status 2 and one message that names the file and the
field (with the user's [[structures]] index), print no traceback, and create no campaign
state; where a campaign directory with a state.sqlite exists already, its bytes stay as
they were. The backend is replaced by one that fails the test: a case that validation lets
through would otherwise start work.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from driver.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "campaign": 'name = "v"\ntype_map = ["Li", "Ni", "O"]\nmax_rounds = 1',
}
ONE = ['name = "LNO"']
# entry 0 expands into three structures, so entry 1 is the fourth structure
GRID = ['name = "LNO"\nli_contents = [1.0, 0.75, 0.5]']


def _poscar(cell, positions, symbols=("Li", "Li"), coords="Cartesian") -> str:
    species = list(dict.fromkeys(symbols))
    lines = ["bad structure", "1.0", *(" ".join(str(x) for x in row) for row in cell),
             " ".join(species), " ".join(str(symbols.count(s)) for s in species), coords]
    return "\n".join(lines + [" ".join(str(x) for x in p) for p in positions]) + "\n"


CUBE = [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
FLAT = [[4, 0, 0], [0, 4, 0], [4, 4, 0]]  # coplanar vectors: zero volume


def _extxyz(lattice: str, rows: list[str], pbc: str = "T T T") -> str:
    return (f"{len(rows)}\nLattice=\"{lattice}\" Properties=species:S:1:pos:R:3 pbc=\"{pbc}\"\n"
            + "\n".join(rows) + "\n")


def _written(atoms, fmt: str) -> bytes:
    """The file ASE writes for ``atoms`` in format ``fmt``."""
    from io import BytesIO, StringIO

    from ase.io import write

    buf = BytesIO() if fmt == "cif" else StringIO()  # ASE's CIF writer writes bytes, extxyz text
    write(buf, atoms, format=fmt)
    value = buf.getvalue()
    return value if isinstance(value, bytes) else value.encode()


def _cif_overlapping() -> bytes:
    from ase import Atoms

    return _written(Atoms("Li2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[4, 4, 4], pbc=True), "cif")


def _licoo2() -> bytes:
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    atoms.symbols[:] = ["Li", "Co", "O", "O"]
    return _written(atoms, "extxyz")


def _too_many_atoms() -> bytes:
    from ase.build import bulk

    return _written(bulk("Li", "bcc", a=3.5, cubic=True) * (15, 15, 12), "extxyz")  # 5400 atoms


def _file_entry(name: str) -> str:
    return f'name = "s"\ngenerator = "file"\nfile = "{name}"'


@dataclass
class Case:
    id: str
    field: str  # must appear in the message
    sections: dict = field(default_factory=dict)  # section -> TOML body (replaces BASE's)
    structures: list | None = None  # [[structures]] bodies (default ONE)
    files: dict = field(default_factory=dict)  # name -> text, bytes or a function giving text
    raw: bytes | None = None  # the campaign file itself, as given
    argv: tuple = ()
    existing: bool = False  # a campaign with a state.sqlite exists already


CASES = [
    # ------------------------------------------------------------ the file itself
    Case("toml-syntax", "c.toml", raw=b'[campaign\nname = "v"\n'),
    Case("toml-binary", "c.toml", raw=bytes(range(256)) * 4),
    Case("toml-empty", "campaign", raw=b""),
    Case("unknown-section", "trainnig", sections={"trainnig": "numb_steps = 10"}),
    Case("no-structures", "structures", structures=[]),
    # ------------------------------------------------------------------ [campaign]
    Case("campaign-unknown-key", "campaign.nmae", sections={"campaign": BASE["campaign"] + '\nnmae = "x"'}),
    Case("campaign-name-slash", "campaign.name", sections={"campaign": 'name = "a/b"\ntype_map = ["Li", "Ni", "O"]'}),
    Case("type-map-empty", "campaign.type_map", sections={"campaign": 'name = "v"\ntype_map = []'}),
    Case("type-map-unknown", "campaign.type_map", sections={"campaign": 'name = "v"\ntype_map = ["Li", "Ni", "Xx"]'}),
    Case("type-map-twice", "campaign.type_map", sections={"campaign": 'name = "v"\ntype_map = ["Li", "Ni", "O", "O"]'}),
    Case("type-map-missing-metal", "campaign.type_map", sections={"campaign": 'name = "v"\ntype_map = ["Li", "O"]'}),
    Case("seed-negative", "campaign.seed", sections={"campaign": BASE["campaign"] + "\nseed = -1"}),
    Case("seed-huge", "campaign.seed", sections={"campaign": BASE["campaign"] + "\nseed = 1099511627776"}),
    Case("max-rounds-zero", "campaign.max_rounds", sections={"campaign": 'name = "v"\ntype_map = ["Li", "Ni", "O"]\nmax_rounds = 0'}),
    Case("max-rounds-text", "campaign.max_rounds", sections={"campaign": 'name = "v"\ntype_map = ["Li", "Ni", "O"]\nmax_rounds = "2"'}),
    Case("label-budget-negative", "campaign.max_label_calls", sections={"campaign": BASE["campaign"] + "\nmax_label_calls = -5"}),
    Case("wall-hours-nan", "campaign.max_wall_hours", sections={"campaign": BASE["campaign"] + "\nmax_wall_hours = nan"}),
    Case("wall-hours-inf", "campaign.max_wall_hours", sections={"campaign": BASE["campaign"] + "\nmax_wall_hours = inf"}, existing=True),
    # ------------------------------------------------------------------- [backend]
    Case("gpu-slots-million", "backend.gpu_slots", sections={"backend": "gpu_slots = 1000000"}),
    Case("cpu-slots-zero", "backend.cpu_slots", sections={"backend": "cpu_slots = 0"}),
    Case("backend-kind", "backend.kind", sections={"backend": 'kind = "cloud"'}),
    Case("globus-without-team", "backend.team", sections={"backend": 'kind = "globus"'}),
    Case("backoff-minus-inf", "backend.retry_backoff_s", sections={"backend": "retry_backoff_s = -inf"}),
    Case("attempts-bool", "backend.max_attempts", sections={"backend": "max_attempts = true"}),
    Case("team-file-missing", "team.toml", sections={"backend": 'kind = "globus"\nteam = "team.toml"'}),
    Case("team-file-binary", "team.toml", sections={"backend": 'kind = "globus"\nteam = "{tmp}/team.toml"'},
         files={"team.toml": bytes(range(128, 256)) * 4}),
    # -------------------------------------------------------------- [[structures]]
    Case("structure-unknown-key", "structures[1].generatr", structures=GRID + ['name = "b"\ngeneratr = "file"']),
    Case("li-content-above-one", "structures[0].li_content", structures=['name = "a"\nli_content = 1.5']),
    Case("li-contents-nan", "structures[0].li_contents[1]", structures=['name = "a"\nli_contents = [1.0, nan]']),
    Case("supercell-two", "structures[0].supercell", structures=['name = "a"\nsupercell = [2, 2]']),
    Case("supercell-huge", "structures[0].supercell[0]", structures=['name = "a"\nsupercell = [100, 100, 100]']),
    Case("orderings-billion", "structures[0].orderings", structures=['name = "a"\norderings = 1000000000']),
    Case("temperature-negative-after-grid", "structures[1].temperatures_K[1]",
         structures=GRID + ['name = "b"\ntemperatures_K = [300.0, -1.0]']),
    Case("structure-frames-billion", "structures[0].n_frames", structures=['name = "a"\nn_frames = 1000000000']),
    Case("structure-steps-2^63", "structures[0].steps", structures=['name = "a"\nsteps = 9223372036854775807']),
    Case("structure-ensemble", "structures[0].ensemble", structures=['name = "a"\nensemble = "nve"']),
    Case("duplicate-name", "structures[1].name", structures=['name = "a"', 'name = "a"']),
    Case("duplicate-expanded-name", "structures[1].name", structures=GRID + ['name = "LNO-x0.5"']),
    Case("metal-unknown", "structures[1].metal", structures=GRID + ['name = "b"\nmetal = "Qq"']),
    Case("metals-sum", "structures[0].metals", structures=['name = "a"\nmetals = {Ni = 0.5}']),
    Case("metals-nan", "structures[0].metals", structures=['name = "a"\nmetals = {Ni = nan}']),
    Case("file-without-path", "structures[1].file", structures=ONE + ['name = "s"\ngenerator = "file"']),
    Case("file-missing", "structures[1].file", structures=GRID + [_file_entry("nowhere.vasp")]),
    Case("file-empty", "structures[1].file", structures=GRID + [_file_entry("empty.vasp")], files={"empty.vasp": ""}),
    Case("file-binary", "structures[1].file", structures=GRID + [_file_entry("garbage.vasp")],
         files={"garbage.vasp": bytes(range(256)) * 8}, existing=True),
    Case("file-binary-xyz", "structures[1].file", structures=GRID + [_file_entry("garbage.xyz")],
         files={"garbage.xyz": b"\x00\x01\x02" * 500}),
    Case("file-garbage-text", "structures[1].file", structures=ONE + [_file_entry("broken.vasp")],
         files={"broken.vasp": "this is not a POSCAR\n1 2 3\n"}),
    Case("file-is-directory", "structures[1].file", structures=ONE + [_file_entry("adir")], files={"adir": None}),
    Case("poscar-overlapping", "structures[1].file", structures=GRID + [_file_entry("overlap.vasp")],
         files={"overlap.vasp": _poscar(CUBE, [[0, 0, 0], [0, 0, 0.3]])}, existing=True),
    Case("poscar-same-site", "structures[1].file", structures=ONE + [_file_entry("same.vasp")],
         files={"same.vasp": _poscar(CUBE, [[1, 1, 1], [1, 1, 1]])}),
    Case("extxyz-overlapping", "structures[2].file", structures=ONE + ['name = "b"'] + [_file_entry("overlap.extxyz")],
         files={"overlap.extxyz": _extxyz("4 0 0 0 4 0 0 0 4", ["Li 0 0 0", "Li 0.5 0 0"])}),
    Case("cif-overlapping", "structures[1].file", structures=GRID + [_file_entry("overlap.cif")],
         files={"overlap.cif": _cif_overlapping}),
    Case("poscar-nan", "structures[1].file", structures=GRID + [_file_entry("nan.vasp")],
         files={"nan.vasp": _poscar(CUBE, [[0, 0, 0], ["nan", 0, 2]])}),
    Case("poscar-inf", "structures[1].file", structures=ONE + [_file_entry("inf.vasp")],
         files={"inf.vasp": _poscar(CUBE, [[0, 0, 0], ["inf", 0, 2]])}),
    Case("extxyz-nan", "structures[1].file", structures=ONE + [_file_entry("nan.extxyz")],
         files={"nan.extxyz": _extxyz("4 0 0 0 4 0 0 0 4", ["Li 0 0 0", "Li nan 0 2"])}),
    Case("poscar-zero-volume", "structures[1].file", structures=GRID + [_file_entry("flat.vasp")],
         files={"flat.vasp": _poscar(FLAT, [[0, 0, 0], [0.5, 0.5, 0.5]], coords="Direct")}, existing=True),
    Case("extxyz-zero-volume", "structures[1].file", structures=ONE + [_file_entry("flat.extxyz")],
         files={"flat.extxyz": _extxyz("4 0 0 0 4 0 4 4 0", ["Li 0 0 0", "Li 2 2 0"])}),
    Case("poscar-zero-cell", "structures[1].file", structures=ONE + [_file_entry("zero.vasp")],
         files={"zero.vasp": _poscar([[0, 0, 0]] * 3, [[0, 0, 0], [0, 0, 2]])}),
    Case("xyz-not-periodic", "structures[1].file", structures=ONE + [_file_entry("molecule.xyz")],
         files={"molecule.xyz": "2\n\nLi 0 0 0\nLi 0 0 2.6\n"}),
    Case("file-element-not-in-type-map", "campaign.type_map", structures=ONE + [_file_entry("LiCoO2.extxyz")],
         files={"LiCoO2.extxyz": _licoo2}),
    Case("file-too-many-atoms", "structures[1].file", structures=ONE + [_file_entry("big.extxyz")],
         files={"big.extxyz": _too_many_atoms}),
    Case("file-with-li-grid", "structures[0].li_contents",
         structures=['name = "s"\ngenerator = "file"\nfile = "x.vasp"\nli_contents = [1.0, 0.5]']),
    Case("layered-filtered-by-min-distance", "selection.min_distance_A", sections={"selection": "min_distance_A = 4.0"}),
    Case("layered-cell-too-long", "structures[1].supercell", structures=ONE + ['name = "tall"\nsupercell = [1, 1, 13]']),
    # -------------------------------------------------------------------- [initial]
    Case("rattle-huge", "initial.rattle_A", sections={"initial": "rattle_A = 5.0"}),
    Case("initial-billion", "initial.n_per_structure", sections={"initial": "n_per_structure = 1000000000"}),
    Case("every-initial-frame-filtered", "initial.rattle_A",
         sections={"initial": "rattle_A = 0.5", "selection": "min_distance_A = 1.95"}),
    # ---------------------------------------------------------------- [exploration]
    Case("steps-2^63", "exploration.steps", sections={"exploration": "steps = 9223372036854775807"}),
    Case("steps-typo", "exploration.stepz", sections={"exploration": "stepz = 10"}),
    Case("timestep-nan", "exploration.timestep_fs", sections={"exploration": "timestep_fs = nan"}),
    Case("temperatures-empty", "exploration.temperatures_K", sections={"exploration": "temperatures_K = []"}),
    Case("temperature-inf", "exploration.temperatures_K[1]", sections={"exploration": "temperatures_K = [300.0, inf]"}),
    Case("walkers-million", "exploration.walkers", sections={"exploration": "walkers = 1000000"}),
    Case("frames-billion", "exploration.n_frames", sections={"exploration": "n_frames = 1000000000"}),
    Case("pressure-absurd", "exploration.pressures_GPa[0]", sections={"exploration": 'ensemble = "npt"\npressures_GPa = [1e6]'}),
    Case("md-engine", "exploration.engine", sections={"exploration": 'engine = "gromacs"'}),
    Case("sweep-too-large", "exploration.walkers",
         structures=GRID, sections={"exploration": "walkers = 1000\ntemperatures_K = ["
                                    + ", ".join(str(300.0 + k) for k in range(50)) + "]"}),
    # ------------------------------------------------------------------ [selection]
    Case("threshold-nan", "selection.force_threshold", sections={"selection": "force_threshold = nan"}, existing=True),
    Case("threshold-typo", "selection.force_treshold", sections={"selection": "force_treshold = 0.1"}),
    Case("upper-below-threshold", "selection.force_upper", sections={"selection": "force_threshold = 0.2\nforce_upper = 0.1"}),
    Case("confidence-one", "selection.confidence", sections={"selection": "confidence = 1.0"}),
    Case("per-round-zero", "selection.max_per_round", sections={"selection": "max_per_round = 0"}),
    Case("threshold-mode", "selection.force_threshold_mode", sections={"selection": 'force_threshold_mode = "auto"'}),
    # -------------------------------------------------------------------- [labeler]
    Case("labeler-kind", "labeler.kind", sections={"labeler": 'kind = "dft"'}),
    Case("batch-ten-million", "labeler.batch_size", sections={"labeler": "batch_size = 10000000"}),
    Case("chgnet-setting-typo", "labeler.settings.devise", sections={"labeler": '[labeler.settings]\ndevise = "cpu"'}),
    Case("chgnet-threads-zero", "labeler.settings.threads", sections={"labeler": "settings = {threads = 0}"}),
    Case("chgnet-device", "labeler.settings.device", sections={"labeler": 'settings = {device = "gpu0"}'}),
    Case("vasp-mlff-on", "labeler.settings.incar.ML_LMLFF",
         sections={"labeler": 'kind = "vasp"\n[labeler.settings.incar]\nENCUT = 520\nML_LMLFF = true'}, existing=True),
    Case("vasp-ml-mode", "labeler.settings.incar.ML_MODE",
         sections={"labeler": 'kind = "vasp"\n[labeler.settings.incar]\nML_MODE = "train"'}),
    Case("vasp-retry-mlff", "labeler.settings.retry_incar.ML_LMLFF",
         sections={"labeler": 'kind = "vasp"\n[labeler.settings.retry_incar]\nML_LMLFF = ".TRUE."'}),
    Case("vasp-nelm-text", "labeler.settings.nelm", sections={"labeler": 'kind = "vasp"\nsettings = {nelm = "60"}'}),
    Case("vasp-kspacing-nan", "labeler.settings.kspacing", sections={"labeler": 'kind = "vasp"\nsettings = {kspacing = nan}'}),
    Case("vasp-setting-typo", "labeler.settings.potcar_directory",
         sections={"labeler": 'kind = "vasp"\nsettings = {potcar_directory = "/x"}'}),
    Case("vasp-hubbard-text", "labeler.settings.hubbard_u.Ni",
         sections={"labeler": 'kind = "vasp"\nsettings = {hubbard_u = {Ni = "6.2"}}'}),
    Case("gpaw-ecut-negative", "labeler.settings.ecut", sections={"labeler": 'kind = "gpaw"\nsettings = {ecut = -1.0}'}),
    Case("gpaw-kpts-two", "labeler.settings.kpts", sections={"labeler": 'kind = "gpaw"\nsettings = {kpts = [2, 2]}'}),
    Case("vasp-relax", "initial.relax", sections={"labeler": 'kind = "vasp"', "initial": "relax = true"}),
    # ------------------------------------------------------------------- [training]
    Case("ensemble-of-one", "training.ensemble_size", sections={"training": "ensemble_size = 1"}),
    Case("ensemble-billion", "training.ensemble_size", sections={"training": "ensemble_size = 1000000000"}),
    Case("train-steps-2^63", "training.numb_steps", sections={"training": "numb_steps = 9223372036854775807"}),
    Case("subset-zero", "training.subset_fraction", sections={"training": "subset_fraction = 0.0"}),
    Case("deepmd-not-a-table", "training.deepmd", sections={"training": "deepmd = 3"}),
    Case("deepmd-loss-typo", "training.deepmd.loss", sections={"training": "[training.deepmd.loss]\nstart_pref_q = 1.0"}),
    Case("deepmd-descriptor", "training.deepmd.model.descriptor",
         sections={"training": '[training.deepmd.model.descriptor]\ntype = "se_zz"'}, existing=True),
    Case("deepmd-type", "training.deepmd.learning_rate",
         sections={"training": '[training.deepmd.learning_rate]\nstart_lr = "fast"'}),
    Case("continue-prefactors", "training.continue_prefactors", sections={"training": 'continue_prefactors = "reset"'}),
    Case("deepmd-continue-typo", "training.deepmd_continue.loss",
         sections={"training": "[training.deepmd_continue.loss]\nstart_pref_q = 1.0"}),
    # ------------------------------------------------------ [steering] [test] [volume]
    Case("steering-mode", "steering.mode", sections={"steering": 'mode = "fast"'}),
    Case("lookahead-million", "steering.lookahead_rounds", sections={"steering": "lookahead_rounds = 1000000"}),
    Case("test-negative", "test.n_per_round", sections={"test": "n_per_round = -1"}),
    Case("volume-check-name", "volume.check", structures=GRID, sections={"volume": 'check = ["LNO-x9"]'}),
    Case("volume-fmax-zero", "volume.fmax", sections={"volume": "fmax = 0.0"}),
    Case("volume-without-layered", "volume", structures=[_file_entry("ok.vasp")], sections={"volume": ""},
         files={"ok.vasp": _poscar(CUBE, [[0, 0, 0], [2, 2, 2]])}),
    # ------------------------------------------------------------ command-line options
    Case("rounds-zero", "--rounds", argv=("--rounds", "0"), existing=True),
    Case("rounds-negative", "--rounds", argv=("--rounds", "-3")),
]


def _write_case(case: Case, tmp_path: Path) -> Path:
    for name, content in case.files.items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
            continue
        content = content() if callable(content) else content
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    toml = tmp_path / "c.toml"
    if case.raw is not None:
        toml.write_bytes(case.raw)
        return toml
    sections = {**BASE, **case.sections}
    text = "".join(f"[{name}]\n{body.replace('{tmp}', str(tmp_path))}\n\n" for name, body in sections.items())
    text += "".join(f"[[structures]]\n{body}\n\n" for body in (ONE if case.structures is None else case.structures))
    toml.write_text(text)
    return toml


def _existing_campaign(tmp_path: Path) -> Path:
    """A campaign directory with a real state.sqlite (and a results file) in it."""
    d = tmp_path / "campaigns" / "v"
    d.mkdir(parents=True)
    db = sqlite3.connect(d / "state.sqlite")
    db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES('phase', 'label')")
    db.commit()
    db.close()
    (d / "campaign.toml").write_text("# the file as run\n")
    return d


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def no_work(monkeypatch):
    """A backend that fails the test: validation must stop a bad file before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("validation let a bad campaign through: a backend was about to start")

    monkeypatch.setattr("driver.cli._backend_for", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_any_work(case, tmp_path, capsys, no_work):
    toml = _write_case(case, tmp_path)
    before = _snapshot(_existing_campaign(tmp_path)) if case.existing else None

    status = main(["run", str(toml), *case.argv])

    out, err = capsys.readouterr()
    assert status == 2, err
    assert "Traceback" not in out + err
    message = err.strip()
    assert message.startswith("error"), message
    assert len(message.splitlines()) == 1, message  # one message
    assert case.field in message, message
    named_file = "team.toml" if case.field == "team.toml" else str(toml)
    assert named_file in message, message  # the file it is about
    assert "fix:" in message or case.field in ("c.toml",), message
    campaign_dir = tmp_path / "campaigns" / "v"
    if before is None:
        assert not (tmp_path / "campaigns").exists()  # nothing was created
    else:
        assert _snapshot(campaign_dir) == before  # nothing already computed was changed


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60
    assert sum(c.existing for c in CASES) >= 5


def test_entry_index_survives_the_expansion(tmp_path):
    """The fourth structure comes from the second [[structures]] entry: it is named as that."""
    from driver.config import parse_config
    from driver.errors import ConfigError

    data = {"campaign": {"name": "v", "type_map": ["Li", "Ni", "O"]},
            "structures": [{"name": "LNO", "li_contents": [1.0, 0.75, 0.5]}, {"name": "b", "metal": "Qq"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=tmp_path)
    assert err.value.field == "structures[1].metal"
    good = parse_config({**data, "structures": data["structures"][:1] + [{"name": "b"}]}, base_dir=tmp_path)
    assert [s.entry for s in good.structures] == [0, 0, 0, 1]


def test_a_good_campaign_passes_every_check(tmp_path):
    from driver.config import load_config
    from driver.preflight import preflight

    toml = _write_case(Case("good", ""), tmp_path)
    assert preflight(load_config(toml)) == []


def test_without_deepmd_the_override_check_is_skipped_with_a_note(tmp_path, monkeypatch):
    from driver.config import load_config
    from driver.preflight import preflight

    monkeypatch.setitem(sys.modules, "deepmd.utils.argcheck", None)  # import -> ImportError
    toml = _write_case(Case("typo", "", sections={"training": "[training.deepmd.loss]\nstart_pref_q = 1.0"}), tmp_path)
    notes = preflight(load_config(toml))
    assert len(notes) == 1 and "DeePMD-kit is not importable" in notes[0] and "[training.deepmd]" in notes[0]


def test_deepmd_message_is_deepmds(tmp_path, capsys, no_work):
    toml = _write_case(Case("typo", "", sections={"training": "[training.deepmd.loss]\nstart_pref_q = 1.0"}), tmp_path)
    assert main(["run", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "training.deepmd.loss: DeePMD-kit's argument check: [at location `loss`] undefined key `start_pref_q`" in err


def test_did_you_mean(tmp_path, capsys, no_work):
    toml = _write_case(Case("typo", "", sections={"selection": "force_treshold = 0.1"}), tmp_path)
    assert main(["run", str(toml)]) == 2
    assert "did you mean 'force_threshold'?" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys, no_work):
    toml = _write_case(Case("nan", "", sections={"selection": "force_threshold = nan"}), tmp_path)
    assert main(["--debug", "run", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "selection.force_threshold: must be a finite number" in err


def test_vasp_settings_refuse_mlff_for_the_labeler_too():
    """The same check runs where the labeler reads its settings, before any VASP run."""
    from remote_al.labelers import LabelingError
    from remote_al.labelers.vasp_inputs import VaspSettings

    with pytest.raises(LabelingError, match="ML_LMLFF.*labels must be DFT"):
        VaspSettings.from_mapping({"incar": {"ML_LMLFF": True}})
    with pytest.raises(LabelingError, match="ml_mode"):
        VaspSettings.from_mapping({"incar": {"ml_mode": "run"}})
    assert VaspSettings.from_mapping({"incar": {"ML_LMLFF": False, "ML_MODE": "none"}}).incar["ML_MODE"] == "none"


@pytest.mark.parametrize("case_id", ["poscar-overlapping", "toml-binary", "vasp-mlff-on"])
def test_the_installed_command_exits_2_without_a_traceback(case_id, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    toml = _write_case(case, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "driver.cli", "run", str(toml)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert case.field in proc.stderr
    assert not (tmp_path / "campaigns").exists()


def test_schema_file_is_the_generated_one():
    from driver.config_schema import schema_text

    assert (ROOT / "docs" / "campaign.schema.json").read_text() == schema_text(), \
        "run `remote-al schema -o docs/campaign.schema.json`"


def test_validation_doc_has_the_generated_bounds_table():
    from driver.config_schema import bounds_table

    assert bounds_table() in (ROOT / "docs" / "validation.md").read_text(), \
        "paste `remote-al schema --bounds` into docs/validation.md"


def test_schema_validates_the_examples():
    import json
    import tomllib

    import jsonschema

    schema = json.loads((ROOT / "docs" / "campaign.schema.json").read_text())
    for name in ("linio2.toml", "delithiation.toml", "convergence.toml"):
        jsonschema.validate(tomllib.loads((ROOT / "examples" / name).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"campaign": {"name": "x", "type_map": ["Li"]}, "structures": [{"name": "a"}],
                             "training": {"ensemble_size": 10**9}}, schema)
