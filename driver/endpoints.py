"""Endpoints: the team file, config templates, function registration and ``doctor``.

The **team file** (TOML) is what a team shares to use the same endpoints::

    format = 1
    group = "<Globus group id>"          # optional: functions are shared with it

    [endpoints]                          # pool -> Globus Compute endpoint id
    gpu = "<uuid>"
    cpu = "<uuid>"

    [functions]                          # FUNCTIONS name -> registered function id
    md = "<uuid>"
    ...

    [slots]                              # optional: tasks kept in flight per pool
    gpu = 8

    [user_endpoint_config.gpu]           # optional: for multi-user endpoints
    account = "MYPROJ"

    [sites.polaris]                      # for the transfer seam
    root = "/eagle/MYPROJ/remote-al"
    collection = "<Globus collection id>"

It is read with :mod:`tomllib` and written by the tiny writer below (no dependency).

**Templates** live in ``endpoints/``. globus-compute-endpoint 4.x keeps an endpoint's
engine in ``user_config_template.yaml.j2`` (it renders that file itself, per user
endpoint) and refuses an engine in ``config.yaml``; :func:`render_template` therefore
writes both files of an endpoint directory: ``config.yaml`` (display name, the team
file's function ids as ``allowed_functions``) and the engine template of a partition
(account, queue, ``worker_init``, sizes). :func:`load_rendered` loads the directory
with the endpoint package's own loader and renderer.

:func:`doctor` probes every endpoint with the registered ``probe`` function and lists
what differs from the driver, each finding with the fix.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import uuid
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from driver.backends.base import FUNCTIONS
from driver.errors import ConfigError
from driver.team import Site, TeamFile, check_uuid, read_team, write_team  # noqa: F401

if TYPE_CHECKING:
    from driver.backends.globus import GlobusBackend

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "endpoints"
TEMPLATE_SUFFIX = ".yaml.j2"
CORE_TEMPLATE = "config.yaml.j2"  # -> config.yaml of every endpoint
USER_TEMPLATE = "user_config_template.yaml.j2"  # the endpoint renders this one itself
USER_SCHEMA = "user_config_schema.json"
MULTI_USER = "multi-user"  # ships USER_TEMPLATE and USER_SCHEMA as they are


# ------------------------------------------------------------------ templates
@dataclass(frozen=True)
class RenderedEndpoint:
    """Files of an endpoint directory (``~/.globus_compute/<name>/``): name -> text."""

    files: Mapping[str, str]

    def write(self, endpoint_dir: str | Path) -> Path:
        endpoint_dir = Path(endpoint_dir).expanduser()
        endpoint_dir.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            tmp = endpoint_dir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(endpoint_dir / name)
        return endpoint_dir

    def __str__(self) -> str:
        return "".join(f"# ==== {name} ====\n{text}" for name, text in self.files.items())


def template_names() -> list[str]:
    """Names :func:`render_template` takes: the engine templates and ``multi-user``."""
    engines = [p.name[: -len(TEMPLATE_SUFFIX)] for p in TEMPLATES_DIR.glob(f"*{TEMPLATE_SUFFIX}")
               if p.name not in (CORE_TEMPLATE, USER_TEMPLATE)]
    return sorted(engines + [MULTI_USER])


def template_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = TEMPLATES_DIR / f"{name_or_path}{TEMPLATE_SUFFIX}"
    if candidate.is_file() and candidate.name not in (CORE_TEMPLATE, USER_TEMPLATE):
        return candidate
    raise ConfigError("template", f"{name_or_path!r} is neither a file nor a template name",
                      f"use one of {template_names()} or a path to a .yaml.j2 file")


def default_worker_init() -> str:
    """Commands that activate the Python environment running this process."""
    prefix = shlex.quote(sys.prefix)
    if sys.prefix != sys.base_prefix:
        return f"source {prefix}/bin/activate"
    if (Path(sys.prefix) / "conda-meta").is_dir():
        return f"conda activate {prefix}"
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"


def _yaml_scalar(value: Any) -> str:
    """A JSON scalar is a YAML scalar; an undefined value fails like ``{{ x }}`` does."""
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError here
    return json.dumps(value)


def _verbatim(value: Any) -> str:
    """Text the endpoint's own Jinja pass must leave alone (e.g. bash ``${#a[@]}``)."""
    text = str(value)
    if not any(mark in text for mark in ("{{", "{%", "{#")):
        return text
    if "endraw" in text:
        raise ConfigError("template value", f"{text!r} contains 'endraw'")
    return "{% raw %}" + text + "{% endraw %}"


def _jinja_env(engine: bool):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    # Engine templates are rendered again by the endpoint: protect what we put in.
    env.filters["yaml"] = (lambda v: _verbatim(_yaml_scalar(v))) if engine else _yaml_scalar
    env.filters["verbatim"] = _verbatim
    return env


def _placeholders(env, source: str) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(env.parse(source)))


def _render(env, source: str, context: Mapping[str, Any], name: str) -> str:
    import jinja2

    try:
        return env.from_string(source).render(**context)
    except jinja2.UndefinedError as err:
        missing = re.search(r"'(\w+)' is undefined", str(err))
        var = missing.group(1) if missing else "?"
        raise ConfigError(var, f"template {name} needs a value for {var!r}",
                          f"pass --{var.replace('_', '-')}") from None


def _check_render_options(options: Mapping[str, Any]) -> None:
    """A direct render refuses what a per-user render would: the walltime must match the
    multi-user schema's HH:MM:SS pattern; block sizes are whole numbers of at least 1."""
    walltime = options.get("walltime")
    if walltime is not None:
        pattern = json.loads((TEMPLATES_DIR / USER_SCHEMA).read_text())["properties"]["walltime"]["pattern"]
        if not isinstance(walltime, str) or not re.fullmatch(pattern, walltime):
            raise ConfigError("--walltime", f"{walltime!r} is not a walltime HH:MM:SS",
                              "write hours, minutes and seconds, e.g. --walltime 01:30:00")
    for key, flag in (("nodes_per_block", "--nodes"), ("max_blocks", "--max-blocks")):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(flag, f"must be a whole number of at least 1, got {value!r}", f"e.g. {flag} 1")


def _check_address_interface(user_config_text: str) -> None:
    """The network interface an engine's workers connect to must exist here, where the
    endpoint loader resolves it (else it fails with 'No such device')."""
    import socket

    import yaml

    try:
        data = yaml.safe_load(user_config_text) or {}
    except yaml.YAMLError:
        return  # the endpoint's own loader reports it
    address = (data.get("engine") or {}).get("address") if isinstance(data, dict) else None
    if not (isinstance(address, dict) and address.get("type") == "address_by_interface"):
        return
    ifname = address.get("ifname")
    names = [name for _, name in socket.if_nameindex()]
    if ifname not in names:
        raise ConfigError(
            "--address-interface",
            f"network interface {ifname!r} (engine.address.ifname, set by --address-interface; Polaris "
            f"templates default to hsn0) does not exist on this machine, whose interfaces are {names}",
            "render on the cluster's login node, or pass --address-interface with one of these, or "
            "--address-interface '' to let parsl choose the address")


def render_template(
    template_name_or_path: str | Path,
    account: str | None = None,
    queue: str | None = None,
    worker_init: str | None = None,
    allowed_functions: Mapping[str, str] | Iterable[str] | None = None,
    **options: Any,
) -> RenderedEndpoint:
    """Render the files of an endpoint directory from a template.

    globus-compute-endpoint 4.x refuses an ``engine`` block in ``config.yaml``: the
    engine lives in ``user_config_template.yaml.j2``, which the endpoint renders itself
    (Jinja) each time it starts a user endpoint. So this returns two files:
    ``config.yaml`` from ``config.yaml.j2`` (display name, ``allowed_functions``) and
    ``user_config_template.yaml.j2`` from the named engine template (account, queue,
    ``worker_init``, sizes), with our values protected from the endpoint's Jinja pass.
    ``multi-user`` instead ships ``user_config_template.yaml.j2`` and
    ``user_config_schema.json`` as they are: account, queue and worker_init then come
    per user, from the team file's ``[user_endpoint_config.<pool>]``.

    ``allowed_functions`` is ``{name: function id}`` (e.g. ``team.function_ids()``) or a
    list of ids; ``None`` leaves the endpoint unrestricted. ``worker_init`` defaults to
    activating the environment this runs in (so render on the cluster, inside the
    endpoint environment). ``options`` fill the other placeholders (``display_name``,
    ``walltime``, ``nodes_per_block``, ``max_blocks``, ...): one that no template uses is
    an error, and so is a needed placeholder left without a value.
    """
    core_env, engine_env = _jinja_env(engine=False), _jinja_env(engine=True)
    core_source = (TEMPLATES_DIR / CORE_TEMPLATE).read_text()
    core_vars = _placeholders(core_env, core_source) - {"allowed_functions"}
    if str(template_name_or_path) == MULTI_USER:
        given = [k for k, v in (("account", account), ("queue", queue), ("worker_init", worker_init))
                 if v is not None]
        if given:
            raise ConfigError(given[0], "a multi-user endpoint takes it per user",
                              "put it in the team file's [user_endpoint_config.<pool>] table")
        engine_name, engine_source, engine_vars = USER_TEMPLATE, None, set()
    else:
        path = template_path(template_name_or_path)
        engine_name, engine_source = path.name, path.read_text()
        engine_vars = _placeholders(engine_env, engine_source) - {"account", "queue", "worker_init"}
    unknown = set(options) - core_vars - engine_vars
    if unknown:
        raise ConfigError("template", f"{engine_name} has no placeholder for {sorted(unknown)}",
                          f"it takes {sorted(core_vars | engine_vars)}")
    _check_render_options(options)

    if allowed_functions is None:
        functions: list[dict[str, str]] = []
    elif isinstance(allowed_functions, Mapping):
        functions = [{"name": str(k), "id": str(v)} for k, v in sorted(allowed_functions.items())]
    else:
        functions = [{"name": "", "id": str(f)} for f in allowed_functions]
    for f in functions:
        check_uuid(f["id"], f"allowed_functions.{f['name'] or f['id']}")

    core_ctx = {k: v for k, v in options.items() if k in core_vars and v is not None}
    files = {"config.yaml": _render(core_env, core_source, {**core_ctx, "allowed_functions": functions},
                                    CORE_TEMPLATE)}
    if engine_source is None:
        files[USER_TEMPLATE] = (TEMPLATES_DIR / USER_TEMPLATE).read_text()
        files[USER_SCHEMA] = (TEMPLATES_DIR / USER_SCHEMA).read_text()
    else:
        engine_ctx = {k: v for k, v in options.items() if k in engine_vars and v is not None}
        engine_ctx.update({k: v for k, v in (("account", account), ("queue", queue)) if v is not None})
        engine_ctx["worker_init"] = (worker_init if worker_init is not None
                                     else default_worker_init()).strip()
        files[USER_TEMPLATE] = _render(engine_env, engine_source, engine_ctx, engine_name)
    return RenderedEndpoint(files)


@dataclass(frozen=True)
class LoadedEndpoint:
    core: Any  # CoreEndpointConfig, from config.yaml
    user: Any  # UserEndpointConfig, the rendered user_config_template.yaml.j2


def load_rendered(endpoint_dir: str | Path, user_opts: Mapping[str, Any] | None = None) -> LoadedEndpoint:
    """Load an endpoint directory the way ``globus-compute-endpoint`` does.

    ``config.yaml`` through the endpoint's ``get_config``; the user template rendered by
    the endpoint's own renderer (its schema check included) for ``user_opts`` (what the
    driver sends as ``user_endpoint_config``) and loaded into an engine config. Nothing
    is started. The same check on the cluster: ``globus-compute-endpoint
    render-user-config -e <name>``.
    """
    import dataclasses
    import os
    import pwd

    import jsonschema
    from click import ClickException
    from globus_compute_endpoint.endpoint.config.config import CoreEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import (
        get_config,
        load_config_yaml,
        load_user_config_schema,
        load_user_config_template,
        render_config_user_template,
    )
    from globus_compute_endpoint.endpoint.endpoint import Endpoint
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
    from globus_compute_sdk.sdk.batch import create_user_runtime

    endpoint_dir = Path(endpoint_dir).expanduser()
    try:
        core = get_config(endpoint_dir)
        if not isinstance(core, CoreEndpointConfig):
            raise ConfigError(f"{endpoint_dir}/config.yaml", "has an engine block; the endpoint "
                              "will not start", f"move it to {USER_TEMPLATE} (remote-al endpoint render)")
        template_file = Endpoint.user_config_template_path(endpoint_dir, core)
        schema = load_user_config_schema(Endpoint.user_config_schema_path(endpoint_dir, core)) or {}
        identity = MappedPosixIdentity(local_user_record=pwd.getpwuid(os.getuid()),
                                       matched_identity=str(uuid.UUID(int=0)),
                                       globus_identity_candidates=[])
        runtime = json.loads(json.dumps(dataclasses.asdict(create_user_runtime())))
        text = render_config_user_template(core, load_user_config_template(template_file), template_file,
                                           identity, schema, dict(user_opts or {}), runtime)
        _check_address_interface(text)
        return LoadedEndpoint(core=core, user=load_config_yaml(text))
    except ClickException as err:
        raise ConfigError(str(endpoint_dir), f"globus-compute-endpoint rejects it: {err.message}") from None
    except jsonschema.ValidationError as err:
        raise ConfigError("user_endpoint_config", f"refused by {USER_SCHEMA}: {err.message}",
                          "fix the team file's [user_endpoint_config.<pool>] table") from None


# --------------------------------------------------------------- registration
def register_functions(
    client,
    team_path: str | Path,
    group: str | None = None,
    endpoints: Mapping[str, str] | None = None,
    reregister: bool = False,
) -> TeamFile:
    """Register the FUNCTIONS with Globus Compute and write the team file.

    ``client`` is a ``globus_compute_sdk.Client``. An existing team file is updated:
    functions it already has keep their ids (endpoint configs list them) unless
    ``reregister``; ``endpoints`` and ``group`` are merged in. Functions are registered
    by reference to ``remote_al.functions`` (dill), so the endpoint needs remote-al
    installed; with ``group`` they are shared with that Globus group.
    """
    path = Path(team_path)
    team = read_team(path) if path.exists() else TeamFile()
    group = group or team.group
    if group:
        check_uuid(group, "group")
    for pool, eid in (endpoints or {}).items():
        check_uuid(eid, f"endpoints.{pool}")
    functions = dict(team.functions)
    for name, import_path in FUNCTIONS.items():
        if name in functions and not reregister:
            continue
        module, _, attr = import_path.partition(":")
        fn = getattr(import_module(module), attr)
        functions[name] = str(client.register_function(fn, group=group))
    team = TeamFile(
        endpoints={**team.endpoints, **(endpoints or {})},
        functions=functions,
        group=group,
        slots=team.slots,
        user_endpoint_config=team.user_endpoint_config,
        sites=team.sites,
        registered_with=driver_environment(keys=("python_minor", "remote_al", "dill",
                                                 "globus_compute_sdk")),
    )
    write_team(team, path)
    return team


# --------------------------------------------------------------------- doctor
@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warning" or "error"
    check: str  # e.g. "python", "gpus", "endpoint-status"
    message: str
    fix: str = ""
    pool: str | None = None

    def __str__(self) -> str:
        where = f"[{self.pool}] " if self.pool else ""
        text = f"{self.level.upper():7s} {where}{self.check}: {self.message}"
        return text + (f"\n        fix: {self.fix}" if self.fix else "")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def driver_environment(keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The driver's side of what ``probe_environment`` reports (no heavy imports)."""
    import remote_al

    env = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python_minor": f"{sys.version_info.major}.{sys.version_info.minor}",
        "remote_al": _version("remote-al") or remote_al.__version__,
        "deepmd_kit": _version("deepmd-kit"),
        "dill": _version("dill"),
        "globus_compute_sdk": _version("globus-compute-sdk"),
        "globus_compute_endpoint": _version("globus-compute-endpoint"),
    }
    return {k: env[k] for k in keys} if keys else env


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def compare_environments(
    driver: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]], gpu_pools: Iterable[str] = ("gpu",)
) -> list[Finding]:
    """Findings from the driver's versions and each pool's ``probe_environment`` dict."""
    found: list[Finding] = []
    reinstall = "pip install 'remote-al[endpoint]==<driver's version>' in the endpoint environment"
    for pool, rep in reports.items():
        def add(level, check, message, fix=""):
            found.append(Finding(level, check, message, fix, pool))

        ep_py = rep.get("python_minor") or _minor(rep.get("python"))
        if ep_py != driver["python_minor"]:
            add("error", "python", f"endpoint runs Python {ep_py}, driver {driver['python_minor']}: "
                "functions and arguments are pickled per minor version",
                f"build the endpoint environment with Python {driver['python_minor']} "
                f"(or run the driver with Python {ep_py})")
        else:
            add("ok", "python", f"Python {ep_py} on both sides")
        if rep.get("remote_al") != driver["remote_al"]:
            add("error", "remote-al", f"endpoint has remote-al {rep.get('remote_al')}, driver "
                f"{driver['remote_al']}", reinstall)
        else:
            add("ok", "remote-al", f"remote-al {driver['remote_al']} on both sides")
        if rep.get("dill") != driver["dill"]:
            add("error", "dill", f"endpoint has dill {rep.get('dill')}, driver {driver['dill']}: "
                "the registered functions are dill pickles",
                f"pip install dill=={driver['dill']} in the endpoint environment (or match the driver)")
        else:
            add("ok", "dill", f"dill {driver['dill']} on both sides")
        ep_gc = rep.get("globus_compute_endpoint") or rep.get("globus_compute_sdk")
        if _minor(ep_gc) != _minor(driver.get("globus_compute_sdk")):
            add("warning", "globus-compute", f"endpoint has globus-compute {ep_gc}, driver SDK "
                f"{driver.get('globus_compute_sdk')}",
                "install the same globus-compute-sdk/-endpoint minor version on both sides")
        else:
            add("ok", "globus-compute", f"globus-compute {ep_gc}")
        ep_dp = rep.get("deepmd_kit")
        if pool in gpu_pools and not ep_dp:
            add("error", "deepmd-kit", "deepmd-kit is not installed in the endpoint environment",
                "pip install 'remote-al[endpoint]' in the environment that worker_init activates")
        elif driver.get("deepmd_kit") and ep_dp and _minor(ep_dp) != _minor(driver["deepmd_kit"]):
            add("warning", "deepmd-kit", f"endpoint has deepmd-kit {ep_dp}, driver {driver['deepmd_kit']}",
                "use one deepmd-kit version so models trained remotely load locally")
        elif ep_dp:
            add("ok", "deepmd-kit", f"deepmd-kit {ep_dp}")
        if pool in gpu_pools:
            gpus = rep.get("gpus") or []
            if not gpus:
                add("error", "gpus", f"no GPU visible to the worker (CUDA_VISIBLE_DEVICES="
                    f"{rep.get('cuda_visible_devices')!r}, torch {rep.get('torch')})",
                    "check the template's available_accelerators / select ngpus, that worker_init "
                    "loads the CUDA module, and that torch is a CUDA build")
            else:
                add("ok", "gpus", f"{len(gpus)} visible: {', '.join(map(str, gpus))}")

    dp = {p: r.get("deepmd_kit") for p, r in reports.items() if r.get("deepmd_kit")}
    if len(set(dp.values())) > 1:
        found.append(Finding("warning", "deepmd-kit", f"pools differ: {dp}",
                             "install one deepmd-kit version on every endpoint"))
    return found


def doctor(
    team: TeamFile | str | Path,
    client=None,
    *,
    backend: GlobusBackend | None = None,
    timeout_s: float = 600.0,
    driver: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Check every endpoint of the team file; return findings, each with its fix.

    Asks each endpoint's status and allow-list, runs the registered ``probe`` function on
    it and compares versions with the driver's (:func:`compare_environments`). A probe
    still queued after ``timeout_s`` (a batch job waiting for nodes) is reported, not
    waited for.
    """
    from concurrent.futures import wait

    from driver.backends.globus import GlobusBackend
    from driver.errors import BackendUnavailable, RemoteALError

    team = team if isinstance(team, TeamFile) else read_team(team)
    backend = backend or GlobusBackend(team, meta={}, client=client)
    found: list[Finding] = []
    futures = {}
    try:
        for pool in team.endpoints:
            try:
                status = backend.endpoint_status(pool)
            except RemoteALError as err:
                found.append(Finding("error", "endpoint-status", str(err), pool=pool))
                continue
            if status != "online":
                found.append(Finding("error", "endpoint-status", f"endpoint {team.endpoints[pool]} "
                                     f"is {status}", "on the cluster: globus-compute-endpoint start <name>",
                                     pool))
                continue
            found.append(Finding("ok", "endpoint-status", "online", pool=pool))
            found.extend(_check_allowlist(backend, team, pool))
            try:
                futures[pool] = backend.submit(pool, "probe", {}, task_key=f"doctor-{pool}").future
            except (BackendUnavailable, RemoteALError) as err:
                found.append(Finding("error", "probe", str(err), pool=pool))
        done, not_done = wait(list(futures.values()), timeout=timeout_s)
        reports = {}
        for pool, fut in futures.items():
            if fut in not_done:
                found.append(Finding("warning", "probe", f"no answer after {timeout_s:.0f} s (the "
                                     "endpoint may be waiting for a batch job)",
                                     "rerun doctor once the job runs; check `qstat`/`squeue`", pool))
            elif fut.exception() is not None:
                found.append(Finding("error", "probe", str(fut.exception()), pool=pool))
            else:
                reports[pool] = fut.result()
        gpu_pools = [p for p in team.endpoints if p.startswith("gpu")]
        found.extend(compare_environments(driver or driver_environment(), reports, gpu_pools))
    finally:
        backend.shutdown()
    return found


def _check_allowlist(backend: GlobusBackend, team: TeamFile, pool: str) -> list[Finding]:
    from driver.errors import RemoteALError

    try:
        allowed = backend.allowed_functions(pool)
    except RemoteALError as err:
        return [Finding("warning", "allowed-functions", f"could not read: {err}", pool=pool)]
    if allowed is None:
        return [Finding("warning", "allowed-functions", "the endpoint runs any function",
                        "render its config with --team team.toml (allowed_functions) and restart it",
                        pool)]
    missing = sorted(n for n, fid in team.functions.items() if fid not in allowed)
    if missing:
        level = "error" if "probe" in missing else "warning"
        return [Finding(level, "allowed-functions", f"the endpoint refuses {missing} of this team "
                        "file (tasks of these sent to this pool will fail)",
                        "remote-al endpoint render ... --team team.toml -o ~/.globus_compute/<name>, then "
                        "globus-compute-endpoint restart <name>", pool)]
    return [Finding("ok", "allowed-functions", "all team functions allowed", pool=pool)]
