"""The team file: which Globus Compute endpoints and registered functions a team uses.

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
:func:`register_functions` registers the remote functions and writes the file, with the
driver's versions (:func:`driver_environment`) it was registered with.
"""

from __future__ import annotations

import json
import math
import re
import sys
import uuid
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from driver.backends.base import FUNCTIONS
from driver.errors import ConfigError

TEAM_FORMAT = 1
# Tasks kept in flight per pool when the team file has no [slots] entry.
DEFAULT_SLOTS = {"gpu": 4, "cpu": 1}


@dataclass(frozen=True)
class Site:
    """Where a site keeps campaign data, and its Globus collection (for transfers)."""

    root: str
    collection: str | None = None
    # the pools whose endpoints see this filesystem ("gpu", "cpu"), and "driver" for the
    # machine the driver runs on; a pool on no site shares the driver's filesystem
    pools: tuple[str, ...] = ()


@dataclass(frozen=True)
class TeamFile:
    endpoints: Mapping[str, str] = field(default_factory=dict)  # pool -> endpoint id
    functions: Mapping[str, str] = field(default_factory=dict)  # name -> function id
    group: str | None = None
    slots: Mapping[str, int] = field(default_factory=dict)
    user_endpoint_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sites: Mapping[str, Site] = field(default_factory=dict)
    registered_with: Mapping[str, str] = field(default_factory=dict)  # versions

    def endpoint_id(self, pool: str) -> str:
        try:
            return self.endpoints[pool]
        except KeyError:
            raise ConfigError(
                f"team.endpoints.{pool}",
                f"no endpoint for pool {pool!r} (has: {sorted(self.endpoints) or 'none'})",
                f"remote-al endpoint register --{pool}-endpoint <id> -o <team.toml>",
            ) from None

    def function_id(self, name: str) -> str:
        try:
            return self.functions[name]
        except KeyError:
            raise ConfigError(
                f"team.functions.{name}",
                "function not registered",
                "remote-al endpoint register -o <team.toml>",
            ) from None

    def require_functions(self, names: Iterable[str], source: str = "") -> None:
        """ConfigError naming every function of ``names`` the file has no id for: a team
        file registered before a function existed stops a campaign here, before any work,
        not at the first task that needs it."""
        missing = sorted(set(names) - set(self.functions))
        if missing:
            raise ConfigError(
                "team.functions",
                f"the campaign uses {', '.join(missing)}, which this team file does not register "
                "(registered with an older remote-al)",
                "register again with `remote-al endpoint register -o <team.toml>`, then let the "
                "endpoints allow the new ids: `remote-al endpoint render <template> ... --team <team.toml> -o "
                "~/.globus_compute/<name>` and `globus-compute-endpoint restart <name>`",
                source=source,
            )

    def function_ids(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """``{name: function id}`` for ``names`` (all registered functions by default)."""
        return {n: self.function_id(n) for n in (names or sorted(self.functions))}

    def slots_for(self, pool: str) -> int:
        return int(self.slots.get(pool, DEFAULT_SLOTS.get(pool, 1)))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": TEAM_FORMAT}
        if self.group:
            data["group"] = self.group
        data["endpoints"] = dict(self.endpoints)
        data["functions"] = dict(self.functions)
        if self.slots:
            data["slots"] = dict(self.slots)
        if self.user_endpoint_config:
            data["user_endpoint_config"] = {k: dict(v) for k, v in self.user_endpoint_config.items()}
        if self.sites:
            data["sites"] = {
                name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(site).items()
                       if v is not None and v != ()}
                for name, site in self.sites.items()
            }
        if self.registered_with:
            data["registered_with"] = dict(self.registered_with)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "team") -> TeamFile:
        fmt = data.get("format", TEAM_FORMAT)
        if fmt != TEAM_FORMAT:
            raise ConfigError(f"{source}.format", f"unknown format {fmt!r}", f"use format = {TEAM_FORMAT}")
        known = {"format", "group", "endpoints", "functions", "slots", "user_endpoint_config",
                 "sites", "registered_with"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(source, f"unknown keys {sorted(unknown)}", f"keep to {sorted(known)}")

        def ids(key: str) -> dict[str, str]:
            table = _table(data, key, source)
            for name, value in table.items():
                check_uuid(value, f"{source}.{key}.{name}")
            return {str(k): str(v) for k, v in table.items()}

        functions = ids("functions")
        stray = set(functions) - set(FUNCTIONS)
        if stray:
            raise ConfigError(f"{source}.functions", f"unknown functions {sorted(stray)}",
                              f"names are {sorted(FUNCTIONS)}")
        group = data.get("group")
        if group is not None:
            check_uuid(group, f"{source}.group")
        slots = _table(data, "slots", source)
        for pool, n in slots.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"{source}.slots.{pool}", f"{n!r} is not a positive integer")
        uec = _table(data, "user_endpoint_config", source)
        for pool, conf in uec.items():
            if not isinstance(conf, Mapping):
                raise ConfigError(f"{source}.user_endpoint_config.{pool}", "must be a table")
        sites = {}
        for name, site in _table(data, "sites", source).items():
            where = f"{source}.sites.{name}"
            if not isinstance(site, Mapping) or not isinstance(site.get("root"), str):
                raise ConfigError(where, "needs a string 'root' path")
            if set(site) - {"root", "collection", "pools"}:
                raise ConfigError(where, f"unknown keys {sorted(set(site) - {'root', 'collection', 'pools'})}")
            if site.get("collection") is not None:
                check_uuid(site["collection"], f"{where}.collection")
            pools = site.get("pools", [])
            if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
                raise ConfigError(f"{where}.pools", f"{pools!r} is not a list of pool names",
                                  'e.g. pools = ["gpu"], or ["driver"] for the driver\'s machine')
            sites[name] = Site(root=site["root"], collection=site.get("collection"), pools=tuple(pools))
        return cls(
            endpoints=ids("endpoints"),
            functions=functions,
            group=group,
            slots=dict(slots),
            user_endpoint_config={k: dict(v) for k, v in uec.items()},
            sites=sites,
            registered_with={k: str(v) for k, v in _table(data, "registered_with", source).items()},
        )


def _table(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}.{key}", "must be a table")
    return value


def check_uuid(value: Any, where: str) -> None:
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise ConfigError(where, f"{value!r} is not a UUID") from None


def read_team(path: str | Path) -> TeamFile:
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "team file not found",
                          "remote-al endpoint register -o <team.toml> (or ask your team for it)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), f"not valid TOML: {err}") from None
    return TeamFile.from_dict(data, source=str(path))


TEAM_HEADER = """\
# remote-al team file: which Globus Compute endpoints and registered functions to use.
# Share it with teammates; it holds ids only, no secrets.
"""


def write_team(team: TeamFile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_toml(team.to_dict(), header=TEAM_HEADER))
    tmp.replace(path)
    return path


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(data: Mapping[str, Any], header: str = "") -> str:
    """TOML text of nested mappings of str/int/float/bool/lists (``None`` is left out)."""
    lines: list[str] = [header.rstrip("\n")] if header else []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
        tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not tables):
            lines.extend(["", f"[{prefix}]"])
        for key, value in scalars.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            emit(f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key), value)

    emit("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


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
