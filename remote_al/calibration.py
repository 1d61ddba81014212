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

Covariate shift, by energy (``weighting = "thermal"``). The calibration frames are the
campaign's own: rattled and strained copies, near-minimum copies and ensemble-driven MD
frames. The frames a bound is used on are those of MD at the campaign's conditions, which
lie in a band of potential energy above the minimum (``3/2 k_B T`` per atom on average,
for a harmonic solid). Measured (docs/uncertainty.md, attempt 18): frames much colder or
much hotter than that band have larger errors for the same width, so a fit on all frames
is conservative on the MD frames. Weighted split-conformal prediction (Tibshirani et al.
2019) corrects a known covariate shift by weighting each calibration pair
(``weighted_conformal_scale``); ``thermal_weights`` gives weight 1 to the frames whose
energy above their composition's minimum lies inside the central 99.8 % of the harmonic
canonical distribution at the campaign's temperatures, 0 to the rest. (A smooth density
ratio was measured too and gave the same coverage with fewer effective frames.) When
fewer frames than the level needs are left, the unweighted fit is used and the note says
so.

By origin (``weighting = "md"``): weight 1 to the held-out frames drawn at random from
the campaign's own MD explorations, 0 to the rest. Those frames are a random sample of
the frames the threshold and the confident share judge, which is what split-conformal
coverage assumes of its calibration frames; rattled copies and the out-of-bag (selected)
frames are not. Same fallback when too few of them.
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


def conformal_rank(n: int, coverage: float) -> int | None:
    """The rank k = ceil((n + 1) coverage) of the split-conformal quantile among n sorted
    scores; None when it is past the last one (too few pairs for the level)."""
    k = int(math.ceil((n + 1) * coverage))
    return k if 1 <= k <= n else None


def conformal_scale(widths, errors, coverage: float = 0.95) -> float:
    """The split-conformal factor ``q``: ``|e| <= q w`` for at least ``coverage`` of new pairs.

    Raises ValueError when there are fewer than ``min_pairs(coverage)`` usable pairs."""
    w, e, _ = _pairs(widths, errors)
    n = w.size
    k = conformal_rank(n, coverage)
    if k is None:
        raise ValueError(f"{n} calibration pairs are too few for {coverage:.0%} (need {min_pairs(coverage)})")
    scores = np.sort(e / w)
    return float(scores[k - 1])


def weighted_conformal_scale(widths, errors, weights, coverage: float = 0.95) -> float:
    """Weighted split-conformal factor (Tibshirani et al. 2019): the smallest score ``|e| / w``
    whose weighted share reaches ``coverage`` when one more pair sits at infinity with the
    weight a test frame has on average, ``sum w^2 / sum w`` (the weights' mean under the
    target distribution). That puts ``1 / (n_eff + 1)`` at infinity, ``n_eff`` the effective
    number of pairs; equal weights give :func:`conformal_scale`.

    Raises ValueError when the weights leave fewer than ``min_pairs(coverage)`` effective pairs."""
    w, e, wt = _pairs(widths, errors, weights)
    n_eff = effective_pairs(wt)
    if n_eff < min_pairs(coverage) - 1e-9:
        raise ValueError(f"{n_eff:.1f} effective calibration pairs are too few for {coverage:.0%} "
                         f"(need {min_pairs(coverage)})")
    order = np.argsort(e / w)
    share = np.cumsum(wt[order]) / (wt.sum() + (wt ** 2).sum() / wt.sum())
    k = int(np.searchsorted(share, coverage - 1e-12))
    if k >= w.size:
        raise ValueError(f"the weighted {coverage:.0%} quantile is at infinity ({n_eff:.1f} effective pairs)")
    return float((e / w)[order][k])


def effective_pairs(weights) -> float:
    """Kish's effective sample size of weighted pairs, ``(sum w)^2 / sum w^2``."""
    wt = np.asarray(weights, dtype=float).ravel()
    return float(wt.sum() ** 2 / (wt ** 2).sum()) if wt.size and (wt ** 2).sum() > 0 else 0.0


K_B_EV = 8.617333262e-5  # Boltzmann's constant, eV/K


def thermal_weights(excess, natoms, temperatures, tail: float = 0.001) -> np.ndarray:
    """Per frame, 1 when its energy above the minimum ``excess`` (eV/atom) lies inside the
    central ``1 - 2 tail`` of the harmonic canonical distribution of an ``natoms``-atom cell
    (a Gamma of shape 3N/2 and mean 3/2 k_B T per atom), mixed over ``temperatures``, else 0:
    the frames the campaign's MD could visit. The weights of ``weighted_conformal_scale``
    (0/1 weights make it the plain conformal quantile of the frames inside)."""
    from scipy import stats  # here: scipy.stats takes a second to import, and the CLI imports this module

    x = np.asarray(excess, dtype=float).ravel()
    n = np.asarray(natoms, dtype=float).ravel()
    temps = [float(t) for t in temperatures]
    if x.size != n.size or not temps or np.any(n < 1):
        raise ValueError("excess and natoms need one entry per frame (natoms >= 1), and at least one temperature")
    cdf = np.mean([stats.gamma.cdf(x, 1.5 * n, scale=K_B_EV * t / n) for t in temps], axis=0)
    return ((cdf >= tail) & (cdf <= 1.0 - tail)).astype(float)


def coverage_range(n: float, coverage: float = 0.95, central: float = 0.90) -> list[float] | None:
    """The central ``central`` share of the coverage an exact split-conformal fit on ``n``
    exchangeable pairs gives on new pairs: Beta(k, n + 1 - k), k = ceil((n + 1) coverage)
    (Vovk 2012; Angelopoulos & Bates 2021, sec. 3.2). None when n is too small for the level."""
    n = int(math.floor(n))
    k = conformal_rank(n, coverage)
    if k is None:
        return None
    from scipy import stats  # here: scipy.stats takes a second to import

    tail = (1.0 - central) / 2.0
    return [round(float(stats.beta.ppf(tail, k, n + 1 - k)), 4), round(float(stats.beta.ppf(1.0 - tail, k, n + 1 - k)), 4)]


def gaussian_scale(widths, errors, coverage: float = 0.95) -> float:
    """Imbalzano et al. 2021 style: one scale so that errors are unit-variance Gaussian in
    units of the width, then the two-sided Gaussian quantile at ``coverage``."""
    w, e, _ = _pairs(widths, errors)
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
    w, e, _ = _pairs(widths, errors)
    return float(np.mean(e <= scale * w)) if w.size else float("nan")


def _pairs(widths, errors, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Usable (width, |error|, weight) triples; weights of 1 when none are given."""
    w = np.asarray(widths, dtype=float).ravel()
    e = np.abs(np.asarray(errors, dtype=float).ravel())
    if w.shape != e.shape:
        raise ValueError(f"{w.size} widths but {e.size} errors")
    ok = np.isfinite(w) & np.isfinite(e) & (w > 0)
    wt = np.ones_like(w) if weights is None else np.asarray(weights, dtype=float).ravel()
    if wt.shape != w.shape:
        raise ValueError(f"{w.size} pairs but {wt.size} weights")
    ok &= np.isfinite(wt) & (wt >= 0)
    return w[ok], e[ok], wt[ok]


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
    frame_weights=None,
    atom_weights=None,
    note: str = "",
    weighting: str = "thermal",
    pooled_generations=(),
) -> Calibration:
    """Fit one generation's calibration; see the module docstring for the rules.
    ``frame_widths`` / ``frame_errors``: per frame, the largest per-atom width and error
    (``frame_pairs``); the frame scale is fitted from them when there are enough, else
    the per-atom scale stands in (and the note says so). ``frame_weights`` (per frame, the
    energy and frame pairs) and ``atom_weights`` (per atom, each its frame's weight): the
    covariate-shift weights of ``thermal_weights``; conformal fits are then weighted, and
    each falls back to the unweighted fit, with a note, where the weights leave too few
    effective frames. ``weighting``: what the weights are, as the record names it
    (``"thermal"`` or ``"md"``). ``note``: the caller's remark, first in the record's note.
    ``pooled_generations``: the earlier generations whose pairs are among these, as the
    record names them."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {METHODS}")
    weighted = frame_weights is not None and method == "conformal"
    fw, fe, fwt = _pairs(atom_widths, atom_errors, atom_weights if weighted else None)
    ew, ee, ewt = _pairs(energy_widths, energy_errors, frame_weights if weighted else None)
    base = dict(generation=generation, method=method, coverage=coverage_level, n_frames=int(n_frames),
                n_force_pairs=int(fw.size), n_energy_pairs=int(ew.size), n_members=int(n_members), source=source,
                pooled_generations=[int(k) for k in pooled_generations])
    frames_eff = round(effective_pairs(ewt), 1) if weighted else 0.0
    if weighted:
        base.update(weighting=weighting, effective_frames=frames_eff)
    notes = [note] if note else []

    def scale(w, e, wt, what):
        if method == "conformal":
            if weighted:
                try:
                    # a frame's atoms are not independent: the weighted force fit also needs
                    # min_frames effective frames, not only enough effective atoms
                    if frames_eff < min_frames:
                        raise ValueError(f"{frames_eff:g} effective frames, fewer than the {min_frames} asked for")
                    return weighted_conformal_scale(w, e, wt, coverage_level)
                except ValueError as exc:
                    notes.append(f"{what}: unweighted fit ({exc})")
            return conformal_scale(w, e, coverage_level)
        if method == "gaussian_scale":
            return gaussian_scale(w, e, coverage_level)
        return prediction_interval_scale(n_members)

    def fitted(what: str, w, e, wt) -> float | None:
        try:
            if n_frames < min_frames:
                raise ValueError(f"{n_frames} frames, fewer than the {min_frames} asked for")
            return scale(w, e, wt, what)
        except ValueError as exc:
            notes.append(f"{what}: {exc}")
            return None

    f_scale = fitted("forces", fw, fe, fwt)
    e_scale = fitted("energies", ew, ee, ewt)
    if method == "conformal":  # the spread of what each fit covers, from the frames it took
        unweighted = {what for what in ("forces", "energies") if any(n.startswith(f"{what}: unweighted") for n in notes)}
        if f_scale is not None:
            base["force_coverage_range"] = coverage_range(
                frames_eff if weighted and "forces" not in unweighted else n_frames, coverage_level)
        if e_scale is not None:
            base["energy_coverage_range"] = coverage_range(
                frames_eff if weighted and "energies" not in unweighted else ew.size, coverage_level)
    frame: dict = {}
    if frame_widths is not None:
        rw, re_, rwt = _pairs(frame_widths, frame_errors, frame_weights if weighted else None)
        frame["n_frame_pairs"] = int(rw.size)
        try:
            if n_frames < min_frames:
                raise ValueError(f"{n_frames} frames, fewer than the {min_frames} asked for")
            frame["frame_force_scale"] = scale(rw, re_, rwt, "frame forces")
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
