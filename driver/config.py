"""Campaign configuration: a TOML file, validated before any work.

Every problem raises ``ConfigError`` naming the field (``section.key``), the problem and
the fix. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.errors import ConfigError

KNOWN_ELEMENTS = {
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd",
    "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Sm",
    "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir",
    "Pt", "Au", "Hg", "Tl", "Pb", "Bi",
}


@dataclass(frozen=True)
class CampaignSection:
    name: str
    type_map: tuple[str, ...]
    seed: int = 0
    workdir: str = ""  # default: next to the campaign file, named after the campaign
    max_rounds: int = 2
    max_label_calls: int = 0  # 0: no budget
    max_wall_hours: float = 0.0  # 0: no budget


@dataclass(frozen=True)
class BackendSection:
    kind: str = "local"  # "local" or "globus"
    engine: str = "process"  # local only: "process" (ProcessPoolEngine) or "gce" (GlobusComputeEngine)
    gpu_slots: int = 2
    cpu_slots: int = 2
    team: str = ""  # globus only: team file with endpoint and function ids
    max_attempts: int = 3
    retry_backoff_s: float = 5.0
    # "real": the registered functions; "simulated": same contracts, sleeps instead of
    # physics (remote_al.simulated) - a dry run of the steering, or a benchmark workload
    workload: str = "real"


@dataclass(frozen=True)
class StructureSpec:
    name: str
    generator: str = "layered"  # "layered" (built in code) or "file"
    metal: str = "Ni"
    # transition-metal site occupation: a preset ("NMC811", "NMC622", "NMC111") or a table
    # of fractions ({Ni = 0.9, Al = 0.1}); "" means `metal` alone (remote_al.composition)
    metals: object = ""
    li_content: float = 1.0
    li_contents: tuple[float, ...] = ()  # a grid of Li contents: one structure per value
    supercell: tuple[int, ...] = (2, 2, 1)
    orderings: int = 1  # distinct Li/dopant orderings per composition, lowest Ewald energy first
    ordering: int = 0  # which of them (set by the expansion of `orderings`)
    file: str = ""
    seed: int = 0
    # Exploration schedule of this structure; empty/0: the [exploration] values
    temperatures_K: tuple[float, ...] = ()
    pressures_GPa: tuple[float, ...] = ()
    ensemble: str = ""
    steps: int = 0
    n_frames: int = 0
    group: str = ""  # the [[structures]] entry this one was expanded from (its name)


@dataclass(frozen=True)
class InitialSection:
    n_per_structure: int = 8
    rattle_A: float = 0.05
    strain: float = 0.02
    # relax each structure with the labeler first ([volume] fmax and max_steps) and build
    # the initial data and the MD starts around the relaxed structure (as DP-GEN's init_bulk)
    relax: bool = False


@dataclass(frozen=True)
class ExplorationSection:
    temperatures_K: tuple[float, ...] = (600.0,)
    steps: int = 1000
    timestep_fs: float = 1.0
    n_frames: int = 10
    walkers: int = 1
    ensemble: str = "nvt"
    pressure_GPa: float = 0.0
    pressures_GPa: tuple[float, ...] = ()  # npt: one run per pressure (default: pressure_GPa)
    engine: str = "ase"  # "ase" or "lammps" (pair_style deepmd; docs/lammps.md)
    guard: bool = True  # stop MD when the ensemble's force width leaves the trust window
    # also explore by relaxing each structure (positions and cell) with one member, at most
    # relax_steps steps: candidates on the path to where the ensemble puts the minimum
    relax: bool = False
    relax_steps: int = 200


@dataclass(frozen=True)
class SelectionSection:
    confidence: float = 0.95
    force_threshold: float = 0.15  # eV/A, CI width above which a frame is a candidate
    force_upper: float = 5.0  # eV/A, above: unphysical, recorded and not labeled
    energy_threshold: float = 0.0  # eV/atom, 0: not used
    max_per_round: int = 12
    # asynchronous mode: at most this many labels from one exploration (0: no limit), so
    # that the first explorations of a round do not take its whole cap
    max_per_exploration: int = 0
    min_distance_A: float = 1.2
    converged_share: float = 0.97  # stop when this share of explored frames is confident
    dedup_tolerance_A: float = 0.05
    # "fixed": force_threshold as given; "calibrated": after each generation's evaluation
    # on held-out frames, the width above which its true max force error exceeds
    # target_force_error (driver.metrics.calibrate_threshold); force_threshold until then
    force_threshold_mode: str = "fixed"
    target_force_error: float = 0.2  # eV/A
    calibration_min_frames: int = 10


@dataclass(frozen=True)
class LabelerSection:
    kind: str = "chgnet"
    batch_size: int = 4
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSection:
    ensemble_size: int = 4
    subset_fraction: float = 0.9
    numb_steps: int = 1500
    numb_steps_continue: int = 800
    continue_from_previous: bool = True
    deepmd: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SteeringSection:
    mode: str = "async"  # "async": partitions overlap; "sync": train -> explore -> label, as DP-GEN
    retrain_after: int = 0  # new training labels that start the next generation (0: selection.max_per_round)
    max_sweeps_per_generation: int = 3  # async: exploration sweeps with one generation at most
    converged_window: int = 0  # explorations the convergence share looks back on (0: one sweep)
    # async: explore and label for up to this many rounds ahead of the generation being
    # trained (with the current, older ensemble), so neither partition waits on the other
    lookahead_rounds: int = 1
    # async: when a generation becomes current, structures selected with an older one whose
    # label tasks have not been submitted yet are re-scored with the new ensemble; those it
    # is now confident about (or finds outside the trust window) are not labeled
    recheck_selections: bool = True


@dataclass(frozen=True)
class VolumeSection:
    """The volume-change result: relaxed volume and lattice against Li content
    (driver.volume). Present in the file: on, unless ``enabled = false``."""

    enabled: bool = False
    structures: tuple[str, ...] = ()  # names or groups; default: every layered structure's ordering 0
    check: tuple[str, ...] = ()  # also relaxed with the labeler (3 or more recommended)
    fmax: float = 0.02  # eV/A
    max_steps: int = 300
    tolerance: float = 0.02  # relative volume difference ensemble vs labeler that passes the check


@dataclass(frozen=True)
class TestSection:
    n_initial_per_structure: int = 2
    n_per_round: int = 4


@dataclass(frozen=True)
class CampaignConfig:
    campaign: CampaignSection
    structures: tuple[StructureSpec, ...]
    backend: BackendSection = BackendSection()
    initial: InitialSection = InitialSection()
    exploration: ExplorationSection = ExplorationSection()
    selection: SelectionSection = SelectionSection()
    labeler: LabelerSection = LabelerSection()
    training: TrainingSection = TrainingSection()
    test: TestSection = TestSection()
    steering: SteeringSection = SteeringSection()
    volume: VolumeSection = VolumeSection()
    source: str = ""  # path of the TOML file

    @property
    def directory(self) -> Path:
        return Path(self.campaign.workdir)


_SECTIONS = {
    "campaign": CampaignSection,
    "backend": BackendSection,
    "initial": InitialSection,
    "exploration": ExplorationSection,
    "selection": SelectionSection,
    "labeler": LabelerSection,
    "training": TrainingSection,
    "test": TestSection,
    "steering": SteeringSection,
    "volume": VolumeSection,
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    if tp is object:  # free-form, checked in validate()
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a table, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", "unknown key", f"valid keys in [{where}] are {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}.{name}", "required key is missing")
    return cls(**kwargs)


def parse_config(data: dict, source: str | Path = "", base_dir: Path | None = None) -> CampaignConfig:
    """Build and validate a CampaignConfig from parsed TOML."""
    data = dict(data)
    unknown = sorted(set(data) - set(_SECTIONS) - {"structures"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section", f"valid sections are {sorted([*_SECTIONS, 'structures'])}")
    if "campaign" not in data:
        raise ConfigError("campaign", "missing section", "add [campaign] with name and type_map")
    sections = {name: _build(cls, data[name], name) for name, cls in _SECTIONS.items() if name in data}
    raw_structs = data.get("structures")
    if not raw_structs or not isinstance(raw_structs, list):
        raise ConfigError("structures", "at least one [[structures]] entry is required")
    structures = tuple(
        x for i, s in enumerate(raw_structs) for x in expand_spec(_build(StructureSpec, s, f"structures[{i}]"), i)
    )
    if "volume" in data and isinstance(data["volume"], dict) and "enabled" not in data["volume"]:
        sections["volume"] = dataclasses.replace(sections["volume"], enabled=True)
    base_dir = base_dir or (Path(source).parent if source else Path.cwd())
    camp: CampaignSection = sections["campaign"]
    workdir = Path(camp.workdir) if camp.workdir else Path("campaigns") / camp.name
    if not workdir.is_absolute():
        workdir = (base_dir / workdir).resolve()
    sections["campaign"] = dataclasses.replace(camp, workdir=str(workdir))
    resolved = []
    for s in structures:
        if s.generator == "file" and s.file and not Path(s.file).is_absolute():
            s = dataclasses.replace(s, file=str((base_dir / s.file).resolve()))
        resolved.append(s)
    cfg = CampaignConfig(structures=tuple(resolved), source=str(source), **sections)
    validate(cfg)
    return cfg


def expand_spec(spec: StructureSpec, index: int) -> list[StructureSpec]:
    """One [[structures]] entry -> one structure per (Li content, ordering).

    Names: ``NAME-x0.5`` per value of ``li_contents``, ``-o1`` per ordering after the
    first (``orderings > 1``); ``group`` keeps the entry's name."""
    where = f"structures[{index}]"
    if spec.orderings < 1:
        raise ConfigError(f"{where}.orderings", f"must be 1 or more, got {spec.orderings}")
    if spec.generator != "layered" and (spec.li_contents or spec.orderings > 1):
        raise ConfigError(f"{where}.li_contents", "a grid of Li contents or orderings needs generator 'layered'")
    if isinstance(spec.metals, list):  # from config_to_dict: [[element, fraction], ...]
        spec = dataclasses.replace(spec, metals={str(k): v for k, v in spec.metals})
    if isinstance(spec.metals, dict):  # hashable and canonical: ((element, fraction), ...)
        spec = dataclasses.replace(spec, metals=tuple(sorted((str(k), v) for k, v in spec.metals.items())))
    elif not isinstance(spec.metals, (str, tuple)):
        raise ConfigError(f"{where}.metals", f"expected a preset name or a table of fractions, got {spec.metals!r}")
    contents = spec.li_contents or (spec.li_content,)
    out = []
    for x in contents:
        for k in range(spec.orderings):
            name = spec.name + (f"-x{x:g}" if spec.li_contents else "") + (f"-o{k}" if k else "")
            out.append(dataclasses.replace(spec, name=name, li_content=float(x), li_contents=(),
                                           ordering=spec.ordering + k, orderings=1,
                                           group=spec.group or spec.name))
    return out


def config_to_dict(cfg: CampaignConfig) -> dict:
    """The parsed configuration as plain data that ``parse_config`` reads back to an equal
    config (stored in the campaign state, so reports need no campaign file)."""
    data = dataclasses.asdict(cfg)
    data.pop("source", None)
    return json.loads(json.dumps(data))


def load_config(path: str | Path) -> CampaignConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "campaign file not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_config(data, source=path.resolve(), base_dir=path.resolve().parent)


def spec_metals(spec: StructureSpec) -> dict[str, float]:
    """Transition-metal fractions of a layered structure spec."""
    from remote_al.composition import parse_metals

    metals = spec.metals
    if isinstance(metals, tuple):
        metals = dict(metals)
    return parse_metals(metals if metals not in ("", None) else spec.metal)


def _positive(value, where, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(where, f"must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def validate(cfg: CampaignConfig) -> None:
    """Cross-field checks; raises ConfigError naming the field."""
    c = cfg.campaign
    if not c.name or any(ch in c.name for ch in "/\\ ") or c.name in (".", ".."):
        raise ConfigError("campaign.name", f"{c.name!r} is not a usable directory name")
    if not c.type_map:
        raise ConfigError("campaign.type_map", "is empty", 'list the elements, e.g. ["Li", "Ni", "O"]')
    for el in c.type_map:
        if el not in KNOWN_ELEMENTS:
            raise ConfigError("campaign.type_map", f"unknown element {el!r}")
    if len(set(c.type_map)) != len(c.type_map):
        raise ConfigError("campaign.type_map", "lists an element twice")
    _positive(c.max_rounds, "campaign.max_rounds")
    _positive(c.max_label_calls, "campaign.max_label_calls", allow_zero=True)
    _positive(c.max_wall_hours, "campaign.max_wall_hours", allow_zero=True)

    b = cfg.backend
    if b.kind not in ("local", "globus"):
        raise ConfigError("backend.kind", f"{b.kind!r} is not a backend", "use 'local' or 'globus'")
    if b.engine not in ("process", "gce"):
        raise ConfigError("backend.engine", f"{b.engine!r} is not an engine", "use 'process' or 'gce'")
    if b.workload not in ("real", "simulated"):
        raise ConfigError("backend.workload", f"{b.workload!r}", "use 'real' or 'simulated'")
    _positive(b.gpu_slots, "backend.gpu_slots")
    _positive(b.cpu_slots, "backend.cpu_slots")
    _positive(b.max_attempts, "backend.max_attempts")
    _positive(b.retry_backoff_s, "backend.retry_backoff_s", allow_zero=True)
    if b.kind == "globus" and not b.team:
        raise ConfigError("backend.team", "the globus backend needs a team file", "run `remote-al register`")

    names = set()
    for i, s in enumerate(cfg.structures):
        where = f"structures[{i}]"
        if s.name in names:
            raise ConfigError(f"{where}.name", f"duplicate structure name {s.name!r}")
        names.add(s.name)
        if s.generator == "layered":
            if s.metal not in KNOWN_ELEMENTS:
                raise ConfigError(f"{where}.metal", f"unknown element {s.metal!r}")
            try:
                metals = spec_metals(s)
            except ValueError as exc:
                raise ConfigError(f"{where}.metals", str(exc)) from exc
            for el in ("Li", *metals, "O"):
                if el not in c.type_map:
                    raise ConfigError(
                        "campaign.type_map",
                        f"element {el!r} of structure {s.name!r} is missing from the type map",
                        f"add {el!r} to campaign.type_map",
                    )
            if not 0.0 <= s.li_content <= 1.0:
                raise ConfigError(f"{where}.li_content", f"must lie in [0, 1], got {s.li_content}")
            if len(s.supercell) != 3 or min(s.supercell) < 1:
                raise ConfigError(f"{where}.supercell", f"needs three positive integers, got {list(s.supercell)}")
            from remote_al.composition import site_counts

            try:
                site_counts(metals, s.li_content, s.supercell)
            except ValueError as exc:
                raise ConfigError(f"{where}.supercell", str(exc)) from exc
            _positive(s.ordering, f"{where}.ordering", allow_zero=True)
        elif s.generator == "file":
            if not s.file:
                raise ConfigError(f"{where}.file", "generator 'file' needs a file path")
        else:
            raise ConfigError(f"{where}.generator", f"unknown generator {s.generator!r}", "use 'layered' or 'file'")

        for t in s.temperatures_K:
            _positive(t, f"{where}.temperatures_K")
        if s.ensemble not in ("", "nvt", "npt"):
            raise ConfigError(f"{where}.ensemble", f"{s.ensemble!r}", "use 'nvt' or 'npt'")
        _positive(s.steps, f"{where}.steps", allow_zero=True)
        _positive(s.n_frames, f"{where}.n_frames", allow_zero=True)

    v = cfg.volume
    groups = {s.group for s in cfg.structures} | names
    for key in ("structures", "check"):
        for n in getattr(v, key):
            if n not in groups:
                raise ConfigError(f"volume.{key}", f"no structure or group named {n!r}",
                                  f"names are {sorted(names)}; groups {sorted({s.group for s in cfg.structures})}")
    if v.enabled and not [s for s in cfg.structures if s.generator == "layered"]:
        raise ConfigError("volume", "the volume curve needs layered structures (Li content and lattice known)")
    _positive(v.fmax, "volume.fmax")
    _positive(v.max_steps, "volume.max_steps")
    _positive(v.tolerance, "volume.tolerance")

    i = cfg.initial
    _positive(i.n_per_structure, "initial.n_per_structure")
    _positive(i.rattle_A, "initial.rattle_A", allow_zero=True)
    _positive(i.strain, "initial.strain", allow_zero=True)

    e = cfg.exploration
    if not e.temperatures_K:
        raise ConfigError("exploration.temperatures_K", "is empty")
    for t in e.temperatures_K:
        _positive(t, "exploration.temperatures_K")
    _positive(e.steps, "exploration.steps")
    _positive(e.timestep_fs, "exploration.timestep_fs")
    _positive(e.n_frames, "exploration.n_frames")
    _positive(e.walkers, "exploration.walkers")
    _positive(e.relax_steps, "exploration.relax_steps")
    if e.ensemble not in ("nvt", "npt"):
        raise ConfigError("exploration.ensemble", f"{e.ensemble!r}", "use 'nvt' or 'npt'")
    if e.engine not in ("ase", "lammps"):
        raise ConfigError("exploration.engine", f"{e.engine!r} is not an MD engine", "use 'ase' or 'lammps'")

    s = cfg.selection
    if not 0.0 < s.confidence < 1.0:
        raise ConfigError("selection.confidence", f"must lie in (0, 1), got {s.confidence}")
    _positive(s.force_threshold, "selection.force_threshold", allow_zero=True)
    _positive(s.max_per_exploration, "selection.max_per_exploration", allow_zero=True)
    _positive(s.energy_threshold, "selection.energy_threshold", allow_zero=True)
    if s.force_upper <= s.force_threshold:
        raise ConfigError(
            "selection.force_upper",
            f"upper bound {s.force_upper} must exceed force_threshold {s.force_threshold}",
        )
    _positive(s.max_per_round, "selection.max_per_round")
    if s.force_threshold_mode not in ("fixed", "calibrated"):
        raise ConfigError("selection.force_threshold_mode", f"{s.force_threshold_mode!r}", "use 'fixed' or 'calibrated'")
    _positive(s.target_force_error, "selection.target_force_error")
    _positive(s.calibration_min_frames, "selection.calibration_min_frames")
    _positive(s.min_distance_A, "selection.min_distance_A", allow_zero=True)
    if not 0.0 < s.converged_share <= 1.0:
        raise ConfigError("selection.converged_share", f"must lie in (0, 1], got {s.converged_share}")

    lab = cfg.labeler
    if lab.kind not in ("chgnet", "gpaw", "vasp"):
        raise ConfigError("labeler.kind", f"unknown labeler {lab.kind!r}", "use 'chgnet', 'gpaw' or 'vasp'")
    if cfg.initial.relax and lab.kind == "vasp":
        raise ConfigError(
            "initial.relax", "remote-al does not run VASP relaxations",
            "set initial.relax = false and give relaxed structures as [[structures]] file entries",
        )
    _positive(lab.batch_size, "labeler.batch_size")

    t = cfg.training
    if t.ensemble_size < 2:
        raise ConfigError(
            "training.ensemble_size",
            f"an ensemble needs at least 2 members for a spread, got {t.ensemble_size}",
            "use 4 or more",
        )
    if not 0.0 < t.subset_fraction <= 1.0:
        raise ConfigError("training.subset_fraction", f"must lie in (0, 1], got {t.subset_fraction}")
    _positive(t.numb_steps, "training.numb_steps")
    _positive(t.numb_steps_continue, "training.numb_steps_continue")

    st = cfg.steering
    if st.mode not in ("async", "sync"):
        raise ConfigError("steering.mode", f"{st.mode!r} is not a mode", "use 'async' or 'sync'")
    _positive(st.retrain_after, "steering.retrain_after", allow_zero=True)
    _positive(st.max_sweeps_per_generation, "steering.max_sweeps_per_generation")
    _positive(st.converged_window, "steering.converged_window", allow_zero=True)
    _positive(st.lookahead_rounds, "steering.lookahead_rounds", allow_zero=True)

    _positive(cfg.test.n_initial_per_structure, "test.n_initial_per_structure", allow_zero=True)
    _positive(cfg.test.n_per_round, "test.n_per_round", allow_zero=True)
