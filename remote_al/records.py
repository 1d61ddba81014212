"""Small, frozen records that cross the wire between driver and endpoints.

Every remote function takes one request record and returns one result as a plain
JSON-serializable ``dict`` (``Result.to_dict()``), so the driver can keep results
JSON on the wire and never unpickle code or data from a remote machine.

Records carry paths, ids, summary numbers and a few structures as extxyz text,
never large arrays: Globus Compute rejects payloads and results over 10 MB.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

STAND_IN_NOTE = "CHGNet universal potential: a stand-in for DFT, not DFT"


class _Record:
    """Conversion helpers shared by all records."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**{k: _freeze(v) for k, v in data.items()})


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# --------------------------------------------------------------------------- MD
@dataclass(frozen=True)
class MDRequest(_Record):
    task_key: str
    workdir: str
    model_path: str
    structure_extxyz: str
    temperature_K: float = 600.0
    steps: int = 1000
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.02
    n_frames: int = 10
    seed: int = 0
    # "nvt" (Langevin), "npt" (isotropic Berendsen barostat) or "relax" (positions and cell
    # relaxed with the model for at most `steps` steps; temperature and pressure unused)
    ensemble: str = "nvt"
    pressure_GPa: float = 0.0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    engine: str = "ase"  # "ase" (ASE integrators + deepmd.calculator.DP) or "lammps" (pair_style deepmd)
    # Stop early, keeping the frames so far, when atoms come closer than this (A) ...
    stop_min_distance_A: float = 0.5
    # ... or when the ensemble's force CI width on a sampled frame exceeds this (eV/A);
    # needs guard_model_paths (the whole ensemble). 0: no guard.
    stop_force_width: float = 0.0
    guard_model_paths: tuple[str, ...] = ()
    # MD driven by the labeler instead of a model (model_path ""): its ASE calculator
    # (``Labeler.relax_calculator``); the CPU function ``md_label``
    labeler: str = ""
    labeler_settings: Mapping[str, Any] = field(default_factory=dict)
    # steps run before the first frame is kept (the n_frames are spread over the rest)
    equil_steps: int = 0


@dataclass(frozen=True)
class MDResult(_Record):
    task_key: str
    trajectory_path: str
    frames_extxyz: str
    n_frames: int
    steps_done: int
    wall_s: float
    mean_temperature_K: float
    volume_start_A3: float
    volume_end_A3: float
    device: str = "cpu"
    stop_reason: str = ""  # why the run ended before `steps`, if it did


# --------------------------------------------------------------------------- UQ
@dataclass(frozen=True)
class UQRequest(_Record):
    task_key: str
    workdir: str
    model_paths: tuple[str, ...]
    frames_extxyz: str
    confidence: float = 0.95
    batch_size: int = 64
    device: str = "auto"
    # also return the ensemble-mean forces and per-atom widths of every frame (remote-al predict)
    return_forces: bool = False
    # per frame, the members (indices into model_paths) that did not train on it: errors are
    # then those of these members' mean (out-of-bag calibration); empty: every member
    oob_members: tuple[tuple[int, ...], ...] = ()
    # per-frame features for batch selection (driver.strategies), from this evaluation:
    # "" none; "atom_widths": the histogram of the per-atom force widths
    # (remote_al.uq.atom_width_histogram); "descriptor": the first member's
    # per-type mean DeePMD descriptor (remote_al.features)
    features: str = ""


@dataclass(frozen=True)
class UQResult(_Record):
    task_key: str
    n_members: int
    n_frames: int
    natoms: tuple[int, ...]
    energy_width: tuple[float, ...]  # eV/atom, CI width of the ensemble-mean energy per atom
    force_width: tuple[float, ...]  # eV/A, max over atoms and components of the CI width
    energy_mean: tuple[float, ...]  # eV/atom, ensemble mean
    # Present when the frames carried reference labels (energy / forces in the extxyz):
    energy_error: tuple[float, ...] | None = None  # eV/atom, mean - reference
    force_rmse: tuple[float, ...] | None = None  # eV/A, per frame, over components
    force_error_max: tuple[float, ...] | None = None  # eV/A, max |mean - reference|
    force_inside_ci: tuple[float, ...] | None = None  # share of components inside the CI
    # Per atom, frames concatenated in order (for calibration, remote_al.calibration):
    atom_force_width: tuple[float, ...] | None = None  # eV/A, the largest component CI width
    atom_force_error: tuple[float, ...] | None = None  # eV/A, the largest |mean - reference| component
    # With return_forces: per frame, the ensemble-mean forces (N x 3, eV/A) and energy (eV)
    forces_mean: tuple | None = None
    energy_total_mean: tuple[float, ...] | None = None
    # With features: one row per frame (rounded to 4 significant digits)
    frame_features: tuple[tuple[float, ...], ...] | None = None
    wall_s: float = 0.0
    device: str = "cpu"


# ---------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelRequest(_Record):
    task_key: str
    workdir: str
    labeler: str  # "chgnet", "gpaw", "vasp"
    structure_ids: tuple[int, ...]
    structures_extxyz: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Label(_Record):
    """One structure's label, or the reason it has none."""

    structure_id: int
    status: str  # "ok" or "failed"
    reason: str = ""
    energy: float | None = None  # eV, total
    forces: tuple[tuple[float, float, float], ...] | None = None  # eV/A
    stress: tuple[float, ...] | None = None  # eV/A^3, Voigt order xx yy zz yz xz xy
    magmoms: tuple[float, ...] | None = None
    wall_s: float = 0.0


@dataclass(frozen=True)
class LabelResult(_Record):
    task_key: str
    labeler: str
    labeler_note: str  # e.g. STAND_IN_NOTE for CHGNet; "DFT (VASP)"
    labels: tuple[dict, ...]  # Label.to_dict() each
    output_path: str
    wall_s: float
    reused: int = 0  # labels taken from the task's label journal, not computed again


# -------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainRequest(_Record):
    task_key: str
    workdir: str
    systems: tuple[str, ...]  # deepmd/npy system directories on this site
    type_map: tuple[str, ...]
    member: int
    seed: int
    subset_fraction: float = 0.9
    numb_steps: int = 1000
    deepmd: Mapping[str, Any] = field(default_factory=dict)  # overrides for input.json
    init_model: str | None = None  # previous generation's checkpoint (model.ckpt.pt)
    # with init_model: loss prefactors' start values ("limit" | "restart") and input.json
    # overrides on top of ``deepmd`` (remote_al.deepmd_input.deepmd_input)
    continue_prefactors: str = "limit"
    deepmd_continue: Mapping[str, Any] = field(default_factory=dict)
    validation_systems: tuple[str, ...] = ()
    backend: str = "pt"
    device: str = "auto"
    # steps between checkpoints (a killed training resumes from its latest); 0: a tenth of
    # numb_steps, at most 1000 (remote_al.deepmd_input.default_save_freq)
    save_freq: int = 0


@dataclass(frozen=True)
class TrainResult(_Record):
    task_key: str
    model_path: str  # frozen model
    checkpoint_path: str  # for --init-model of the next generation
    lcurve_path: str
    lcurve_last: Mapping[str, float]
    n_train_frames: int
    n_total_frames: int
    wall_s: float
    device: str = "cpu"
    # per system of the request, the frame indices this member did not train on (calibration)
    out_of_bag: tuple[tuple[int, ...], ...] = ()
    # the step of the member's own checkpoint this run resumed from (a killed and rerun
    # task); 0: trained from the start
    resumed_from_step: int = 0


# ------------------------------------------------------------------ relaxation
@dataclass(frozen=True)
class RelaxRequest(_Record):
    """Relax positions and cell of one structure: with each ensemble member
    (``model_paths``, the GPU function) or with the labeler (``labeler``, the CPU one)."""

    task_key: str
    workdir: str
    structure_extxyz: str
    model_paths: tuple[str, ...] = ()
    labeler: str = ""
    labeler_settings: Mapping[str, Any] = field(default_factory=dict)
    fmax: float = 0.02  # eV/A, force (and scaled stress) convergence
    max_steps: int = 300
    device: str = "auto"


@dataclass(frozen=True)
class RelaxResult(_Record):
    task_key: str
    method: str  # "ensemble" or the labeler's name
    natoms: int
    # one entry per member (ensemble) or a single entry (labeler):
    volumes_A3: tuple[float, ...]
    cells: tuple[tuple[float, ...], ...]  # 9 numbers each, row vectors, Angstrom
    energies_eV_atom: tuple[float, ...]
    converged: tuple[bool, ...]
    steps: tuple[int, ...]
    relaxed_extxyz: str  # the relaxed structures, in order
    wall_s: float = 0.0
    device: str = "cpu"
    note: str = ""
