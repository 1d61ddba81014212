"""The ``remote-al`` command line (click).

Exit status: 0 done; 1 a failure during the work (``RemoteALError``) or an unexpected
error; 2 a user error (``ConfigError``: a campaign, team or structure file or an option;
or a command line click refuses), found before any state was created or changed, reported
in one message that names the file, the field and the fix. ``--debug`` adds the traceback.
``remote-al --version`` prints the versions of remote-al and of what runs the work.

Shell completion (click's): ``eval "$(_REMOTE_AL_COMPLETE=bash_source remote-al)"`` in
``~/.bashrc`` (``zsh_source`` / ``fish_source`` for zsh and fish).

Each verb is a click command whose handler ``cmd_*(args) -> int`` takes the parsed options
as attributes of ``args`` and returns the exit status; the verbs of other modules
(``endpoint``, ``pull``, ``login``, ``report``, ``sweep``, ``predict``) are imported only
when one of them runs or a listing asks for them (``LAZY_VERBS``): ``remote-al status``
starts without numpy, pydantic or the report.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import click

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
    functions = None
    if cfg.backend.workload == "simulated":
        from remote_al.simulated import FUNCTIONS as functions
    if kind == "local":
        return make_backend("local", run_dir=cfg.directory / "engine", gpu_slots=cfg.backend.gpu_slots,
                            cpu_slots=cfg.backend.cpu_slots, engine=args.engine or cfg.backend.engine,
                            functions=functions, lifetime=cfg.backend.engine_lifetime)
    if kind == "colmena":
        endpoints = None
        if cfg.backend.colmena_server == "globus":
            endpoints = dict(_read_team(args.team or cfg.backend.team).endpoints)
        return make_backend("colmena", run_dir=cfg.directory / "engine-colmena", gpu_slots=cfg.backend.gpu_slots,
                            cpu_slots=cfg.backend.cpu_slots, functions=functions, server=cfg.backend.colmena_server,
                            redis_url=cfg.backend.redis_url, endpoints=endpoints)
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
    from driver.code_watch import EXIT_CODE_CHANGED, CodeChanged, restart_on_new_code
    from driver.config import functions_used, load_config, override
    from driver.preflight import preflight

    cfg = load_config(args.campaign)
    try:  # every check before any state, directory or process exists
        preflight(cfg)  # its notes (a check it could not run here) are logged
        if args.rounds is not None:
            cfg = override(cfg, "campaign.max_rounds", args.rounds, "--rounds")
        team = args.team or cfg.backend.team
        if team:
            team_file = _read_team(team)
            if (args.backend or cfg.backend.kind) == "globus":
                team_file.require_functions(functions_used(cfg), source=str(team))
        elif (args.backend or cfg.backend.kind) == "globus":
            raise ConfigError("backend.team", "the globus backend needs a team file", "pass --team team.toml")
        elif (args.backend or cfg.backend.kind) == "colmena" and cfg.backend.colmena_server == "globus":
            raise ConfigError("backend.team", "the colmena backend's Globus Compute task server needs a team file",
                              "pass --team team.toml")
    except ConfigError as exc:
        exc.source = exc.source or cfg.source
        raise
    from driver.campaign import Campaign

    backend = _backend_for(cfg, args)
    sites, transfer = _sites_for(cfg, args)
    t0 = time.time()
    campaign = Campaign(cfg, backend, status_every_s=args.status_every, sites=sites, transfer=transfer)
    try:
        campaign.run(retry_quarantined=args.retry_quarantined)
    except CodeChanged:  # said by the campaign; the same command again resumes on the new code
        if args.on_code_change == "restart" and args.argv is not None:
            return restart_on_new_code(args.argv, print)
        return EXIT_CODE_CHANGED
    print(f"wall time of this run: {time.time() - t0:.0f} s; campaign directory: {cfg.directory}")
    if args.report:
        from driver.report_cli import print_report
        from driver.status import print_status

        print_status(cfg.directory)
        print_report(cfg.directory)
    else:
        print(f"next: remote-al status {cfg.directory}; remote-al report {cfg.directory}")
    return 1 if campaign.stop_kind == "failed" else 0


def cmd_status(args) -> int:
    from driver.status import list_campaigns, print_status

    if args.campaign:
        d = Path(args.campaign)
        if d.suffix == ".toml":  # a campaign file (reading it imports the config models)
            from driver.config import campaign_directory

            d = campaign_directory(d)
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


# ------------------------------------------------------------------ versions
VERSIONED = ("remote-al", "deepmd-kit", "torch", "globus-compute-sdk", "globus-compute-endpoint")


def versions() -> dict[str, str]:
    """Installed versions of remote-al and what runs its work, read from the distributions'
    metadata (nothing is imported: the driver never imports torch or deepmd)."""
    from importlib import metadata

    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    width = max(map(len, VERSIONED))
    for name, version in versions().items():
        click.echo(f"{name:{width}s}  {version}")
    click.echo(f"{'python':{width}s}  {sys.version.split()[0]}")
    ctx.exit(0)


# ---------------------------------------------------------------- the group
# the verbs of other modules: name -> "module:command", imported on first use
LAZY_VERBS = {"endpoint": "driver.endpoint_cli:endpoint_group", "login": "driver.transfer_cli:login_command",
              "predict": "driver.predict:predict_command", "pull": "driver.transfer_cli:pull_command",
              "report": "driver.report_cli:report_command", "stop": "driver.stop_cli:stop_command",
              "sweep": "driver.sweep:sweep_command"}


class _RemoteAL(click.Group):
    """The top-level group: turns errors of a verb into one message and an exit status;
    imports the verbs of ``LAZY_VERBS`` when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_VERBS})

    def get_command(self, ctx: click.Context, name: str):
        if name in LAZY_VERBS and name not in self.commands:
            module, attr = LAZY_VERBS[name].split(":")
            try:
                self.add_command(getattr(importlib.import_module(module), attr), name)
            except ImportError:  # the endpoint verbs need the optional endpoint templates' packages
                if name != "endpoint":
                    raise
                return None
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors, --help, --version: click's own
        except ConfigError as exc:
            _say_error(exc, debug)
            return 2
        except KeyboardInterrupt:
            print("interrupted: state is saved; `remote-al run` again resumes", file=sys.stderr)
            return 130
        except Exception as exc:  # RemoteALError: a failure during the work; else a bug
            _say_error(exc, debug)
            return 1


@click.group(cls=_RemoteAL, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.option("--debug", is_flag=True, help="show the traceback of an error")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print the versions of remote-al, DeePMD-kit, torch and the Globus Compute SDK")
def cli(verbose: bool, debug: bool) -> None:
    """Active learning of DeePMD-kit force fields for battery cathodes, across partitions.

    \b
    Start with:  remote-al run examples/linio2.toml --report
    Then:        remote-al status campaigns/linio2
                 remote-al report campaigns/linio2
    Shell completion: eval "$(_REMOTE_AL_COMPLETE=bash_source remote-al)"
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command("run")
@click.argument("campaign")
@click.option("--backend", type=click.Choice(["local", "globus", "colmena"]), help="override [backend].kind")
@click.option("--engine", type=click.Choice(["process", "gce"]), help="local engine (override [backend].engine)")
@click.option("--team", help="team file for the globus backend")
@click.option("--rounds", type=int, help="override campaign.max_rounds")
@click.option("--status-every", type=float, default=20.0, show_default=True, help="seconds between progress lines")
@click.option("--report", is_flag=True, help="at the end, print the status tables and write the HTML report "
              "into the campaign folder (report/index.html)")
@click.option("--retry-quarantined", is_flag=True, help="queue the quarantined tasks again (not labels), once "
              "what made them fail is fixed")
@click.option("--on-code-change", type=click.Choice(["restart", "stop"]), default="restart", show_default=True,
              help="when remote-al's files change under the running driver (an upgrade): stop before recording "
              "anything, then start again on the new code once the files are still, or stop (exit status 75)")
@click.pass_context
def run_command(ctx, **kwargs) -> int:
    """Run or resume a campaign until it stops.

    CAMPAIGN is the campaign TOML file. Ctrl-C, a closed lid or a crash lose nothing:
    running the same command again resumes.
    """
    return cmd_run(SimpleNamespace(**kwargs, argv=(ctx.obj or {}).get("argv")))


@cli.command("status")
@click.argument("campaign", required=False)
@click.option("--json", "json", is_flag=True, help="machine-readable output")
def status_command(**kwargs) -> int:
    """Show one campaign, or list the campaigns in a directory.

    CAMPAIGN is a campaign TOML, a campaign directory, or a directory of campaigns
    (default: ./campaigns).
    """
    return cmd_status(SimpleNamespace(**kwargs))


@cli.command("schema", short_help="Print the JSON Schema of a campaign file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write it to this file")
@click.option("--check", is_flag=True, help="with -o: exit 1 if the file differs from the models")
@click.option("--bounds", is_flag=True, help="the table of keys and bounds instead (markdown)")
def schema_command(**kwargs) -> int:
    """Print the JSON Schema of a campaign file (docs/campaign.schema.json)."""
    return cmd_schema(SimpleNamespace(**kwargs))


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    import signal
    import threading

    # a command started with `&` from a script inherits SIGINT ignored: then `kill -INT`
    # (what Ctrl-C sends) would not reach the driver's "state is saved" ending at all
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # the process's own command line (not one given in-process) may restart itself (driver.code_watch)
        obj = {"argv": sys.argv[1:] if argv is None else None}
        status = cli.main(args=argv, prog_name="remote-al", standalone_mode=False, obj=obj)
    except click.exceptions.ClickException as exc:  # a command line click refuses: 2
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
