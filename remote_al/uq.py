"""Ensemble uncertainty: the Student-t confidence interval of the ensemble mean.

Pure functions over numpy arrays. For M members with sample standard deviation ``s``
(ddof=1), the two-sided confidence interval of the mean at level ``c`` has width

    2 * t((1 + c) / 2, M - 1) * s / sqrt(M)

which is what ``scipy.stats.t.interval(c, M - 1, loc=mean, scale=s / sqrt(M))`` spans.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def t_factor(n_members: int, confidence: float = 0.95) -> float:
    """``2 * t((1+c)/2, M-1) / sqrt(M)``: multiply a sample std by this to get the width."""
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members for a spread, got {n_members}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    from scipy import stats  # here: scipy.stats takes a second to import, and the CLI imports this module

    return float(2.0 * stats.t.ppf(0.5 + confidence / 2.0, n_members - 1) / np.sqrt(n_members))


def ensemble_ci_width(values: np.ndarray, confidence: float = 0.95, axis: int = 0) -> np.ndarray:
    """Width of the Student-t CI of the mean over ensemble members along ``axis``."""
    values = np.asarray(values, dtype=float)
    m = values.shape[axis]
    s = np.std(values, axis=axis, ddof=1)
    return t_factor(m, confidence) * s


def frame_uncertainty(
    energies: np.ndarray,
    forces: list[np.ndarray] | np.ndarray,
    natoms: np.ndarray | list[int],
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame widths from ensemble predictions.

    energies: (M, F) total energies; forces: (M, F, N, 3) or a list of F arrays (M, N_f, 3)
    for frames of different sizes. Returns (energy-per-atom width (F,), max force-component
    width (F,)).
    """
    energies = np.asarray(energies, dtype=float)
    natoms = np.asarray(natoms, dtype=float)
    if not np.all(np.isfinite(energies)):
        raise ValueError("ensemble energies contain NaN or inf: a member model is broken")
    e_width = ensemble_ci_width(energies / natoms[None, :], confidence, axis=0)
    if isinstance(forces, np.ndarray) and forces.ndim == 4:
        f_width = ensemble_ci_width(forces, confidence, axis=0).reshape(forces.shape[1], -1).max(axis=1)
    else:
        f_width = np.array([ensemble_ci_width(np.asarray(f), confidence, axis=0).max() for f in forces])
    return e_width, f_width


def atom_width_histogram(atom_widths: Sequence, edges: np.ndarray | None = None) -> np.ndarray:
    """Per frame, the share of atoms per bin of log10(per-atom force width) (default edges:
    20 bins over 10^-2.5 ... 10^1 eV/A, the outer ones open), plus the mean and max of
    log10 width: where in a frame the ensemble disagrees, not only how much at most."""
    edges = np.linspace(-2.5, 1.0, 21) if edges is None else np.asarray(edges, dtype=float)
    out = np.zeros((len(atom_widths), len(edges) + 1))
    for i, w in enumerate(atom_widths):
        lw = np.log10(np.maximum(np.asarray(w, dtype=float), 1e-12))
        h = np.histogram(np.clip(lw, edges[0], edges[-1]), bins=edges)[0]
        out[i, : len(edges) - 1] = h / max(1, len(lw))
        out[i, -2] = lw.mean()
        out[i, -1] = lw.max()
    return out
