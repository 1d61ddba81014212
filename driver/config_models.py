"""The campaign file's sections as frozen pydantic models, with their bounds.

Every section is a frozen pydantic model (``extra="forbid"``, strict types, no NaN or
infinity, ``Field`` bounds with a description). Reading a file into them, the expansion of
``[[structures]]`` entries and the checks across fields are in ``driver.config``; the
translation of pydantic's errors and the documentation of the models in
``driver.config_schema``.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, field_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from pydantic_core import PydanticCustomError


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
    kind: Literal["local", "globus", "colmena"] = Field(
        "local", description="where the remote functions run: 'colmena' is a Colmena task server "
                             "(the remote-al[colmena] extra; docs/colmena.md)")
    engine: Literal["process", "gce"] = Field(
        "process", description="local only: ProcessPoolEngine ('process') or GlobusComputeEngine ('gce')")
    engine_lifetime: Literal["campaign", "driver"] = Field(
        "campaign", description="local only: 'campaign': the engine runs in a process of its own that outlives a "
                                "killed or stopped driver, which reattaches to its tasks (ended when the campaign is "
                                "done or by `remote-al stop`); 'driver': the engine ends with the driver")
    gpu_slots: Int = Field(2, ge=1, le=10_000, description="tasks at once on the GPU pool (MD, UQ, training)")
    cpu_slots: Int = Field(2, ge=1, le=10_000, description="tasks at once on the CPU pool (labeling)")
    team: Str = Field("", description="globus only: team file with endpoint and function ids")
    colmena_server: Literal["parsl", "globus"] = Field(
        "parsl", description="colmena only: ParslTaskServer with local HighThroughputExecutors ('parsl') or "
                             "GlobusComputeTaskServer on the team file's endpoints ('globus')")
    redis_url: Str = Field("", description="colmena only: Redis for Colmena's queues (redis://host:port); "
                                           "'' uses PipeQueues")
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
    n_relaxed_per_structure: Int = Field(0, ge=0, le=1000, description=(
        "extra initial training frames per structure around the labeler's relaxed structure "
        "(rattled and strained the same way), on top of n_per_structure around the start "
        "structure; 0: none"))
    n_md_per_structure: Int = Field(0, ge=0, le=1000, description=(
        "extra initial training frames per structure from one MD run driven by the labeler at the "
        "structure's first MD temperature and pressure, started at the labeler's relaxed structure: "
        "thermal displacements as the labeler makes them; the frames are labeled like any other; 0: none"))
    md_equil_steps: Int = Field(300, ge=0, le=1_000_000, description=(
        "labeler MD (n_md_per_structure, [test] n_md_per_structure): steps before the first frame kept"))
    md_interval_steps: Int = Field(10, ge=1, le=100_000, description="labeler MD: steps between the frames kept")


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
    md_start: Literal["initial", "labeler_minimum"] = Field(
        "initial", description="where MD starts: 'initial' where the initial data are built (the labeler-relaxed "
                               "structure with [initial] relax, else the built one); 'labeler_minimum' the "
                               "labeler's relaxed structure, whatever the initial data are built around (needs a "
                               "labeler relaxation: initial.relax or an n_relaxed_per_structure)")


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
                                   description="stop when this share of a round's explored frames is confident "
                                               "(after training on what that round selected)")
    dedup_tolerance_A: Float = Field(0.05, ge=0, le=1, description="frames closer than this are duplicates, A")
    force_threshold_mode: Literal["fixed", "calibrated"] = Field(
        "fixed", description="'fixed': force_threshold as given; 'calibrated': the width above which the "
                             "held-out max force error exceeds target_force_error")
    target_force_error: Float = Field(0.2, gt=0, le=100, description="eV/A, the force error accepted (calibrated mode)")
    calibration_min_frames: Int = Field(10, ge=1, le=1_000_000,
                                        description="held-out frames a calibration needs")
    calibration_weighting: Literal["none", "thermal", "md"] = Field(
        "none", description="'thermal': calibration pairs weighted toward the energies the campaign's MD visits "
                            "(weighted conformal, docs/uncertainty.md; measured better with MD at two "
                            "temperatures, not with one); 'md': only the frames held out from the campaign's "
                            "own MD explorations (test.n_per_round), all frames while fewer than the level "
                            "needs; 'none': all held-out and out-of-bag frames alike")
    calibration_frames: Literal["all", "held_out"] = Field(
        "all", description="'all': held-out and out-of-bag frames; 'held_out': the held-out test frames only "
                           "(out-of-bag errors are those of the few members that did not train on a frame, not "
                           "of the ensemble mean; docs/uncertainty.md, attempt 22)")
    calibration_pool: Int = Field(
        1, ge=1, le=10, description="generations whose calibration pairs a generation's fit takes: 1 its own; "
                                    "2 also the previous generation's (each pair with its own ensemble's width "
                                    "and error): twice the frames per fit (docs/uncertainty.md, attempt 21)")
    strategy: Literal["topk", "random", "kmeans", "fps", "lcmd", "maxdet"] = Field(
        "topk", description="which uncertain frames fill the cap (driver.strategies): 'topk' the highest widths; "
                            "'random' uniformly (DP-GEN's rule inside [force_threshold, force_upper]); 'kmeans', "
                            "'fps', 'lcmd', 'maxdet' uncertainty with diversity in the space of `features`")
    quota: Literal["none", "per_condition"] = Field(
        "none", description="'per_condition': the cap is shared equally by the conditions (structure x "
                            "temperature x pressure); asynchronous mode: each exploration takes at most its share")
    features: Literal["descriptor", "atom_widths"] = Field(
        "descriptor", description="feature space of kmeans/fps/lcmd/maxdet, from the scoring evaluation: "
                                  "'descriptor' the first member's per-type mean DeePMD descriptor; 'atom_widths' "
                                  "the histogram of the per-atom force widths")


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
    save_freq: Int = Field(0, ge=0, le=10_000_000, description=(
        "steps between a member's checkpoints: a killed training resumes from its latest; "
        "0: a tenth of the run's steps, at most 1000 ([training.deepmd] training.save_freq wins)"))
    deepmd: dict[Str, Any] = Field(default_factory=dict, description=(
        "input.json overrides (deep-merged), checked with DeePMD-kit's own argument checker"))
    continue_prefactors: Literal["limit", "restart"] = Field(
        "limit", description="a continued generation's loss prefactors: 'limit': start at the limit values "
                             "(the energy weight is not reset); 'restart': the schedule from start_pref_* again")
    deepmd_continue: dict[Str, Any] = Field(default_factory=dict, description=(
        "input.json overrides for continued generations only, on top of `deepmd` (e.g. "
        "{loss = {start_pref_e = 0.1, start_pref_f = 100}, learning_rate = {start_lr = 1e-4}} as DP-GEN's "
        "training_reuse_*), checked with DeePMD-kit's own argument checker"))


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
    n_relaxed_per_structure: Int = Field(0, ge=0, le=1000, description=(
        "held-out initial frames per structure around the labeler's relaxed structure (rattled "
        "like the initial frames, not strained): calibration pairs near each composition's "
        "minimum; 0: none"))
    n_md_per_structure: Int = Field(0, ge=0, le=1000, description=(
        "held-out frames per structure from the labeler's MD run of [initial] n_md_per_structure "
        "(the same run, spread over it): calibration pairs from the labeler's own thermal "
        "displacements; 0: none"))


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
