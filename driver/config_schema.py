"""The campaign file's models explained: pydantic errors as ``ConfigError`` (the field as
the user wrote it, the problem, the fix) and the documentation (JSON Schema, bounds table).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError

from driver.config_models import SECTIONS, CampaignConfig, StructureSpec
from driver.errors import ConfigError


# ------------------------------------------------------------- error translation
def field_path(loc) -> str:
    """('structures', 2, 'temperatures_K', 0) -> 'structures[2].temperatures_K[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_tag(part) -> bool:
    """pydantic's loc entries that name a union member or validator, not a key."""
    return isinstance(part, str) and (any(c in part for c in "[( ") or part.startswith("function-"))


def _annotation_at(root, loc):
    """The annotation and bound metadata at ``loc`` below the model or dataclass ``root``."""
    ann, meta = root, []
    for part in loc:
        ann = _strip_optional(ann)
        if isinstance(part, int):
            args = [a for a in typing.get_args(ann) if a is not Ellipsis]
            ann, meta = (args[0] if args else Any), []
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and part in ann.model_fields:
            info = ann.model_fields[part]
            ann, meta = info.annotation, list(info.metadata)
        elif isinstance(ann, type) and dataclasses.is_dataclass(ann):
            ann, meta = typing.get_type_hints(ann).get(part, Any), []
        else:
            return Any, []
        if typing.get_origin(ann) is Annotated:
            base, *extra = typing.get_args(ann)
            ann = base
            meta += [m for x in extra for m in (x.metadata if hasattr(x, "metadata") else [x])]
    return ann, meta


def _strip_optional(ann):
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else ann
    return ann


def _keys(ann) -> list[str]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [k for k in ann.model_fields if k != "source"]
    if isinstance(ann, type) and dataclasses.is_dataclass(ann):
        return [f.name for f in dataclasses.fields(ann)]
    return []


def _bounds(meta) -> str:
    """'[0, 1000]', '(0, 10]', ... from annotated-types bound metadata."""
    lo = hi = None
    lo_open = hi_open = False
    for m in meta:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    if lo is None and hi is None:
        return ""
    return (("(" if lo_open else "[") + ("-inf" if lo is None else _number(lo)) + ", "
            + ("inf" if hi is None else _number(hi)) + (")" if hi_open else "]"))


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _show(value) -> str:
    """A value as TOML writes it (true, "text", [1, 2], nan)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dict, list, tuple, str)):
        text = json.dumps(value, default=str, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."
    return repr(value)


def _problem_and_fix(err: dict, root, loc, prefix: tuple = ()) -> tuple[str, str]:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    ann, meta = _annotation_at(root, loc)
    span = _bounds(meta)
    within = f"use a value in {span} (bounds: docs/validation.md)" if span else ""
    if kind == "refused":
        return ctx["problem"], ctx.get("fix", "")
    if kind == "extra_forbidden":
        keys = _keys(_annotation_at(root, loc[:-1])[0])
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        where = field_path((*prefix, *loc[:-1])) or "the file"
        fix = (f"did you mean {close[0]!r}? " if close else "") + (f"valid keys in {where} are {keys}" if keys else "")
        return "unknown key", fix.strip()
    if kind == "missing":
        return "required key is missing", f"add {loc[-1]} = ..."
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_show(value)}", within or "write a whole number without quotes"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_show(value)}", within or "write a number without quotes"
    if kind == "finite_number":
        return f"must be a finite number, got {_show(value)}", within or "write a finite number (not nan or inf)"
    if kind == "bool_type":
        return f"expected true or false, got {_show(value)}", "write true or false (no quotes)"
    if kind == "string_type":
        return f"expected a string, got {_show(value)}", "write the value in quotes"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_show(value)}", "write a list in brackets, e.g. [1, 2]"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type", "dataclass_type"):
        return f"expected a table, got {_show(value)}", "write a TOML table ({key = value} or a [section])"
    if kind == "literal_error":
        choices = [_show(c) for c in typing.get_args(ann)] if typing.get_origin(ann) is Literal else []
        listed = (", ".join(choices[:-1]) + " or " + choices[-1]) if len(choices) > 1 else ctx.get("expected", "")
        return f"{_show(value)} is not a valid choice", f"use {listed}"
    if kind in ("greater_than_equal", "greater_than"):
        limit = ctx.get("ge", ctx.get("gt"))
        if limit == 0:
            what = "non-negative" if kind == "greater_than_equal" else "positive"
        elif limit == 1 and kind == "greater_than_equal" and ann is int:
            what = "positive"
        else:
            what = f"at least {limit}" if kind == "greater_than_equal" else f"greater than {limit}"
        return f"must be {what}, got {_show(value)}", within or f"use a value {'>=' if kind == 'greater_than_equal' else '>'} {limit}"
    if kind in ("less_than_equal", "less_than"):
        limit = ctx.get("le", ctx.get("lt"))
        what = f"at most {limit}" if kind == "less_than_equal" else f"below {limit}"
        return (f"must be {what} (the documented upper bound), got {_show(value)}",
                within or f"use a value {'<=' if kind == 'less_than_equal' else '<'} {limit}")
    if kind in ("too_short", "too_long"):
        n = ctx.get("actual_length")
        if kind == "too_short" and ctx.get("min_length") == 1:
            return "is empty", "give at least one value"
        lo = [m.min_length for m in meta if getattr(m, "min_length", None) is not None]
        hi = [m.max_length for m in meta if getattr(m, "max_length", None) is not None]
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        if lo and hi and lo == hi:
            return f"has {n} items, needs exactly {limit}", f"give exactly {limit} values"
        return (f"has {n} items, {'needs at least' if kind == 'too_short' else 'allows at most'} {limit}",
                f"give {'at least' if kind == 'too_short' else 'at most'} {limit}")
    if kind in ("string_too_short", "string_too_long"):
        return err["msg"].replace("String", "the text"), "give a non-empty name of at most 100 characters"
    return err["msg"], within


def config_error(exc: ValidationError, root=None, prefix: tuple = (), source: str = "") -> ConfigError:
    """The first problem of a pydantic ``ValidationError`` as a ConfigError: the field path
    with indexes (``prefix`` + pydantic's location), the problem and the fix. ``root`` is the
    model (or dataclass) validated, for the did-you-mean and the bounds."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not _is_tag(p))
    problem, fix = _problem_and_fix(err, root or CampaignConfig, loc, prefix)
    # a container's "too short after validation" only echoes the item that failed
    more = [e for e in errors[1:] if tuple(e["loc"]) != tuple(err["loc"])[:len(e["loc"])]]
    if more:
        fix = (fix + "; " if fix else "") + f"{len(more)} more problem(s) after this one"
    return ConfigError(field_path((*prefix, *loc)), problem, fix, source=source)


# ---------------------------------------------------------------- documentation
def campaign_schema() -> dict:
    """The JSON Schema of a campaign file (docs/campaign.schema.json)."""
    schema = CampaignConfig.model_json_schema()
    schema["title"] = "remote-al campaign file"
    schema["description"] = ("A remote-al campaign (TOML). Every key, type and bound; checks across fields, "
                             "of labeler settings, DeePMD-kit overrides and structure files: docs/validation.md.")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(campaign_schema(), indent=2, ensure_ascii=False) + "\n"


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin is Literal:
        return " / ".join(_show(a) for a in typing.get_args(ann))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(ann)[0])}"
    if origin is dict:
        return "table"
    if ann is StructureSpec.model_fields["metals"].annotation:
        return "string or table"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(ann, str(ann))


def _sizes(meta, unit: str) -> str:
    lo = next((m.min_length for m in meta if getattr(m, "min_length", None) is not None), None)
    hi = next((m.max_length for m in meta if getattr(m, "max_length", None) is not None), None)
    if lo is not None and lo == hi:
        return f"exactly {lo} {unit}"
    if lo is not None and hi is not None:
        return f"{lo} to {hi} {unit}"
    if hi is not None:
        return f"at most {hi} {unit}"
    return f"at least {lo} {unit}" if lo is not None else ""


def bounds_table() -> str:
    """Markdown table of every key of the campaign file: type, default, allowed range."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    models = [(name, ann) for name, ann in SECTIONS.items()]
    models.insert(1, ("structures[]", StructureSpec))
    for section, model in models:
        for key, info in model.model_fields.items():
            ann, meta = _annotation_at(model, (key,))
            if typing.get_origin(ann) is tuple:
                _, item_meta = _annotation_at(model, (key, 0))
                span = _bounds(item_meta)
                allowed = ", ".join(x for x in ((f"each in {span}" if span else ""), _sizes(meta, "items")) if x)
                tname = _type_name(ann)
            else:
                allowed = _bounds(meta) or (_sizes(meta, "characters") if ann is str else "")
                tname = _type_name(info.annotation)
            default = "required" if info.is_required() else _show(
                info.default_factory() if info.default_factory else info.default)
            rows.append(f"| `{section}.{key}` | {tname} | {default} | {allowed} | {info.description or ''} |")
    return "\n".join(rows) + "\n"
