"""A team file registered before a function existed: the campaign stops before any work,
naming every function it lacks and the fix, from the CLI and from Python."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from driver.backends.base import FUNCTIONS
from driver.backends.globus import GlobusBackend
from driver.config import functions_used, load_config, parse_config
from driver.errors import ConfigError
from driver.team import TeamFile, write_team

ROOT = Path(__file__).resolve().parents[1]
BASE = {"md", "uq", "label", "train"}


def _team(names) -> TeamFile:
    return TeamFile(endpoints={"gpu": str(uuid.uuid4()), "cpu": str(uuid.uuid4())},
                    functions={n: str(uuid.uuid4()) for n in names})


def _cfg(tmp_path, **sections):
    data = {"campaign": {"name": "c", "type_map": ["Li", "Ni", "O"], "workdir": str(tmp_path / "camp")},
            "structures": [{"name": "L"}], **sections}
    return parse_config(data, base_dir=tmp_path)


def test_functions_used_follow_the_campaign_file(tmp_path):
    assert functions_used(_cfg(tmp_path)) == BASE
    assert functions_used(_cfg(tmp_path, initial={"relax": True})) == BASE | {"relax_label"}
    assert functions_used(_cfg(tmp_path, test={"n_relaxed_per_structure": 2})) == BASE | {"relax_label"}
    assert functions_used(_cfg(tmp_path, initial={"n_md_per_structure": 4})) == BASE | {"relax_label", "md_label"}
    assert functions_used(_cfg(tmp_path, test={"n_md_per_structure": 2})) == BASE | {"relax_label", "md_label"}
    assert functions_used(_cfg(tmp_path, volume={"enabled": True})) == BASE | {"relax"}
    assert functions_used(_cfg(tmp_path, volume={"enabled": True, "check": ["L"]})) == BASE | {"relax", "relax_label"}
    # the shipped examples: every function they use is one the backends know
    for example in sorted((ROOT / "examples").glob("*.toml")):
        if "[sweep]" in example.read_text():  # a sweep file, not a campaign
            continue
        assert functions_used(load_config(example)) <= set(FUNCTIONS), example.name
    assert functions_used(load_config(ROOT / "examples" / "delithiation.toml")) == BASE | {"relax", "relax_label"}


def test_require_functions_names_all_that_are_missing():
    _team(FUNCTIONS).require_functions(FUNCTIONS)  # a complete file passes
    with pytest.raises(ConfigError) as err:
        _team(BASE).require_functions(BASE | {"relax_label", "md_label"})
    msg = str(err.value)
    assert "md_label, relax_label" in msg and "remote-al endpoint register" in msg


def test_python_api_refuses_before_the_campaign_directory_exists(tmp_path):
    from driver.campaign import Campaign

    cfg = _cfg(tmp_path, initial={"n_md_per_structure": 4})
    with pytest.raises(ConfigError, match="md_label, relax_label"):
        Campaign(cfg, GlobusBackend(_team(BASE)))
    assert not (tmp_path / "camp").exists()


def test_cli_refuses_before_any_state_and_a_complete_team_gets_past_the_check(tmp_path, capsys):
    from driver.cli import main

    toml = tmp_path / "c.toml"
    toml.write_text('[campaign]\nname = "c"\ntype_map = ["Li", "Ni", "O"]\nworkdir = "camp"\n'
                    '[[structures]]\nname = "L"\n[initial]\nn_md_per_structure = 4\n')
    old = write_team(_team(BASE | {"probe", "relax"}), tmp_path / "old.toml")
    assert main(["run", str(toml), "--backend", "globus", "--team", str(old)]) != 0
    err = capsys.readouterr().err
    assert "md_label, relax_label" in err and "endpoint register" in err and "old.toml" in err
    assert not (tmp_path / "camp").exists()  # nothing created, nothing lost
