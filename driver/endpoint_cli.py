"""``remote-al endpoint ...``: render endpoint configs, register functions, doctor.

``driver.cli`` calls :func:`add_subcommands` with its subparsers; each command sets
``func`` to a handler ``(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from driver.backends.base import FUNCTIONS


def add_subcommands(subparsers) -> argparse.ArgumentParser:
    from driver.templates import template_names

    endpoint = subparsers.add_parser(
        "endpoint", help="Globus Compute endpoints: render configs, register functions, doctor",
        description="Set up and check the Globus Compute endpoints of a team (docs/deployment.md).")
    sub = endpoint.add_subparsers(dest="endpoint_command", required=True)

    render = sub.add_parser(
        "render", help="write an endpoint's config.yaml and user_config_template.yaml.j2",
        description="Render the files of an endpoint directory from a template. Run it on the "
                    "cluster, inside the endpoint environment: --worker-init defaults to "
                    "activating it. 'multi-user' writes the per-user template and its schema.")
    render.add_argument("template", help=f"one of {template_names()} or a path to a .yaml.j2 file")
    render.add_argument("--account", help="scheduler account / project to charge")
    render.add_argument("--queue", help="batch queue (PBS) or partition (Slurm)")
    render.add_argument("--worker-init", help="shell lines that activate the endpoint "
                        "environment (default: activate the one running this command)")
    render.add_argument("--team", type=Path, help="team file: its function ids become allowed_functions")
    render.add_argument("--functions", help="comma-separated names to allow (default: all in "
                        f"the team file; names: {','.join(FUNCTIONS)})")
    render.add_argument("--walltime", help="batch job walltime, HH:MM:SS")
    render.add_argument("--nodes", type=int, dest="nodes_per_block", help="nodes per batch job")
    render.add_argument("--max-blocks", type=int, help="batch jobs at most at once")
    render.add_argument("--display-name")
    render.add_argument("--address-interface", help="network interface workers connect to "
                        "(Polaris: hsn0, the default; '' to let parsl choose)")
    render.add_argument("--scheduler-options", help="extra #PBS / #SBATCH lines")
    render.add_argument("--email", help="contact email (required for root-run endpoints)")
    render.add_argument("--identity-mapping", dest="identity_mapping_config_path",
                        help="identity mapping JSON of a root-run multi-user endpoint")
    render.add_argument("-o", "--output", type=Path, help="endpoint directory to write, e.g. "
                        "~/.globus_compute/remote-al-gpu (default: print the files)")
    render.set_defaults(func=cmd_render)

    register = sub.add_parser(
        "register", help="register the functions and write the team file",
        description="Register remote-al's functions with Globus Compute (once per team) and "
                    "write or update the team file. Functions already in the team file keep "
                    "their ids unless --reregister.")
    register.add_argument("--gpu-endpoint", help="endpoint id of the GPU partition (MD, UQ, training)")
    register.add_argument("--cpu-endpoint", help="endpoint id of the CPU partition (labeling)")
    register.add_argument("--group", help="Globus group id to share the functions with")
    register.add_argument("--reregister", action="store_true",
                          help="register all functions anew (endpoint configs must be re-rendered)")
    register.add_argument("-o", "--output", type=Path, default=Path("team.toml"), help="team file")
    register.set_defaults(func=cmd_register)

    doctor = sub.add_parser(
        "doctor", help="check the endpoints against this driver",
        description="Probe each endpoint of the team file and compare Python, remote-al, "
                    "deepmd-kit, dill and globus-compute versions with this driver's.")
    doctor.add_argument("--team", type=Path, default=Path("team.toml"))
    doctor.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the probes (a batch job may have to start)")
    doctor.set_defaults(func=cmd_doctor)
    return endpoint


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
