"""``remote-al endpoint ...``: render endpoint configs, register functions, doctor.

``driver.cli`` imports its commands when they are asked for (``LAZY_VERBS``); each command hands its
options to a handler ``cmd_*(args) -> int`` (the exit status).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import click

from driver.backends.base import FUNCTIONS
from driver.templates import template_names


@click.group("endpoint", short_help="Globus Compute endpoints: render, register, doctor.")
def endpoint_group() -> None:
    """Globus Compute endpoints: render configs, register functions, doctor.

    Set up and check the Globus Compute endpoints of a team (docs/deployment.md).
    """


@endpoint_group.command("render", help=(
    f"Write an endpoint's config.yaml and user_config_template.yaml.j2.\n\nRender the files of an endpoint "
    f"directory from TEMPLATE: one of {', '.join(template_names())}, or a path to a .yaml.j2 file. Run it on "
    "the cluster, inside the endpoint environment: --worker-init defaults to activating it. 'multi-user' "
    "writes the per-user template and its schema."), short_help="Write an endpoint's config.yaml and user template.")
@click.argument("template")
@click.option("--account", help="scheduler account / project to charge")
@click.option("--queue", help="batch queue (PBS) or partition (Slurm)")
@click.option("--worker-init", help="shell lines that activate the endpoint environment (default: activate the "
              "one running this command)")
@click.option("--team", type=click.Path(path_type=Path), help="team file: its function ids become allowed_functions")
@click.option("--functions", help="comma-separated names to allow (default: all in the team file; names: "
              f"{','.join(FUNCTIONS)})")
@click.option("--walltime", help="batch job walltime, HH:MM:SS")
@click.option("--nodes", "nodes_per_block", type=int, help="nodes per batch job")
@click.option("--max-blocks", type=int, help="batch jobs at most at once")
@click.option("--display-name", help="the endpoint's name in the Globus web app (default: remote-al <template>)")
@click.option("--address-interface", help="network interface workers connect to (Polaris: hsn0, the default; '' "
              "to let parsl choose)")
@click.option("--scheduler-options", help="extra #PBS / #SBATCH lines")
@click.option("--email", help="contact email (required for root-run endpoints)")
@click.option("--identity-mapping", "identity_mapping_config_path",
              help="identity mapping JSON of a root-run multi-user endpoint")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="endpoint directory to write, e.g. "
              "~/.globus_compute/remote-al-gpu (default: print the files)")
def render_command(**kwargs) -> int:
    return cmd_render(SimpleNamespace(**kwargs))


@endpoint_group.command("register")
@click.option("--gpu-endpoint", help="endpoint id of the GPU partition (MD, UQ, training)")
@click.option("--cpu-endpoint", help="endpoint id of the CPU partition (labeling)")
@click.option("--group", help="Globus group id to share the functions with")
@click.option("--reregister", is_flag=True, help="register all functions anew (endpoint configs must be re-rendered)")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("team.toml"), show_default=True,
              help="team file")
def register_command(**kwargs) -> int:
    """Register the functions and write the team file.

    Register remote-al's functions with Globus Compute (once per team) and write or update
    the team file. Functions already in the team file keep their ids unless --reregister.
    """
    return cmd_register(SimpleNamespace(**kwargs))


@endpoint_group.command("doctor")
@click.option("--team", type=click.Path(path_type=Path), default=Path("team.toml"), show_default=True,
              help="team file written by `remote-al endpoint register`")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="seconds to wait for the probes (a batch job may have to start)")
def doctor_command(**kwargs) -> int:
    """Check the endpoints against this driver.

    Probe each endpoint of the team file and compare Python, remote-al, deepmd-kit, dill
    and globus-compute versions with this driver's.
    """
    return cmd_doctor(SimpleNamespace(**kwargs))


def cmd_render(args) -> int:
    from driver.team import read_team
    from driver.templates import MULTI_USER, load_rendered, render_template

    team = read_team(args.team) if args.team else None
    allowed = team.function_ids(args.functions.split(",") if args.functions else None) if team else None
    options = {k: getattr(args, k) for k in ("walltime", "nodes_per_block", "max_blocks", "display_name",
                                             "address_interface", "scheduler_options", "email",
                                             "identity_mapping_config_path")
               if getattr(args, k) is not None}
    options.setdefault("display_name", f"remote-al {Path(str(args.template)).name.split('.')[0]}")
    rendered = render_template(args.template, args.account, args.queue, args.worker_init, allowed,
                               **options)
    if team is None:
        print("note: no --team given: the endpoint will run any function", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(str(rendered))
        return 0
    # The endpoint's own loader must accept the directory (and each user config), checked
    # in a scratch copy so that a refused render leaves the endpoint directory as it was.
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        trial = rendered.write(Path(scratch) / Path(args.output).name)
        if args.template != MULTI_USER:
            load_rendered(trial)
        elif team and team.user_endpoint_config:
            for opts in team.user_endpoint_config.values():
                load_rendered(trial, opts)
        else:
            print("note: add [user_endpoint_config.<pool>] tables to the team file; render with "
                  "--team to check them against the schema", file=sys.stderr)
    out = rendered.write(args.output)
    print(f"wrote {', '.join(rendered.files)} to {out}", file=sys.stderr)
    print(f"next: globus-compute-endpoint start {out.name}   (or restart, if it runs)", file=sys.stderr)
    return 0


def cmd_register(args) -> int:
    from globus_compute_sdk import Client

    from driver.team import register_functions

    endpoints = {pool: eid for pool, eid in (("gpu", args.gpu_endpoint), ("cpu", args.cpu_endpoint)) if eid}
    team = register_functions(Client(), args.output, group=args.group, endpoints=endpoints,
                              reregister=args.reregister)
    print(f"wrote {args.output}")
    for name, fid in sorted(team.functions.items()):
        print(f"  function {name:6s} {fid}")
    for pool, eid in sorted(team.endpoints.items()):
        print(f"  endpoint {pool:6s} {eid}")
    missing = {"gpu", "cpu"} - set(team.endpoints)
    if missing:
        print("next: start the endpoints, then add them: remote-al endpoint register "
              + " ".join(f"--{p}-endpoint <id>" for p in sorted(missing)) + f" -o {args.output}")
    print(f"next: remote-al endpoint render <template> ... --team {args.output} -o "
          "~/.globus_compute/<name>, and (re)start each endpoint")
    return 0


def cmd_doctor(args) -> int:
    from driver.doctor import doctor

    findings = doctor(args.team, timeout_s=args.timeout)
    for finding in findings:
        print(finding)
    errors = sum(f.level == "error" for f in findings)
    print(f"{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    return 1 if errors else 0
