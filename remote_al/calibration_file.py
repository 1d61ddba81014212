"""One generation's calibration (``remote_al.calibration`` fits it) and its file,
``<campaign>/calibration/g<N>.json``. Nothing here imports numpy at import time, so a
reader of the files (``remote-al status``) starts fast."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


# what a weighted calibration's effective frames are, in messages (``Calibration.weighting``)
WEIGHTED = {"thermal": "in the thermal band", "md": "held out from the campaign's MD"}


@dataclass(frozen=True)
class Calibration:
    """One generation's map from the seed's width to a bound on the true error.

    ``force_scale`` multiplies a per-atom force width (a bound on that atom's error),
    ``frame_force_scale`` a frame's force width (the max over its atoms: a bound on the
    frame's largest per-atom error, what "confident" and the target compare), and
    ``energy_scale`` a per-atom energy width; all give bounds at ``coverage``. Files from
    before the frame scale have none: the per-atom scale stands in for it."""

    generation: int
    method: str
    coverage: float
    force_scale: float
    energy_scale: float
    n_frames: int
    n_force_pairs: int
    n_energy_pairs: int
    force_calibrated: bool  # False: too few pairs, a fallback (see ``note``)
    energy_calibrated: bool
    note: str = ""
    n_members: int = 0
    source: str = "held-out test frames"
    frame_force_scale: float | None = None  # None: not fitted (too few frames, or an older file)
    n_frame_pairs: int = 0
    weighting: str = "none"  # "thermal": weighted for the shift in energy; "md": held-out MD frames only (remote_al.calibration)
    effective_frames: float | None = None  # with weights: (sum w)^2 / sum w^2 of the frame weights
    pooled_generations: list[int] = field(default_factory=list)  # earlier generations whose pairs were pooled in
    # the central 90 % of the coverage this fit gives on new frames like its calibration
    # frames (a conformal fit on n of them covers a Beta(k, n + 1 - k) share): how much a
    # coverage measured on new frames can differ from the level by the fit's own finite n;
    # None: not a conformal fit, or an older file
    force_coverage_range: list[float] | None = None  # n counted in frames (a frame's atoms are not independent)
    energy_coverage_range: list[float] | None = None

    @property
    def calibrated(self) -> bool:
        return self.force_calibrated and self.energy_calibrated

    def force_bound(self, width):
        import numpy as np

        return self.force_scale * np.asarray(width, dtype=float)

    @property
    def frame_scale(self) -> float:
        """The factor on a frame's force width: the frame-level one when fitted."""
        return self.force_scale if self.frame_force_scale is None else self.frame_force_scale

    def frame_force_bound(self, frame_width):
        """Bound on a frame's largest per-atom force error from its force width (max over atoms)."""
        import numpy as np

        return self.frame_scale * np.asarray(frame_width, dtype=float)

    def energy_bound(self, width):
        import numpy as np

        return self.energy_scale * np.asarray(width, dtype=float)

    def force_width_threshold(self, target_error: float) -> float:
        """The frame force width below which a frame's calibrated bound is under ``target_error``."""
        return float(target_error / self.frame_scale)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ------------------------------------------------------------------ the stored file
def calibration_path(campaign_dir: str | Path, generation: int) -> Path:
    return Path(campaign_dir) / "calibration" / f"g{generation}.json"


def write_calibration(campaign_dir: str | Path, cal: Calibration) -> Path:
    """``<campaign>/calibration/g<N>.json``: the method, its parameters and the frames used
    (documented in docs/uncertainty.md). Written atomically."""
    path = calibration_path(campaign_dir, cal.generation)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": "remote-al calibration 1", **cal.to_dict()}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_calibration(campaign_dir: str | Path, generation: int) -> Calibration | None:
    path = calibration_path(campaign_dir, generation)
    if not path.exists():
        return None
    return Calibration.from_dict(json.loads(path.read_text()))


def latest_calibration(campaign_dir: str | Path, up_to: int | None = None) -> Calibration | None:
    """The calibration of the newest generation (at most ``up_to``) that has one."""
    folder = Path(campaign_dir) / "calibration"
    gens = sorted(int(p.stem[1:]) for p in folder.glob("g*.json") if p.stem[1:].isdigit()) if folder.is_dir() else []
    gens = [g for g in gens if up_to is None or g <= up_to]
    return read_calibration(campaign_dir, gens[-1]) if gens else None
