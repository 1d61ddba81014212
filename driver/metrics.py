"""Error and calibration metrics over plain numpy arrays (no IO, no plotting).

- ``parity_metrics``: RMSE, MAE and max |error| of predictions against reference labels.
- ``calibration_table``: per width bin, how often the true error falls inside the
  ensemble's confidence interval (``|error| <= width / 2``) against the nominal level.
- ``calibrate_threshold``: the force-width threshold above which the true force error
  exceeds a target, from held-out frames (the rule is in its docstring and in
  docs/reports.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


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


def _isotonic_blocks(errors_by_bin: list[np.ndarray], quantile: float) -> list[float]:
    """Pool-adjacent-violators over bins: each bin's statistic is the ``quantile`` of the
    errors of its pooled block; blocks merge until the statistic never decreases."""
    blocks: list[list] = []  # [first bin, last bin, errors, statistic]
    for b, errs in enumerate(errors_by_bin):
        blocks.append([b, b, errs, float(np.quantile(errs, quantile))])
        while len(blocks) >= 2 and blocks[-2][3] > blocks[-1][3]:
            hi = blocks.pop()
            lo = blocks.pop()
            merged = np.concatenate([lo[2], hi[2]])
            blocks.append([lo[0], hi[1], merged, float(np.quantile(merged, quantile))])
    out = [0.0] * len(errors_by_bin)
    for first, last, _, stat in blocks:
        for b in range(first, last + 1):
            out[b] = stat
    return out


def calibrate_threshold(
    widths,
    errors,
    target_error: float,
    *,
    quantile: float = 0.5,
    n_bins: int = 10,
    min_per_bin: int = 5,
) -> float:
    """The smallest width above which the true error exceeds ``target_error``.

    ``widths`` and ``errors`` pair up per held-out frame, e.g. the frame's force width
    (max CI width over components, what selection compares with
    ``selection.force_threshold``) and its max absolute force error (``force_error_max``
    of an evaluation). The rule:

    1. sort the frames by width and cut them into ``k = min(n_bins, n // min_per_bin)``
       (at least 1) bins of equal count;
    2. per bin, take the ``quantile`` (the median by default) of ``|error|``, placed at
       the bin's median width;
    3. make these statistics non-decreasing in width by pool-adjacent-violators: a bin
       whose statistic is lower than its narrower neighbour's is pooled with it and the
       quantile is taken over the pooled errors, so noise and outliers cannot make the
       answer jump back and forth;
    4. the threshold is where this monotone curve first reaches ``target_error``, by
       linear interpolation between neighbouring bin medians. If the narrowest bin
       already reaches it, the smallest observed width is returned (every frame is
       worth labeling); if no bin reaches it, ``math.inf`` (no observed width predicts
       an error above the target: keep the configured threshold).

    Raises ValueError with fewer than ``min_per_bin`` finite pairs.
    """
    if not target_error > 0:
        raise ValueError(f"target_error must be positive, got {target_error}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if min_per_bin < 1 or n_bins < 1:
        raise ValueError("n_bins and min_per_bin must be at least 1")
    w, e = _clean_pairs(widths, errors)
    if w.size < min_per_bin:
        raise ValueError(f"{w.size} finite (width, error) pairs; calibration needs at least {min_per_bin}")
    k = max(1, min(int(n_bins), w.size // int(min_per_bin)))
    bins = _equal_count_bins(w.size, k)
    centres = [float(np.median(w[b])) for b in bins]
    stats = _isotonic_blocks([e[b] for b in bins], quantile)
    for b, s in enumerate(stats):
        if s >= target_error:
            if b == 0:
                return float(w[0])
            s0, w0, w1 = stats[b - 1], centres[b - 1], centres[b]
            return float(w0 + (target_error - s0) / (s - s0) * (w1 - w0))
    return math.inf


__all__ = ["CalibrationTable", "calibrate_threshold", "calibration_table", "parity_metrics"]
