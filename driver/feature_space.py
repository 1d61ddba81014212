"""Feature-space arithmetic of the batch selection rules (driver.strategies): scaling,
distances, the uncertainty-scaled RBF kernel, k-means++, and fixed-length frame features
for when the model's descriptors are not at hand. Pure numpy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# the per-atom width histogram is computed where the widths are, in the UQ evaluation (endpoint side)
from remote_al.uq import atom_width_histogram  # noqa: F401


def standardize(x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Columns to zero mean and unit variance over ``ref`` (default ``x``), divided by
    sqrt(d) so that distances do not grow with the width; constant columns become 0."""
    x = np.asarray(x, dtype=float)
    ref = x if ref is None else np.asarray(ref, dtype=float)
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    sd = np.where(sd > 1e-12 * (np.abs(mu) + 1.0), sd, np.inf)
    return (x - mu) / sd / np.sqrt(max(1, x.shape[1]))


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def lengthscale(x: np.ndarray, rng: np.random.Generator, sample: int = 400) -> float:
    """Median pairwise distance of (a sample of) the rows: the RBF kernel's length scale."""
    if len(x) < 2:
        return 1.0
    if len(x) > sample:
        x = x[rng.choice(len(x), size=sample, replace=False)]
    d = np.sqrt(sq_dist(x, x)[np.triu_indices(len(x), 1)])
    med = float(np.median(d))
    return med if med > 1e-12 else 1.0


def scaled_rbf(xa, ua, xb, ub, ell) -> np.ndarray:
    """k(a, b) = u_a u_b exp(-|a - b|^2 / (2 ell^2)): the uncertainty-scaled kernel, k(a, a) = u_a^2."""
    return ua[:, None] * ub[None, :] * np.exp(-sq_dist(xa, xb) / (2.0 * ell * ell))


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007). Returns
    (labels (n,), centres (k, d)); an emptied cluster is re-seeded at the point farthest
    from its centre."""
    n = len(x)
    k = min(k, n)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = sq_dist(x, centres[:1])[:, 0]
    for j in range(1, k):
        tot = d2.sum()
        i = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        centres[j] = x[i]
        d2 = np.minimum(d2, sq_dist(x, centres[j : j + 1])[:, 0])
    labels = np.full(n, -1)
    for _ in range(iterations):
        dist = sq_dist(x, centres)
        new = dist.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                centres[j] = x[members].mean(axis=0)
            else:
                far = int(dist[np.arange(n), labels].argmax())
                centres[j] = x[far]
                labels[far] = j
    return labels, centres


def distance_histogram(distances: Sequence[np.ndarray], n_atoms: Sequence[int], r_max: float = 4.0,
                       bins: int = 24) -> np.ndarray:
    """Fixed-length features from neighbour distances (``driver.selection.fingerprint``'s sorted
    array per frame): the count of pairs per bin of [0, r_max) divided by the number of atoms."""
    edges = np.linspace(0.0, r_max, bins + 1)
    out = np.zeros((len(distances), bins))
    for i, (d, n) in enumerate(zip(distances, n_atoms)):
        out[i] = np.histogram(np.asarray(d, dtype=float), bins=edges)[0] / max(1, int(n))
    return out
