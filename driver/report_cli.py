"""``remote-al report``: the command, with a progress bar over the report's stages."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click

from driver.config import campaign_directory
from driver.report import STAGES, write_report


def print_report(campaign_dir: str | Path, compute_parity: bool = True) -> Path:
    """Write the report with a rich progress bar over its stages (on stderr); say where it is."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("report: {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("reading the campaign", total=len(STAGES))

        def on_stage(stage: str) -> None:
            bar.update(task, description=stage, completed=STAGES.index(stage))

        path = write_report(campaign_dir, compute_parity=compute_parity, on_stage=on_stage)
    print(f"report written: {path}")
    return path


def cmd_report(args) -> int:
    d = campaign_directory(args.campaign)
    if not (d / "state.sqlite").exists():
        import sys

        print(f"no campaign state at {d / 'state.sqlite'}", file=sys.stderr)
        return 2
    print_report(d, compute_parity=not args.no_parity)
    return 0


@click.command("report")
@click.argument("campaign")
@click.option("--no-parity", is_flag=True,
              help="do not evaluate the final ensemble locally (use stored results and the cache only)")
def report_command(**kwargs) -> int:
    """Write an HTML report with tables and plots of a campaign.

    CAMPAIGN is a campaign directory or campaign TOML; the report goes to its folder as
    report/index.html with its PNGs next to it.
    """
    return cmd_report(SimpleNamespace(**kwargs))


__all__ = ["print_report"]
