"""The ``remote-al`` command line: help for every verb, versions, shell completion, and the
status tables at narrow and wide terminals, whose counts add up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import click
import pytest

from driver.cli import cli, main
from test_report import _synthetic_campaign

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("run", "status", "schema", "report", "sweep", "predict", "pull", "login", "endpoint")


def _all_commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazy verbs too (driver.cli.LAZY_VERBS)
        cmd = group.get_command(ctx, name)
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_verb_is_kept_and_has_help(capsys):
    names = {path for path, _ in _all_commands(cli)}
    assert {(v,) for v in VERBS} <= names
    assert {("endpoint", "render"), ("endpoint", "register"), ("endpoint", "doctor")} <= names
    for path, cmd in _all_commands(cli):
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: remote-al {' '.join(path)}"), out
        assert (cmd.help or "").strip(), f"{path} has no help text"
        for param in cmd.params:  # every option says what it does
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{path}: {param.opts} has no help"


def test_status_starts_without_the_heavy_modules(tmp_path):
    """`remote-al status` imports neither numpy nor pydantic nor the verbs of other modules."""
    from driver.state import State

    State(tmp_path / "c" / "state.sqlite").close()
    code = ("import sys; from driver.cli import main; main(['status', sys.argv[1]]); "
            "print(sorted(m for m in ('numpy', 'pydantic', 'ase', 'driver.report', 'driver.predict') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_exit_statuses():
    assert main(["--no-such-option"]) == 2
    assert main(["no-such-verb"]) == 2
    assert main(["run"]) == 2  # the campaign file is missing
    assert main(["run", "x.toml", "--backend", "cloud"]) == 2  # not a choice
    assert main(["schema", "--bounds"]) == 0


def test_version_names_every_part(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    for dist in ("remote-al", "deepmd-kit", "torch", "globus-compute-sdk"):
        try:
            expected = metadata.version(dist)
        except metadata.PackageNotFoundError:
            expected = "not installed"
        assert re.search(rf"^{re.escape(dist)}\s+{re.escape(expected)}$", out, re.M), (dist, out)


def test_version_imports_neither_torch_nor_deepmd():
    code = ("import sys; from driver.cli import main; main(['--version']); "
            "print('LOADED', sorted(m for m in ('torch', 'deepmd') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "LOADED []" in out, out


def test_shell_completion():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_REMOTE_AL_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "driver.cli"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120).stdout
    assert "complete " in script and "_REMOTE_AL_COMPLETE" in script
    env.update(_REMOTE_AL_COMPLETE="bash_complete", COMP_WORDS="remote-al st", COMP_CWORD="1")
    words = subprocess.run([sys.executable, "-m", "driver.cli"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120).stdout
    assert "plain,status" in words.splitlines()


# ---------------------------------------------------------------------- status
@pytest.mark.parametrize("columns", [80, 200])
def test_status_fits_the_terminal_and_cuts_nothing(tmp_path, columns, monkeypatch, capsys):
    d = _synthetic_campaign(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out  # rich's mark of a cut cell
    assert max(len(line) for line in out.splitlines()) <= columns
    joined = re.sub(r"\s+", "", out)  # a folded cell continues on the next line
    for text in ("roundbudgetof2roundsreached", "0.60", "0.300", "undecided", "skipped", "heldout", "labelsok",
                 "yes/no", "3.24", "total"):
        assert text in joined, text
    if columns == 200:  # wide enough: no header or cell had to fold
        assert "F width median eV/A" in out and "rounds (explored = the rows under it)" in out
    assert main(["status", str(tmp_path)]) == 0  # the folder of campaigns: one row each
    listing = capsys.readouterr().out
    assert "…" not in listing and max(len(line) for line in listing.splitlines()) <= columns
    assert re.search(r"mini\s*│\s*2\s*│\s*done", listing), listing


def test_status_counts_add_up(tmp_path, capsys, monkeypatch):
    from driver.state import State
    from driver.status import ROUND_COUNTS, round_counts, summary, task_table_rows

    d = _synthetic_campaign(tmp_path)
    st = State(d / "state.sqlite")
    for name, v in {"n_explored": 40, "n_selected": 5, "n_test": 2, "n_confident": 20, "n_unphysical": 1,
                    "n_filtered": 3, "n_duplicate": 2, "n_skipped": 4}.items():
        st.set_metric("round", 3, name, v)
    st.close()
    s = summary(d)
    for r, m in s["rounds"].items():
        c = round_counts(m)
        assert sum(v for k, v in c.items() if k != "explored") == c["explored"] == m["n_explored"], r
    assert round_counts(s["rounds"][3])["skipped"] == 4 and round_counts(s["rounds"][3])["undecided"] == 3
    assert len(ROUND_COUNTS) == 7

    statuses, rows = task_table_rows(s["tasks"])
    assert rows[-1][0] == "all" and rows[-1][-1] == sum(s["tasks"].values()) == 2
    for row in rows:
        assert sum(row[1:-1]) == row[-1], row
    assert [sum(r[i] for r in rows[:-1]) for i in range(1, len(statuses) + 2)] == rows[-1][1:]

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["status", str(d)]) == 0
    out = capsys.readouterr().out
    last = {}  # the rounds table's row label -> its value in the last column (round 3)
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 4 and cells[-1].isdigit():
            last.setdefault(cells[0], int(cells[-1]))
    decisions = ("selected", "held out", "confident", "unphysical", "filtered", "duplicate", "skipped", "undecided")
    assert last["explored"] == 40 and last["skipped"] == 4, last
    assert sum(last[k] for k in decisions) == 40, last  # explored = the decisions + undecided


# ------------------------------------------------------------------ run --report
@pytest.mark.parametrize("report", [True, False])
@pytest.mark.slow
def test_run_with_report_writes_the_html_report_and_says_where(tmp_path, monkeypatch, capsys, report):
    """A real (simulated-workload) campaign through the CLI, with and without --report."""
    from test_durability import write_campaign

    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0.01")
    toml = write_campaign(tmp_path, campaign={"max_rounds": 1})
    assert main(["run", str(toml), *(["--report"] if report else [])]) == 0
    out = capsys.readouterr().out
    index = tmp_path / "camp" / "report" / "index.html"
    if report:
        assert f"report written: {index}" in out and index.stat().st_size > 1000
        assert "function" in out and "total" in out  # and the status tables before it
    else:
        assert not index.exists() and f"next: remote-al status {tmp_path / 'camp'}" in out


def test_the_readme_says_how_to_reach_the_command_and_names_real_verbs():
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/remote-al" in readme and "source .venv/bin/activate" in readme
    verbs = set(re.findall(r"^remote-al ([a-z][a-z-]*)", readme, re.M))
    assert {"run", "status", "report", "predict"} <= verbs
    assert verbs <= set(cli.list_commands(None)), verbs - set(cli.list_commands(None))


def test_status_of_a_campaign_before_its_first_round(tmp_path, capsys):
    from driver.state import State

    st = State(tmp_path / "fresh" / "state.sqlite")
    st.set_meta("phase", "label")
    st.close()
    assert main(["status", str(tmp_path / "fresh")]) == 0
    out = capsys.readouterr().out
    assert "no exploration round finished yet" in out and "phase label" in out


def test_make_demo_writes_the_report_and_says_how_to_reach_the_command():
    make = subprocess.run(["make", "-n", "demo", "STAMP=/dev/null"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout
    assert "remote-al run examples/linio2.toml --report" in make
    assert "source .venv/bin/activate" in make and ".venv/bin/remote-al" in make
