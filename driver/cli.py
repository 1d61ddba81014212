"""The ``remote-al`` command line.

Exit status: 0 done; 1 a failure during the work (``RemoteALError``) or an unexpected
error; 2 a user error (``ConfigError``: a campaign, team or structure file or an option),
found before any state was created or changed, reported in one message that names the file,
the field and the fix. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

from driver.errors import ConfigError, RemoteALError
from driver.state import StateMeta


def _read_team(path):
    """The team file, checked before anything is created (ConfigError if unusable)."""
    from driver.team import read_team

    try:
        return read_team(path)
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not a text file", "give the team file written by "
                          "`remote-al endpoint register`", source=str(path)) from None


def _backend_for(cfg, args):
    from driver.backends import make_backend

    kind = args.backend or cfg.backend.kind
    if kind == "local":
        functions = None
        if cfg.backend.workload == "simulated":
            from remote_al.simulated import FUNCTIONS as functions
        return make_backend(
            "local",
            run_dir=cfg.directory / "engine",
            gpu_slots=cfg.backend.gpu_slots,
            cpu_slots=cfg.backend.cpu_slots,
            engine=args.engine or cfg.backend.engine,
            functions=functions,
        )
    team = args.team or cfg.backend.team
    if not team:
        raise ConfigError("backend.team", "the globus backend needs a team file", "pass --team team.toml")
    from driver.state import State

    state = State(cfg.directory / "state.sqlite")
    return make_backend("globus", team=team, meta=StateMeta(state))


def _sites_for(cfg, args):
    """The team file's sites, when they place pools on other filesystems, and the transfer
    that stages inputs there (Globus Transfer with the globus backend, else local copies)."""
    team_path = args.team or cfg.backend.team
    if not team_path:
        return None, None
    from driver.state import State

    team = _read_team(team_path)
    if not any(site.pools for site in team.sites.values()):
        return None, None
    cfg.directory.mkdir(parents=True, exist_ok=True)
    meta = StateMeta(State(cfg.directory / "state.sqlite"))
    kind = "globus" if (args.backend or cfg.backend.kind) == "globus" else "local"
    return team.sites, make_transfer(kind, team.sites, meta)


def make_transfer(kind: str, sites, meta=None, **kwargs):
    """``local`` or ``globus``, by name."""
    if kind == "local":
        from driver.transfer_local import LocalTransfer

        return LocalTransfer(sites, meta, **kwargs)
    if kind == "globus":
        from driver.transfer_globus import GlobusTransfer

        return GlobusTransfer(sites, meta, **kwargs)
    raise ConfigError("transfer", f"unknown transfer {kind!r}", "use 'local' or 'globus'")


def cmd_run(args) -> int:
    from driver.config import load_config, override
    from driver.preflight import preflight

    cfg = load_config(args.campaign)
    try:  # every check before any state, directory or process exists
        preflight(cfg)  # its notes (a check it could not run here) are logged
        if args.rounds is not None:
            cfg = override(cfg, "campaign.max_rounds", args.rounds, "--rounds")
        team = args.team or cfg.backend.team
        if team:
            _read_team(team)
        elif (args.backend or cfg.backend.kind) == "globus":
            raise ConfigError("backend.team", "the globus backend needs a team file", "pass --team team.toml")
    except ConfigError as exc:
        exc.source = exc.source or cfg.source
        raise
    from driver.campaign import Campaign

    backend = _backend_for(cfg, args)
    sites, transfer = _sites_for(cfg, args)
    t0 = time.time()
    campaign = Campaign(cfg, backend, status_every_s=args.status_every, sites=sites, transfer=transfer)
    campaign.run()
    print(f"wall time of this run: {time.time() - t0:.0f} s; campaign directory: {cfg.directory}")
    if args.report:
        from driver.status import print_status

        print_status(cfg.directory)
    return 1 if campaign.stop_kind == "failed" else 0


def cmd_status(args) -> int:
    from driver.config import campaign_directory
    from driver.status import list_campaigns, print_status

    if args.campaign:
        d = campaign_directory(args.campaign)
        if (d / "state.sqlite").exists():
            print_status(d, as_json=args.json)
            return 0
        if d.is_dir():
            list_campaigns(d)
            return 0
        print(f"no campaign at {d}", file=sys.stderr)
        return 2
    list_campaigns(Path("campaigns"))
    return 0


def cmd_schema(args) -> int:
    from driver.config_schema import bounds_table, schema_text

    text = bounds_table() if args.bounds else schema_text()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run `remote-al schema -o {args.output}`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _say_error(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, ConfigError):
        where = f"error in {exc.source}" if exc.source and exc.source != exc.field else "error"
        print(f"{where}: {exc}", file=sys.stderr)
    elif isinstance(exc, RemoteALError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        print(f"error: unexpected {type(exc).__name__}: {exc} (a bug in remote-al; `remote-al --debug ...` "
              "shows the traceback)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="remote-al",
        description="Active learning of DeePMD-kit force fields for battery cathodes, across partitions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run or resume a campaign until it stops")
    p.add_argument("campaign", help="campaign TOML file")
    p.add_argument("--backend", choices=["local", "globus"], help="override [backend].kind")
    p.add_argument("--engine", choices=["process", "gce"], help="local engine (override [backend].engine)")
    p.add_argument("--team", help="team file for the globus backend")
    p.add_argument("--rounds", type=int, help="override campaign.max_rounds")
    p.add_argument("--status-every", type=float, default=20.0, help="seconds between progress lines")
    p.add_argument("--report", action="store_true", help="print the status table at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="show one campaign, or list the campaigns in a directory")
    p.add_argument("campaign", nargs="?", help="campaign TOML, campaign directory, or a directory of campaigns")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("schema", help="print the JSON Schema of a campaign file (docs/campaign.schema.json)")
    p.add_argument("-o", "--output", type=Path, help="write it to this file")
    p.add_argument("--check", action="store_true", help="with -o: exit 1 if the file differs from the models")
    p.add_argument("--bounds", action="store_true", help="the table of keys and bounds instead (markdown)")
    p.set_defaults(func=cmd_schema)

    try:
        from driver.endpoint_cli import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands:
        add_subcommands(sub)
    from driver.transfer_cli import add_subcommands as add_transfer

    add_transfer(sub)
    try:
        from driver.report import add_subcommands as add_report
    except ImportError:
        add_report = None
    if add_report:
        add_report(sub)
    from driver.sweep import add_subcommands as add_sweep

    add_sweep(sub)
    from driver.predict import add_subcommands as add_predict

    add_predict(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        _say_error(exc, args.debug)
        return 2
    except KeyboardInterrupt:
        print("interrupted: state is saved; `remote-al run` again resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # RemoteALError: a failure during the work; else a bug
        _say_error(exc, args.debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
