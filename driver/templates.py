"""Endpoint config templates: render an endpoint directory and load it as the endpoint does.

**Templates** live in ``endpoints/``. globus-compute-endpoint 4.x keeps an endpoint's
engine in ``user_config_template.yaml.j2`` (it renders that file itself, per user
endpoint) and refuses an engine in ``config.yaml``; :func:`render_template` therefore
writes both files of an endpoint directory: ``config.yaml`` (display name, the team
file's function ids as ``allowed_functions``) and the engine template of a partition
(account, queue, ``worker_init``, sizes). :func:`load_rendered` loads the directory
with the endpoint package's own loader and renderer.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from driver.errors import ConfigError
from driver.team import check_uuid

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "endpoints"
TEMPLATE_SUFFIX = ".yaml.j2"
CORE_TEMPLATE = "config.yaml.j2"  # -> config.yaml of every endpoint
USER_TEMPLATE = "user_config_template.yaml.j2"  # the endpoint renders this one itself
USER_SCHEMA = "user_config_schema.json"
MULTI_USER = "multi-user"  # ships USER_TEMPLATE and USER_SCHEMA as they are


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
