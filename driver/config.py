"""Campaign configuration: a TOML file, validated before any work.

Every section is a frozen pydantic model (``driver.config_models``: ``extra="forbid"``,
strict types, no NaN or infinity, ``Field`` bounds with a description): an unknown key, a value of the wrong type,
a NaN, a negative or absurdly large size each raise ``ConfigError`` naming the field as the
user wrote it (``structures[2].temperatures_K[0]``), the problem and the fix. Unknown keys
get a did-you-mean. Checks that span fields (``validate``) and the labeler's own settings
(``labeler.settings``, checked by the labeler's settings class) follow. Checks that need
the structures themselves or DeePMD-kit run in ``driver.preflight``. docs/validation.md
lists every bound; ``driver.config_schema.campaign_schema()`` is the JSON Schema of the
file (docs/campaign.schema.json, ``remote-al schema``).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from driver.config_models import (
    KNOWN_ELEMENTS,
    MAX_STRUCTURES,
    MAX_SWEEP,
    SECTIONS,
    CampaignConfig,
    StructureSpec,
)
from driver.config_schema import config_error
from driver.errors import ConfigError


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


def md_temperatures(cfg: CampaignConfig) -> list[float]:
    """Every MD temperature of a campaign, K (each structure's, else [exploration]'s)."""
    e = cfg.exploration
    return sorted({float(t) for spec in cfg.structures for t in (spec.temperatures_K or e.temperatures_K)})


def runs_labeler_relaxations(cfg: CampaignConfig) -> bool:
    """Whether round 0 relaxes each structure with the labeler: [initial] relax, frames
    around the relaxed structure, or labeler MD (which starts there)."""
    i, t = cfg.initial, cfg.test
    return bool(i.relax or i.n_relaxed_per_structure or t.n_relaxed_per_structure or i.n_md_per_structure
                or t.n_md_per_structure)


def functions_used(cfg: CampaignConfig) -> set[str]:
    """The registered functions (``driver.backends.base.FUNCTIONS``) the campaign submits:
    checked against the team file before any work, so a missing one is not found hours in."""
    used = {"md", "uq", "label", "train"}
    v = cfg.volume
    if v.enabled:
        used.add("relax")  # the ensemble's relaxations of the volume curve
    if runs_labeler_relaxations(cfg) or (v.enabled and v.check):
        used.add("relax_label")
    if cfg.initial.n_md_per_structure or cfg.test.n_md_per_structure:
        used.add("md_label")
    return used


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

    if e.md_start == "labeler_minimum" and not runs_labeler_relaxations(cfg):
        raise ConfigError("exploration.md_start", "'labeler_minimum' needs the labeler's relaxation of each "
                          "structure, and this campaign runs none",
                          "set [test] n_relaxed_per_structure (or [initial] n_relaxed_per_structure or "
                          "n_md_per_structure) to 1 or more, or [initial] relax = true")

    s = cfg.selection
    t = cfg.test
    if s.calibration_frames == "held_out" and not (t.n_initial_per_structure or t.n_per_round
                                                   or t.n_relaxed_per_structure or t.n_md_per_structure):
        raise ConfigError("selection.calibration_frames", "'held_out' calibrates on held-out test frames, and "
                          "this campaign holds none out",
                          "set [test] n_per_round (or n_initial_per_structure) to 1 or more, or "
                          "calibration_frames = \"all\"")
    if s.force_upper <= s.force_threshold:
        raise ConfigError(
            "selection.force_upper",
            f"upper bound {s.force_upper} must exceed force_threshold {s.force_threshold}",
            "raise force_upper or lower force_threshold",
        )
    for field, used in (("initial.relax", cfg.initial.relax),
                        ("initial.n_relaxed_per_structure", cfg.initial.n_relaxed_per_structure),
                        ("test.n_relaxed_per_structure", cfg.test.n_relaxed_per_structure),
                        ("initial.n_md_per_structure", cfg.initial.n_md_per_structure),
                        ("test.n_md_per_structure", cfg.test.n_md_per_structure)):
        if used and cfg.labeler.kind == "vasp":
            raise ConfigError(
                field, "remote-al does not run VASP relaxations or VASP-driven MD",
                f"set {field} = {'false' if field == 'initial.relax' else 0} and give relaxed structures "
                "as [[structures]] file entries",
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
