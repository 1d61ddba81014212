"""Bad campaign input fails before any work, naming the field and the fix."""

import copy
from pathlib import Path

import pytest

from driver.cli import main
from driver.config import load_config, parse_config
from driver.errors import ConfigError
from driver.preflight import preflight

GOOD = {
    "campaign": {"name": "t", "type_map": ["Li", "Ni", "O"], "max_rounds": 1},
    "structures": [{"name": "LiNiO2"}],
    "selection": {"force_threshold": 0.1},
}


def cfg(**patch):
    data = copy.deepcopy(GOOD)
    for dotted, value in patch.items():
        section, key = dotted.split("__")
        if section == "structures":
            data["structures"][0][key] = value
        else:
            data.setdefault(section, {})[key] = value
    return data


def test_good_config_parses(tmp_path):
    c = parse_config(cfg(), base_dir=tmp_path)
    assert c.campaign.workdir == str((tmp_path / "campaigns" / "t").resolve())
    assert c.training.ensemble_size == 4
    preflight(c)


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"exploration__stepz": 10}, "exploration.stepz", "unknown key"),
        ({"selection__force_threshold": -0.1}, "selection.force_threshold", "non-negative"),
        ({"training__ensemble_size": 1}, "training.ensemble_size", "at least 2"),
        ({"campaign__type_map": ["Li", "O"]}, "campaign.type_map", "'Ni'"),
        ({"campaign__type_map": ["Li", "Ni", "Xx"]}, "campaign.type_map", "unknown element"),
        ({"structures__metal": "Qq"}, "structures[0].metal", "unknown element"),
        ({"exploration__steps": "many"}, "exploration.steps", "integer"),
        ({"labeler__kind": "dft"}, "labeler.kind", '"dft" is not a valid choice (fix: use "chgnet", "gpaw" or "vasp")'),
        ({"selection__force_upper": 0.05}, "selection.force_upper", "must exceed"),
        ({"labeler__kind": "vasp", "initial__relax": True}, "initial.relax", "file entries"),
        ({"labeler__kind": "vasp", "initial__n_relaxed_per_structure": 4}, "initial.n_relaxed_per_structure",
         "file entries"),
        ({"labeler__kind": "vasp", "test__n_relaxed_per_structure": 4}, "test.n_relaxed_per_structure",
         "file entries"),
        ({"exploration__relax_steps": 0}, "exploration.relax_steps", "positive"),
    ],
)
def test_bad_values_name_the_field(tmp_path, patch, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config(cfg(**patch), base_dir=tmp_path)
    assert err.value.field == field
    assert words in str(err.value)


def test_unknown_section(tmp_path):
    data = cfg()
    data["trainnig"] = {}
    with pytest.raises(ConfigError, match="trainnig: unknown section"):
        parse_config(data, base_dir=tmp_path)


def test_unreadable_structure_file(tmp_path):
    bad = tmp_path / "broken.vasp"
    bad.write_text("this is not a POSCAR\n1 2 3\n")
    data = cfg(structures__generator="file", structures__file=str(bad))
    c = parse_config(data, base_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        preflight(c)
    assert err.value.field == "structures[0].file"
    assert "cannot read structure file" in str(err.value)


def test_structure_file_element_missing_from_type_map(tmp_path):
    from ase.build import bulk
    from ase.io import write

    path = tmp_path / "LiCoO2.xyz"
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    atoms.symbols[:] = ["Li", "Co", "O", "O"]
    write(path, atoms, format="extxyz")
    c = parse_config(cfg(structures__generator="file", structures__file=str(path)), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\['Co'\].*missing from the type map"):
        preflight(c)


def test_cli_refuses_bad_file_before_any_work(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(
        '[campaign]\nname = "x"\ntype_map = ["Li", "Ni", "O"]\n[[structures]]\nname = "a"\n'
        "[training]\nensemble_size = 1\n"
    )
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.ensemble_size" in err and "must be at least 2" in err and str(path) in err
    assert not (tmp_path / "campaigns").exists()  # nothing was created


def test_malformed_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[campaign\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_example_campaign_is_valid():
    c = load_config(Path(__file__).parent.parent / "examples" / "linio2.toml")
    preflight(c)
    assert c.training.ensemble_size == 4 and c.campaign.max_rounds >= 2


def test_delithiation_example_is_valid_and_covers_the_issue_grid():
    """examples/delithiation.toml: Li_x NiO2 at x = 1, 0.75, 0.5, 0.25 and NMC811, every
    structure buildable, the volume curve on with 3 or more labeler checks."""
    c = load_config(Path(__file__).parent.parent / "examples" / "delithiation.toml")
    preflight(c)
    lno = sorted(s.li_content for s in c.structures if s.group == "LNO")
    assert lno == [0.25, 0.5, 0.75, 1.0]
    assert any(s.metals == "NMC811" for s in c.structures)
    assert c.volume.enabled and len(c.volume.check) >= 3
    names = {s.name for s in c.structures}
    assert set(c.volume.check) <= names
