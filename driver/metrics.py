"""Error and calibration metrics over plain numpy arrays (no IO, no plotting).

- ``parity_metrics``: RMSE, MAE and max |error| of predictions against reference labels.
- ``calibration_table``: per width bin, how often the true error falls inside the
  ensemble's confidence interval (``|error| <= width / 2``) against the nominal level.
- ``running_mean``: a centred running mean (of the logarithm) that smooths a learning curve.
- calibrated bounds and thresholds in physical units live in ``remote_al.calibration``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def running_mean(y, window: int, log: bool = True) -> np.ndarray:
    """Centred running mean of ``y`` over ``window`` points (made odd); near the ends the
    window is cut at the first or last point (the final value is a mean too, not one
    noisy step).

    ``log=True`` averages ``log(y)`` (a geometric mean), which is what a curve drawn on a
    log axis looks smooth in. ``window <= 1`` returns ``y`` unchanged (as floats).
    """
    y = np.asarray(y, dtype=float)
    half = max(0, int(window) // 2)
    if half == 0 or y.size < 3:
        return y.copy()
    v = np.log(y) if log else y
    csum = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(y.size)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half, y.size - 1) + 1
    out = (csum[hi] - csum[lo]) / (hi - lo)
    return np.exp(out) if log else out


def parity_metrics(pred, ref) -> dict[str, float]:
    """``{"rmse", "mae", "max", "n"}`` of ``pred - ref`` over all elements.

    Arrays of any (equal) shape are flattened; ``max`` is the largest absolute error.
    Non-finite predictions propagate (a broken model shows as ``nan``, not as a number).
    """
    pred = np.asarray(pred, dtype=float).ravel()
    ref = np.asarray(ref, dtype=float).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.size} predictions but {ref.size} reference values")
    if pred.size == 0:
        raise ValueError("no values to compare")
    d = pred - ref
    return {
        "rmse": float(np.sqrt(np.mean(d**2))),
        "mae": float(np.mean(np.abs(d))),
        "max": float(np.max(np.abs(d))),
        "n": int(d.size),
    }


@dataclass(frozen=True)
class CalibrationTable:
    """Coverage of the ensemble CI per width bin (equal-count bins, ascending width).

    ``inside_share[b]`` is the share of the bin's errors with ``|error| <= width / 2``;
    a calibrated ensemble has it near ``confidence`` in every bin.
    """

    confidence: float
    width_lo: tuple[float, ...]
    width_hi: tuple[float, ...]
    width_median: tuple[float, ...]
    n: tuple[int, ...]
    inside_share: tuple[float, ...]
    error_median: tuple[float, ...]  # median |error|
    error_rmse: tuple[float, ...]
    overall_inside: float
    n_total: int

    def rows(self) -> list[dict]:
        cols = ("width_lo", "width_hi", "width_median", "n", "inside_share", "error_median", "error_rmse")
        return [{c: getattr(self, c)[b] for c in cols} for b in range(len(self.n))]

    def to_dict(self) -> dict:
        return asdict(self)


def _equal_count_bins(n: int, n_bins: int) -> list[np.ndarray]:
    """Index ranges (into a sorted array of length n) of ``n_bins`` nearly equal bins."""
    edges = np.linspace(0, n, n_bins + 1).round().astype(int)
    return [np.arange(edges[b], edges[b + 1]) for b in range(n_bins) if edges[b + 1] > edges[b]]


def _clean_pairs(widths, errors) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(widths, dtype=float).ravel()
    e = np.abs(np.asarray(errors, dtype=float).ravel())
    if w.shape != e.shape:
        raise ValueError(f"{w.size} widths but {e.size} errors")
    ok = np.isfinite(w) & np.isfinite(e)
    w, e = w[ok], e[ok]
    order = np.argsort(w, kind="stable")
    return w[order], e[order]


def calibration_table(widths, errors, confidence: float = 0.95, n_bins: int = 8) -> CalibrationTable:
    """Share of true errors inside the ensemble CI, overall and per width bin.

    ``widths`` are full CI widths (``remote_al.uq.ensemble_ci_width``) and ``errors`` the
    signed or absolute errors of the ensemble mean, element by element (e.g. every force
    component of every held-out frame). An error is inside when ``|error| <= width / 2``.
    Bins hold equal counts of points, sorted by width; non-finite pairs are dropped.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    w, e = _clean_pairs(widths, errors)
    if w.size == 0:
        raise ValueError("no finite (width, error) pairs")
    inside = e <= w / 2.0
    bins = _equal_count_bins(w.size, max(1, min(int(n_bins), w.size)))
    return CalibrationTable(
        confidence=float(confidence),
        width_lo=tuple(float(w[b[0]]) for b in bins),
        width_hi=tuple(float(w[b[-1]]) for b in bins),
        width_median=tuple(float(np.median(w[b])) for b in bins),
        n=tuple(int(b.size) for b in bins),
        inside_share=tuple(float(np.mean(inside[b])) for b in bins),
        error_median=tuple(float(np.median(e[b])) for b in bins),
        error_rmse=tuple(float(np.sqrt(np.mean(e[b] ** 2))) for b in bins),
        overall_inside=float(np.mean(inside)),
        n_total=int(w.size),
    )


__all__ = ["CalibrationTable", "calibration_table", "parity_metrics"]
