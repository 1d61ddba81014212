"""Campaign configuration: a TOML file, validated before any work.

Every section is a frozen pydantic model (``extra="forbid"``, strict types, no NaN or
infinity, ``Field`` bounds with a description): an unknown key, a value of the wrong type,
a NaN, a negative or absurdly large size each raise ``ConfigError`` naming the field as the
user wrote it (``structures[2].temperatures_K[0]``), the problem and the fix. Unknown keys
get a did-you-mean. Checks that span fields (``validate``) and the labeler's own settings
(``labeler.settings``, checked by the labeler's settings class) follow. Checks that need
the structures themselves or DeePMD-kit run in ``driver.preflight``. docs/validation.md
lists every bound; ``campaign_schema()`` is the JSON Schema of the file
(docs/campaign.schema.json, ``remote-al schema``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from pydantic_core import PydanticCustomError

from driver.errors import ConfigError

KNOWN_ELEMENTS = {
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd",
    "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Sm",
    "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir",
    "Pt", "Au", "Hg", "Tl", "Pb", "Bi",
}

# Upper bounds of sizes that no field states alone (docs/validation.md).
MAX_STRUCTURES = 1000  # structures after the expansion of Li-content grids and orderings
MAX_SWEEP = 100_000  # explorations in one sweep: structures x temperatures x pressures x walkers
MAX_ATOMS = 5000  # atoms of one starting structure (driver.preflight)
MIN_VOLUME_PER_ATOM_A3 = 1.0  # cell volume per atom below which a structure is refused (preflight)

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an integer is accepted and becomes a float
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
TemperatureK = Annotated[float, Strict(), Field(gt=0, le=10_000)]
PressureGPa = Annotated[float, Strict(), Field(ge=-50, le=500)]
LiContent = Annotated[float, Strict(), Field(ge=0, le=1)]
Name = Annotated[str, Strict(), Field(min_length=1, max_length=100)]

# metals: a preset / formula, or {element = fraction}; stored as sorted ((element, fraction), ...)
_METALS_SCHEMA = {
    "anyOf": [
        {"type": "string", "description": "a preset (NMC811, NMC622, NMC111), an element or a formula (Ni0.9Al0.1)"},
        {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
         "description": "fractions of the transition-metal site, summing to 1"},
    ],
}


def _refuse(problem: str, fix: str = "") -> PydanticCustomError:
    """A validator's refusal; ``config_error`` turns it into a ConfigError with this fix."""
    return PydanticCustomError("refused", "{problem}", {"problem": problem, "fix": fix})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CampaignSection(_Section):
    name: Name = Field(description="campaign name; names the campaign directory")
    type_map: tuple[Str, ...] = Field(
        min_length=1, max_length=len(KNOWN_ELEMENTS),
        description='elements of the DeePMD-kit models, in type order, e.g. ["Li", "Ni", "O"]')
    seed: Int = Field(0, ge=0, le=1_000_000,
                      description="seed of every random choice (member seeds are ~1000 x it, kept below 2^32)")
    workdir: Str = Field("", description="campaign directory; default: campaigns/<name> next to the campaign file")
    max_rounds: Int = Field(2, ge=1, le=10_000, description="active-learning rounds at most")
    max_label_calls: Int = Field(0, ge=0, le=10_000_000, description="labeler (DFT) calls at most; 0: no budget")
    max_wall_hours: Float = Field(0.0, ge=0, le=10_000, description="wall-clock hours at most; 0: no budget")

    @field_validator("name")
    @classmethod
    def _directory_name(cls, name: str) -> str:
        if any(ch in name for ch in "/\\ ") or name in (".", ".."):
            raise _refuse(f"{name!r} is not a usable directory name", "use letters, digits, '-', '_' or '.'")
        return name

    @field_validator("type_map")
    @classmethod
    def _elements(cls, type_map: tuple[str, ...]) -> tuple[str, ...]:
        for el in type_map:
            if el not in KNOWN_ELEMENTS:
                close = difflib.get_close_matches(el, sorted(KNOWN_ELEMENTS), n=1)
                raise _refuse(f"unknown element {el!r}", f"did you mean {close[0]!r}?" if close else
                              "use element symbols such as 'Li', 'Ni', 'O'")
        if len(set(type_map)) != len(type_map):
            raise _refuse("lists an element twice", "list each element once")
        return type_map


class BackendSection(_Section):
    kind: Literal["local", "globus"] = Field("local", description="where the remote functions run")
    engine: Literal["process", "gce"] = Field(
        "process", description="local only: ProcessPoolEngine ('process') or GlobusComputeEngine ('gce')")
    gpu_slots: Int = Field(2, ge=1, le=10_000, description="tasks at once on the GPU pool (MD, UQ, training)")
    cpu_slots: Int = Field(2, ge=1, le=10_000, description="tasks at once on the CPU pool (labeling)")
    team: Str = Field("", description="globus only: team file with endpoint and function ids")
    max_attempts: Int = Field(3, ge=1, le=100, description="tries of a failing task before it is quarantined")
    retry_backoff_s: Float = Field(5.0, ge=0, le=86_400, description="seconds before a failed task is retried")
    workload: Literal["real", "simulated"] = Field(
        "real", description="'real': the registered functions; 'simulated': same contracts, sleeps instead "
                            "of physics (a dry run of the steering)")


class StructureSpec(_Section):
    """One starting structure. A ``[[structures]]`` entry with ``li_contents`` or
    ``orderings > 1`` expands into several (``expand_spec``); each remembers the index of
    its entry (``entry``) so messages point at what the user wrote."""

    name: Name = Field(description="structure name (unique after expansion)")
    generator: Literal["layered", "file"] = Field(
        "layered", description="'layered': a layered LiMO2 cell built in code; 'file': read from `file`")
    metal: Str = Field("Ni", description="transition metal of a layered cell when `metals` is not given")
    metals: Annotated[
        str | tuple[tuple[str, float], ...], WithJsonSchema(_METALS_SCHEMA)
    ] = Field("", description="transition-metal site: a preset (NMC811, ...) or a table of fractions "
                              "({Ni = 0.9, Al = 0.1}); '' means `metal` alone")
    li_content: LiContent = Field(1.0, description="Li content x of Li_x MO2")
    li_contents: tuple[LiContent, ...] = Field(
        (), max_length=100, description="a grid of Li contents: one structure per value")
    supercell: tuple[Annotated[int, Strict(), Field(ge=1, le=16)], ...] = Field(
        (2, 2, 1), min_length=3, max_length=3, description="repeats of the 4-atom rhombohedral cell")
    orderings: Int = Field(1, ge=1, le=100,
                           description="distinct Li/dopant orderings per composition, lowest Ewald energy first")
    ordering: Int = Field(0, ge=0, le=10_000, description="which ordering (set by the expansion of `orderings`)")
    file: Str = Field("", description="generator 'file': structure file (POSCAR, CIF, extxyz, ...), "
                                      "relative to the campaign file")
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="seed of the ordering sampling")
    temperatures_K: tuple[TemperatureK, ...] = Field(
        (), max_length=100, description="MD temperatures of this structure; empty: [exploration]'s")
    pressures_GPa: tuple[PressureGPa, ...] = Field(
        (), max_length=100, description="NPT pressures of this structure; empty: [exploration]'s")
    ensemble: Literal["", "nvt", "npt"] = Field("", description="MD ensemble; '': [exploration]'s")
    steps: Int = Field(0, ge=0, le=10_000_000, description="MD steps; 0: [exploration]'s")
    n_frames: Int = Field(0, ge=0, le=1000, description="frames kept per MD run; 0: [exploration]'s")
    group: Str = Field("", description="the [[structures]] entry this one was expanded from (its name)")

    _entry: int | None = PrivateAttr(default=None)

    @field_validator("metals", mode="before")
    @classmethod
    def _canonical_metals(cls, value: Any) -> Any:
        """A table (or its stored form, a list of pairs) -> sorted ((element, fraction), ...):
        hashable and canonical."""
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            pairs = list(value.items())
        elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            pairs = [tuple(p) for p in value]
        else:
            raise _refuse(f"expected a preset name or a table of fractions, got {value!r}",
                          'write metals = "NMC811" or metals = {Ni = 0.9, Al = 0.1}')
        out = []
        for el, frac in pairs:
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not math.isfinite(frac):
                raise _refuse(f"fraction of {el!r} must be a finite number, got {frac!r}",
                              "write fractions such as {Ni = 0.8, Co = 0.1, Mn = 0.1}")
            out.append((str(el), float(frac)))
        return tuple(sorted(out))

    @property
    def entry(self) -> int | None:
        """Index of the user's [[structures]] entry this structure came from (None if unknown)."""
        return self._entry

    def __eq__(self, other: object) -> bool:  # the entry index is bookkeeping, not content
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))


class InitialSection(_Section):
    n_per_structure: Int = Field(8, ge=1, le=1000, description="initial training frames per structure (labeled)")
    rattle_A: Float = Field(0.05, ge=0, le=1.0, description="Gaussian displacement of the initial frames, A")
    strain: Float = Field(0.02, ge=0, le=0.5, description="largest random strain of the initial frames")
    relax: Bool = Field(False, description="relax each structure with the labeler first and build the "
                                           "initial data and MD starts around it")


class ExplorationSection(_Section):
    temperatures_K: tuple[TemperatureK, ...] = Field((600.0,), min_length=1, max_length=100,
                                                     description="MD temperatures, K")
    steps: Int = Field(1000, ge=1, le=10_000_000, description="MD steps per exploration")
    timestep_fs: Float = Field(1.0, gt=0, le=10, description="MD time step, fs")
    n_frames: Int = Field(10, ge=1, le=1000, description="frames kept per MD run (they travel in the result)")
    walkers: Int = Field(1, ge=1, le=1000, description="independent MD runs per structure, temperature and pressure")
    ensemble: Literal["nvt", "npt"] = Field("nvt", description="MD ensemble")
    pressure_GPa: PressureGPa = Field(0.0, description="NPT pressure, GPa")
    pressures_GPa: tuple[PressureGPa, ...] = Field((), max_length=100,
                                                   description="NPT: one run per pressure (default: pressure_GPa)")
    engine: Literal["ase", "lammps"] = Field("ase", description="MD engine (lammps: pair_style deepmd)")
    guard: Bool = Field(True, description="stop MD when the ensemble's force width leaves the trust window")
    relax: Bool = Field(False, description="also explore by relaxing each structure with one member")
    relax_steps: Int = Field(200, ge=1, le=100_000, description="steps of a relaxation exploration at most")


class SelectionSection(_Section):
    confidence: Float = Field(0.95, gt=0, lt=1, description="confidence level of the Student-t width")
    force_threshold: Float = Field(0.15, ge=0, le=100, description="eV/A, CI width above which a frame is a candidate")
    force_upper: Float = Field(5.0, gt=0, le=1000, description="eV/A, above: unphysical, recorded and not labeled")
    energy_threshold: Float = Field(0.0, ge=0, le=100, description="eV/atom energy width threshold; 0: not used")
    max_per_round: Int = Field(12, ge=1, le=100_000, description="labels per round at most")
    max_per_exploration: Int = Field(0, ge=0, le=100_000,
                                     description="asynchronous mode: labels from one exploration at most; 0: no limit")
    min_distance_A: Float = Field(1.2, ge=0, le=5, description="frames with atoms closer than this are not labeled, A")
    converged_share: Float = Field(0.97, gt=0, le=1,
                                   description="stop when this share of explored frames is confident")
    dedup_tolerance_A: Float = Field(0.05, ge=0, le=1, description="frames closer than this are duplicates, A")
    force_threshold_mode: Literal["fixed", "calibrated"] = Field(
        "fixed", description="'fixed': force_threshold as given; 'calibrated': the width above which the "
                             "held-out max force error exceeds target_force_error")
    target_force_error: Float = Field(0.2, gt=0, le=100, description="eV/A, the force error accepted (calibrated mode)")
    calibration_min_frames: Int = Field(10, ge=1, le=1_000_000,
                                        description="held-out frames a calibration needs")


class LabelerSection(_Section):
    kind: Literal["chgnet", "gpaw", "vasp"] = Field("chgnet", description="labeler (chgnet: a stand-in for DFT)")
    batch_size: Int = Field(4, ge=1, le=1000, description="structures per labeling task")
    settings: dict[Str, Any] = Field(default_factory=dict, description=(
        "the labeler's settings, checked by its settings class (VaspSettings, GPAWSettings, CHGNetSettings; "
        "docs/labelers.md)"))


class TrainingSection(_Section):
    ensemble_size: Int = Field(4, ge=2, le=128, description="ensemble members (2 at least for a spread)")
    subset_fraction: Float = Field(0.9, gt=0, le=1, description="share of the frames each member trains on")
    numb_steps: Int = Field(1500, ge=1, le=10_000_000, description="DeePMD-kit steps of generation 0")
    numb_steps_continue: Int = Field(800, ge=1, le=10_000_000, description="steps of a continued generation")
    continue_from_previous: Bool = Field(True, description="continue from the previous generation's checkpoint")
    deepmd: dict[Str, Any] = Field(default_factory=dict, description=(
        "input.json overrides (deep-merged), checked with DeePMD-kit's own argument checker"))


class SteeringSection(_Section):
    mode: Literal["async", "sync"] = Field("async", description="'async': partitions overlap; 'sync': train, "
                                                                "explore, label in turn (as DP-GEN)")
    retrain_after: Int = Field(0, ge=0, le=100_000,
                               description="new training labels that start the next generation; 0: max_per_round")
    max_sweeps_per_generation: Int = Field(3, ge=1, le=1000, description="async: exploration sweeps per generation")
    converged_window: Int = Field(0, ge=0, le=1_000_000,
                                  description="explorations the convergence share looks back on; 0: one sweep")
    lookahead_rounds: Int = Field(1, ge=0, le=100, description="async: rounds explored ahead of training")
    recheck_selections: Bool = Field(True, description="re-score unsubmitted selections with a new ensemble")


class VolumeSection(_Section):
    """The volume-change result: relaxed volume and lattice against Li content
    (driver.volume). Present in the file: on, unless ``enabled = false``."""

    enabled: Bool = Field(False, description="compute the volume curve (on when [volume] is present)")
    structures: tuple[Str, ...] = Field((), max_length=MAX_STRUCTURES, description=(
        "names or groups on the curve; default: every layered structure's ordering 0"))
    check: tuple[Str, ...] = Field((), max_length=MAX_STRUCTURES,
                                   description="also relaxed with the labeler (3 or more recommended)")
    fmax: Float = Field(0.02, gt=0, le=10, description="relaxation force criterion, eV/A")
    max_steps: Int = Field(300, ge=1, le=100_000, description="relaxation steps at most")
    tolerance: Float = Field(0.02, gt=0, le=1, description="relative volume difference that passes the check")


class TestSection(_Section):
    n_initial_per_structure: Int = Field(2, ge=0, le=1000, description="held-out initial frames per structure")
    n_per_round: Int = Field(4, ge=0, le=10_000, description="held-out frames per round")


class CampaignConfig(_Section):
    campaign: CampaignSection
    structures: tuple[StructureSpec, ...] = Field(min_length=1, description="[[structures]] entries")
    backend: BackendSection = BackendSection()
    initial: InitialSection = InitialSection()
    exploration: ExplorationSection = ExplorationSection()
    selection: SelectionSection = SelectionSection()
    labeler: LabelerSection = LabelerSection()
    training: TrainingSection = TrainingSection()
    test: TestSection = TestSection()
    steering: SteeringSection = SteeringSection()
    volume: VolumeSection = VolumeSection()
    source: SkipJsonSchema[str] = Field("", exclude=True)  # path of the TOML file

    @property
    def directory(self) -> Path:
        return Path(self.campaign.workdir)


SECTIONS = {name: f.annotation for name, f in CampaignConfig.model_fields.items()
            if name not in ("structures", "source")}


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


# -------------------------------------------------------------------- parsing
def parse_config(data: dict, source: str | Path = "", base_dir: Path | None = None) -> CampaignConfig:
    """Build and validate a CampaignConfig from parsed TOML (or ``config_to_dict``'s output)."""
    src = str(source)
    if not isinstance(data, dict):
        raise ConfigError("campaign file", f"expected a table, got {type(data).__name__}", source=src)
    data = dict(data)
    allowed = [*SECTIONS, "structures"]
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(key, "unknown section",
                              (f"did you mean [{close[0]}]? " if close else "") + f"valid sections are {sorted(allowed)}",
                              source=src)
    if "campaign" not in data:
        raise ConfigError("campaign", "missing section", "add [campaign] with name and type_map", source=src)
    raw_structs = data.get("structures")
    if not raw_structs or not isinstance(raw_structs, list):
        raise ConfigError("structures", "at least one [[structures]] entry is required",
                          'add [[structures]] with name = "..."', source=src)
    if len(raw_structs) > MAX_STRUCTURES:
        raise ConfigError("structures", f"{len(raw_structs)} entries, above the bound {MAX_STRUCTURES}",
                          "split the campaign", source=src)
    if isinstance(data.get("volume"), dict) and "enabled" not in data["volume"]:
        data["volume"] = {**data["volume"], "enabled": True}
    try:
        cfg = CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, CampaignConfig, source=src) from None

    try:
        return _finish(cfg, source, base_dir)
    except ConfigError as exc:
        exc.source = exc.source or src
        raise


def _finish(cfg: CampaignConfig, source, base_dir) -> CampaignConfig:
    """Expansion, paths, cross-field checks and the labeler's settings check."""
    structures = [x for i, s in enumerate(cfg.structures) for x in expand_spec(s, i)]
    if len(structures) > MAX_STRUCTURES:
        raise ConfigError("structures", f"the entries expand into {len(structures)} structures, above the "
                          f"bound {MAX_STRUCTURES}", "use fewer Li contents or orderings")
    base_dir = base_dir or (Path(source).parent if source else Path.cwd())
    camp = cfg.campaign
    workdir = Path(camp.workdir) if camp.workdir else Path("campaigns") / camp.name
    if not workdir.is_absolute():
        workdir = (base_dir / workdir).resolve()
    resolved = []
    for s in structures:
        if s.generator == "file" and s.file and not Path(s.file).is_absolute():
            s = _copy_spec(s, file=str((base_dir / s.file).resolve()))
        resolved.append(s)
    cfg = cfg.model_copy(update={"structures": tuple(resolved), "source": str(source),
                                 "campaign": camp.model_copy(update={"workdir": str(workdir)})})
    validate(cfg)
    check_labeler_settings(cfg.labeler.kind, cfg.labeler.settings)
    return cfg


def _copy_spec(spec: StructureSpec, **update) -> StructureSpec:
    out = spec.model_copy(update=update)
    out._entry = spec._entry
    return out


def expand_spec(spec: StructureSpec, index: int) -> list[StructureSpec]:
    """One [[structures]] entry -> one structure per (Li content, ordering).

    Names: ``NAME-x0.5`` per value of ``li_contents``, ``-o1`` per ordering after the
    first (``orderings > 1``); ``group`` keeps the entry's name; ``entry`` is ``index``."""
    where = f"structures[{index}]"
    if spec.orderings < 1:
        raise ConfigError(f"{where}.orderings", f"must be 1 or more, got {spec.orderings}")
    if spec.generator != "layered" and (spec.li_contents or spec.orderings > 1):
        raise ConfigError(f"{where}.li_contents", "a grid of Li contents or orderings needs generator 'layered'",
                          "set generator = 'layered' or give one file per entry")
    contents = spec.li_contents or (spec.li_content,)
    out = []
    for x in contents:
        for k in range(spec.orderings):
            name = spec.name + (f"-x{x:g}" if spec.li_contents else "") + (f"-o{k}" if k else "")
            one = spec.model_copy(update=dict(name=name, li_content=float(x), li_contents=(),
                                              ordering=spec.ordering + k, orderings=1,
                                              group=spec.group or spec.name))
            one._entry = index
            out.append(one)
    return out


def config_to_dict(cfg: CampaignConfig) -> dict:
    """The parsed configuration as plain data that ``parse_config`` reads back to an equal
    config (stored in the campaign state, so reports need no campaign file)."""
    return json.loads(json.dumps(cfg.model_dump(mode="json", exclude={"source"})))


def load_config(path: str | Path) -> CampaignConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "campaign file not found" if not path.exists() else "is not a file",
                          "give the path of a campaign .toml file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not a text file (byte {exc.start} is not UTF-8)",
                          "give a TOML campaign file", source=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}", "fix the TOML syntax at that line",
                          source=str(path)) from None
    return parse_config(data, source=path.resolve(), base_dir=path.resolve().parent)


def campaign_directory(target: str | Path) -> Path:
    """The campaign directory of a campaign TOML file, or ``target`` itself (a directory)."""
    p = Path(target)
    if p.is_file() and p.suffix == ".toml":
        return load_config(p).directory
    return p


def override(cfg: CampaignConfig, dotted: str, value: Any, option: str) -> CampaignConfig:
    """``cfg`` with ``section.key`` set to ``value`` (a command-line override), validated
    like the file; a bad value is a ConfigError naming ``option``."""
    section, key = dotted.split(".")
    model = getattr(cfg, section)
    try:
        new = type(model).model_validate({**model.model_dump(), key: value})
    except ValidationError as exc:
        err = config_error(exc, type(model))
        raise ConfigError(option, err.problem, err.fix) from None
    return cfg.model_copy(update={section: new})


def spec_metals(spec: StructureSpec) -> dict[str, float]:
    """Transition-metal fractions of a layered structure spec."""
    from remote_al.composition import parse_metals

    metals = spec.metals
    if isinstance(metals, tuple):
        metals = dict(metals)
    return parse_metals(metals if metals not in ("", None) else spec.metal)


def entry_field(spec: StructureSpec, position: int, key: str = "") -> str:
    """``structures[i].key`` with i the user's [[structures]] entry of ``spec``."""
    i = spec.entry if spec.entry is not None else position
    return f"structures[{i}]" + (f".{key}" if key else "")


# ---------------------------------------------------------- cross-field checks
def validate(cfg: CampaignConfig) -> None:
    """Checks that span fields (each field alone is checked by its model); raises
    ConfigError naming the field."""
    c = cfg.campaign
    b = cfg.backend
    if b.kind == "globus" and not b.team:
        raise ConfigError("backend.team", "the globus backend needs a team file", "run `remote-al endpoint register`")

    names: set[str] = set()
    for i, s in enumerate(cfg.structures):
        if s.name in names:
            raise ConfigError(entry_field(s, i, "name"), f"duplicate structure name {s.name!r}",
                              "give each [[structures]] entry its own name")
        names.add(s.name)
        if s.generator == "layered":
            if s.metal not in KNOWN_ELEMENTS:
                close = difflib.get_close_matches(s.metal, sorted(KNOWN_ELEMENTS), n=1)
                raise ConfigError(entry_field(s, i, "metal"), f"unknown element {s.metal!r}",
                                  f"did you mean {close[0]!r}?" if close else "use an element symbol such as 'Ni'")
            try:
                metals = spec_metals(s)
            except ValueError as exc:
                raise ConfigError(entry_field(s, i, "metals"), str(exc),
                                  'write a preset ("NMC811") or fractions summing to 1 ({Ni = 0.9, Al = 0.1})') from None
            for el in ("Li", *metals, "O"):
                if el not in c.type_map:
                    raise ConfigError(
                        "campaign.type_map",
                        f"element {el!r} of structure {s.name!r} is missing from the type map",
                        f"add {el!r} to campaign.type_map",
                    )
            from remote_al.composition import site_counts

            try:
                site_counts(metals, s.li_content, s.supercell)
            except ValueError as exc:
                raise ConfigError(entry_field(s, i, "supercell"), str(exc),
                                  "choose a supercell whose sites hold the composition in whole atoms") from None
        elif not s.file:
            raise ConfigError(entry_field(s, i, "file"), "generator 'file' needs a file path",
                              'add file = "POSCAR" (relative to the campaign file)')

    v = cfg.volume
    groups = {s.group for s in cfg.structures} | names
    for key in ("structures", "check"):
        for k, n in enumerate(getattr(v, key)):
            if n not in groups:
                close = difflib.get_close_matches(n, sorted(groups), n=1)
                raise ConfigError(f"volume.{key}", f"no structure or group named {n!r} (item {k} of the list)",
                                  (f"did you mean {close[0]!r}? " if close else "")
                                  + f"names are {sorted(names)}; groups {sorted({s.group for s in cfg.structures})}")
    if v.enabled and not [s for s in cfg.structures if s.generator == "layered"]:
        raise ConfigError("volume", "the volume curve needs layered structures (Li content and lattice known)",
                          "set enabled = false in [volume] or add a layered structure")

    e = cfg.exploration
    sweep = cfg.training.ensemble_size * len(cfg.structures) if e.relax else 0
    for s in cfg.structures:
        npt = (s.ensemble or e.ensemble) == "npt"
        n_p = len(s.pressures_GPa or e.pressures_GPa or (e.pressure_GPa,)) if npt else 1
        sweep += len(s.temperatures_K or e.temperatures_K) * n_p * e.walkers
    if sweep > MAX_SWEEP:
        raise ConfigError("exploration.walkers", f"one exploration sweep would run {sweep} MD runs "
                          f"(structures x temperatures x pressures x walkers), above the bound {MAX_SWEEP}",
                          "use fewer walkers, temperatures, pressures or structures")

    s = cfg.selection
    if s.force_upper <= s.force_threshold:
        raise ConfigError(
            "selection.force_upper",
            f"upper bound {s.force_upper} must exceed force_threshold {s.force_threshold}",
            "raise force_upper or lower force_threshold",
        )
    if cfg.initial.relax and cfg.labeler.kind == "vasp":
        raise ConfigError(
            "initial.relax", "remote-al does not run VASP relaxations",
            "set initial.relax = false and give relaxed structures as [[structures]] file entries",
        )


# Settings class of each labeler; its from_mapping raises LabelingError from a pydantic
# ValidationError (the field paths) when the settings cannot be used.
LABELER_SETTINGS = {
    "vasp": "remote_al.labelers.vasp_inputs:VaspSettings",
    "gpaw": "remote_al.labelers.gpaw:GPAWSettings",
    "chgnet": "remote_al.labelers.chgnet:CHGNetSettings",
}


def check_labeler_settings(kind: str, settings: dict, where: str = "labeler.settings") -> None:
    """The labeler's own check of its settings, before anything is submitted."""
    from importlib import import_module

    from remote_al.labelers.base import LabelingError

    module, name = LABELER_SETTINGS[kind].split(":")
    cls = getattr(import_module(module), name)
    try:
        cls.from_mapping(settings)
    except LabelingError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            raise config_error(cause, cls, prefix=tuple(where.split("."))) from None
        raise ConfigError(where, str(exc)) from None


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
