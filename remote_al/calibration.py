"""Calibrated error bounds from the ensemble's Student-t width: pure functions over numpy.

The seed's width, ``2 t(0.975, M-1) s / sqrt(M)``, is a confidence interval of the
ensemble *mean*; it says nothing calibrated about the error of one prediction, and a small
ensemble trained briefly is over-confident beyond that (on held-out frames the half-width
covers about half of the true force errors). This module turns the width into a bound on
the true error that holds at a stated level, fitted per generation on frames that the
ensemble did not train on.

Method: split-conformal prediction with normalised scores (Lei et al. 2018; Angelopoulos
and Bates 2021). For calibration pairs (width ``w_i``, true error ``e_i``) the score is
``r_i = |e_i| / w_i``; the bound at level ``c`` is ``q * w`` with ``q`` the
``ceil((n + 1) c)``-th smallest score. For exchangeable calibration and test pairs this
covers at least ``c`` of new errors (finite-sample, distribution-free), which a Gaussian
scale factor (Imbalzano et al. 2021) only does when errors are Gaussian in units of the
spread; the measured errors are heavy-tailed (Pernot 2024), so the quantile is used, and
the Gaussian factor is kept for comparison (``method="gaussian_scale"``). The bound is
proportional to the width, so it keeps the ensemble's ranking of structures: a frame's
bound is ``q`` times its seed width, and a target error converts to a width threshold as
``target / q``.

A frame is confident when its bound is below the user's target, so the decision is about
the frame's *largest* per-atom error. That has its own scale, fitted the same way on
per-frame pairs (the largest per-atom width, the largest per-atom error):
``frame_force_scale``. The per-atom scale applied to the frame's width would state a
per-atom level, not a frame-level one (measured in docs/uncertainty.md). With too few
frames, the per-atom scale stands in.

Units and levels: forces per atom (width: the largest of the atom's three component
widths; error: the largest component error of the ensemble mean), energies per frame
(per atom). Too few pairs for the level (``n < c / (1 - c)``, 19 at 95 %) cannot give a
finite conformal quantile: then the fit falls back to ``fallback`` (the previous
generation's calibration) or, with none, to the Student-t *prediction* interval of one
member drawn like the ensemble, ``sqrt(M + 1)`` times the width of the mean, marked
``calibrated = False``.
"""

from __future__ import annotations

import math

import numpy as np

# the record and its file (no numpy at import: `remote-al status` reads them), here as before
from remote_al.calibration_file import (Calibration, calibration_path, latest_calibration,  # noqa: F401
                                        read_calibration, write_calibration)
from remote_al.uq import ensemble_ci_width

METHODS = ("conformal", "gaussian_scale", "prediction_interval")


def atom_force_widths(member_forces: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """(M, N, 3) member forces -> (N,) the largest component CI width of each atom."""
    return ensemble_ci_width(np.asarray(member_forces, dtype=float), confidence, axis=0).max(axis=1)


def atom_force_errors(mean_forces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, 3) ensemble-mean and reference forces -> (N,) the largest |component error|."""
    return np.abs(np.asarray(mean_forces, dtype=float) - np.asarray(reference, dtype=float)).max(axis=1)


def frame_pairs(atom_widths, atom_errors, natoms) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the largest per-atom width and the largest per-atom error (frames
    concatenated atom by atom, ``natoms`` each): the pairs of the frame-level scale."""
    w = np.asarray(atom_widths, dtype=float)
    e = np.asarray(atom_errors, dtype=float)
    cuts = np.cumsum(np.asarray(natoms, dtype=int))[:-1]
    if w.size != int(np.sum(natoms)) or e.size != w.size:
        raise ValueError(f"{w.size} widths and {e.size} errors for {int(np.sum(natoms))} atoms")
    return (np.array([x.max() for x in np.split(w, cuts)]) if w.size else w,
            np.array([x.max() for x in np.split(e, cuts)]) if e.size else e)


def min_pairs(coverage: float) -> int:
    """The fewest calibration pairs whose conformal quantile at ``coverage`` is finite."""
    return int(math.ceil(coverage / (1.0 - coverage) - 1e-9))


def conformal_scale(widths, errors, coverage: float = 0.95) -> float:
    """The split-conformal factor ``q``: ``|e| <= q w`` for at least ``coverage`` of new pairs.

    Raises ValueError when there are fewer than ``min_pairs(coverage)`` usable pairs."""
    w, e = _pairs(widths, errors)
    n = w.size
    k = int(math.ceil((n + 1) * coverage))
    if k > n:
        raise ValueError(f"{n} calibration pairs are too few for {coverage:.0%} (need {min_pairs(coverage)})")
    scores = np.sort(e / w)
    return float(scores[k - 1])


def gaussian_scale(widths, errors, coverage: float = 0.95) -> float:
    """Imbalzano et al. 2021 style: one scale so that errors are unit-variance Gaussian in
    units of the width, then the two-sided Gaussian quantile at ``coverage``."""
    w, e = _pairs(widths, errors)
    if w.size < 2:
        raise ValueError("need at least 2 calibration pairs")
    alpha = math.sqrt(float(np.mean((e / w) ** 2)))
    from scipy import stats  # here: scipy.stats takes a second to import, and the CLI imports this module

    return float(alpha * stats.norm.ppf(0.5 + coverage / 2.0))


def prediction_interval_scale(n_members: int) -> float:
    """The Student-t prediction interval of a new draw against the CI of the mean, as a
    factor on the seed's full width that bounds |error| (half-width * sqrt(M + 1))."""
    return 0.5 * math.sqrt(n_members + 1)


def coverage(widths, errors, scale: float) -> float:
    """Share of pairs with ``|e| <= scale * w``."""
    w, e = _pairs(widths, errors)
    return float(np.mean(e <= scale * w)) if w.size else float("nan")


def _pairs(widths, errors) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(widths, dtype=float).ravel()
    e = np.abs(np.asarray(errors, dtype=float).ravel())
    if w.shape != e.shape:
        raise ValueError(f"{w.size} widths but {e.size} errors")
    ok = np.isfinite(w) & np.isfinite(e) & (w > 0)
    return w[ok], e[ok]


def fit_calibration(
    generation: int,
    atom_widths,
    atom_errors,
    energy_widths,
    energy_errors,
    n_frames: int,
    n_members: int,
    coverage_level: float = 0.95,
    method: str = "conformal",
    fallback: Calibration | None = None,
    min_frames: int = 1,
    source: str = "held-out test frames",
    frame_widths=None,
    frame_errors=None,
) -> Calibration:
    """Fit one generation's calibration; see the module docstring for the rules.
    ``frame_widths`` / ``frame_errors``: per frame, the largest per-atom width and error
    (``frame_pairs``); the frame scale is fitted from them when there are enough, else
    the per-atom scale stands in (and the note says so)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {METHODS}")
    fw, fe = _pairs(atom_widths, atom_errors)
    ew, ee = _pairs(energy_widths, energy_errors)
    base = dict(generation=generation, method=method, coverage=coverage_level, n_frames=int(n_frames),
                n_force_pairs=int(fw.size), n_energy_pairs=int(ew.size), n_members=int(n_members), source=source)

    def scale(w, e):
        if method == "conformal":
            return conformal_scale(w, e, coverage_level)
        if method == "gaussian_scale":
            return gaussian_scale(w, e, coverage_level)
        return prediction_interval_scale(n_members)

    notes = []

    def fitted(what: str, w, e) -> float | None:
        try:
            if n_frames < min_frames:
                raise ValueError(f"{n_frames} frames, fewer than the {min_frames} asked for")
            return scale(w, e)
        except ValueError as exc:
            notes.append(f"{what}: {exc}")
            return None

    f_scale = fitted("forces", fw, fe)
    e_scale = fitted("energies", ew, ee)
    frame: dict = {}
    if frame_widths is not None:
        rw, re_ = _pairs(frame_widths, frame_errors)
        frame["n_frame_pairs"] = int(rw.size)
        try:
            if n_frames < min_frames:
                raise ValueError(f"{n_frames} frames, fewer than the {min_frames} asked for")
            frame["frame_force_scale"] = scale(rw, re_)
        except ValueError as exc:
            notes.append(f"frame forces: {exc}; the per-atom factor stands in")
    base.update(frame)
    flags = dict(force_calibrated=f_scale is not None, energy_calibrated=e_scale is not None)
    if f_scale is not None and e_scale is not None:
        return Calibration(force_scale=f_scale, energy_scale=e_scale, note="; ".join(notes), **flags, **base)
    if fallback is not None:
        what = f"generation {fallback.generation}'s calibration"
        f_scale = fallback.force_scale if f_scale is None else f_scale
        e_scale = fallback.energy_scale if e_scale is None else e_scale
        if base.get("frame_force_scale") is None and fallback.frame_force_scale is not None:
            base["frame_force_scale"] = fallback.frame_force_scale
    else:
        what = f"the Student-t prediction interval (sqrt(M+1) = {math.sqrt(n_members + 1):.2f} x the CI)"
        pi = prediction_interval_scale(n_members)
        f_scale = pi if f_scale is None else f_scale
        e_scale = pi if e_scale is None else e_scale
    return Calibration(force_scale=f_scale, energy_scale=e_scale, note="; ".join(notes) + f"; using {what}",
                       **flags, **base)


RELIABILITY_LEVELS = (0.5, 0.68, 0.9, 0.95, 0.99)


def reliability(widths, errors, groups, levels=RELIABILITY_LEVELS) -> dict[float, float]:
    """Observed coverage at each nominal level, cross-validated by group (a frame, say):
    each group's pairs are checked against the conformal scale fitted on the other groups,
    so no pair is judged by a fit it took part in. NaN where too few pairs remain."""
    w = np.asarray(widths, dtype=float).ravel()
    e = np.abs(np.asarray(errors, dtype=float).ravel())
    g = np.asarray(groups).ravel()
    ok = np.isfinite(w) & np.isfinite(e) & (w > 0)
    w, e, g = w[ok], e[ok], g[ok]
    out = {}
    for level in levels:
        inside = n = 0
        for label in np.unique(g):
            mine = g == label
            try:
                q = conformal_scale(w[~mine], e[~mine], level)
            except ValueError:
                inside = n = 0
                break
            inside += int(np.sum(e[mine] <= q * w[mine]))
            n += int(mine.sum())
        out[float(level)] = inside / n if n else float("nan")
    return out
