"""Batch selection strategies: which uncertain frames to label, as indices with a reason each.

Pure numpy functions (no scikit-learn, no torch), with the same signature::

    strategy(candidates: Candidates, k: int, rng: np.random.Generator, *,
             threshold: float = 0.0, upper: float = inf, **options) -> list[Choice]

``candidates`` holds, per frame, the uncertainty (the Student-t force CI width, max over
atoms, eV/A; or any per-frame score, e.g. DP-GEN's max force deviation), optionally a
feature matrix (n_frames x d), group labels (the condition: composition, temperature,
walker) and the per-atom widths; optionally the features (and widths) of frames already
in the training set. A strategy returns at most ``k`` distinct indices into the
candidates, each with the reason it was chosen; it returns fewer when fewer frames are
eligible (``threshold < uncertainty <= upper``; ``dpgen_window``: ``lo <= u < hi``).
Filling a fixed budget with confident frames is the caller's decision, not the rule's.

Strategies (``STRATEGIES``):

* ``topk`` - the highest uncertainties (what ``driver.selection.select`` does, without the
  near-duplicate filter);
* ``dpgen_window`` - DP-GEN's rule: uniformly at random inside the trust window [lo, hi);
* ``fps_uncertain`` - greedy farthest-point sampling in feature space among the eligible
  frames, starting from the most uncertain one (and from the training set, when given);
* ``kmeans_uncertain`` - k-means (k-means++ seeding, Arthur & Vassilvitskii 2007; Lloyd
  iterations) in feature space among the eligible frames, then the most uncertain frame of
  each cluster: uncertainty within representativeness;
* ``maxdet`` - greedy maximisation of the log-determinant of an uncertainty-scaled RBF kernel
  (bmdal-reg's ``maxdet``, Holzmueller et al. 2023): each step takes the frame of largest
  posterior variance given the frames already chosen (and the training set);
* ``lcmd`` - largest cluster maximum distance (Holzmueller, Zaverkin, Kaestner, Steinwart,
  "A Framework and Benchmark for Deep Batch Active Learning for Regression", JMLR 24(164),
  2023): every eligible frame belongs to its nearest centre (training frames and frames
  chosen so far) in the distance of the same scaled kernel; each step takes, in the cluster
  with the largest sum of squared distances, the frame farthest from its centre.

``per_group`` wraps any of them: the budget is split over the groups (largest remainder,
in proportion to each group's eligible frames, or equally) and the strategy runs within
each group. ``select(name, ...)`` looks a strategy up by name.

Features: per-frame means of the DeePMD descriptor (``remote_al.features``, on the
endpoint), or the model-free ones of ``driver.feature_space``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from driver.candidates import Candidates, Choice, SelectionInputError
from driver.feature_space import kmeans, lengthscale, scaled_rbf, sq_dist, standardize


# ------------------------------------------------------------------ shared pieces
def eligible(u: np.ndarray, threshold: float = 0.0, upper: float = np.inf) -> np.ndarray:
    """Indices with ``threshold < u <= upper`` (finite), the rule of ``driver.selection.select``."""
    u = np.asarray(u, dtype=float)
    return np.flatnonzero(np.isfinite(u) & (u > threshold) & (u <= upper))


def _order_by_uncertainty(u: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` sorted by decreasing ``u``, ties by index (deterministic)."""
    return idx[np.lexsort((idx, -u[idx]))]


def _need_features(c: Candidates, name: str) -> np.ndarray:
    if c.features is None:
        raise SelectionInputError(f"strategy {name!r} needs per-frame features")
    return c.features


def _features_with_labeled(c: Candidates, idx: np.ndarray, name: str):
    """Standardized features of the eligible frames and of the training frames (same scaling)."""
    x = _need_features(c, name)
    ref = x[idx] if c.labeled_features is None else np.vstack([x[idx], c.labeled_features])
    xs = standardize(x[idx], ref)
    ls = None if c.labeled_features is None else standardize(c.labeled_features, ref)
    return xs, ls


def _labeled_scale(c: Candidates, u_eligible: np.ndarray) -> np.ndarray | None:
    if c.labeled_features is None:
        return None
    if c.labeled_uncertainty is not None:
        return c.labeled_uncertainty
    # without their widths, training frames count as typical ones
    return np.full(len(c.labeled_features), float(np.median(u_eligible)) if len(u_eligible) else 1.0)


def _prepare(c: Candidates, k: int, threshold: float, upper: float, name: str, rng=None):
    """For the feature-space rules: the eligible indices (most uncertain first), their
    standardized features and the training frames' (same scaling), their uncertainties and,
    given ``rng``, the RBF length scale; None when there is nothing to choose."""
    idx = _order_by_uncertainty(c.uncertainty, eligible(c.uncertainty, threshold, upper))
    if len(idx) == 0 or k <= 0:
        return None
    x, lx = _features_with_labeled(c, idx, name)
    return idx, x, lx, c.uncertainty[idx], None if rng is None else lengthscale(x, rng)


# ---------------------------------------------------------------------- strategies
def topk(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
         upper: float = np.inf) -> list[Choice]:
    """The ``k`` highest uncertainties among the eligible frames (``rng`` unused)."""
    idx = _order_by_uncertainty(c.uncertainty, eligible(c.uncertainty, threshold, upper))[: max(0, k)]
    return [Choice(int(i), f"uncertainty {c.uncertainty[i]:.3f} above {threshold:g}, rank {r + 1}")
            for r, i in enumerate(idx)]


def dpgen_window(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
                 upper: float = np.inf) -> list[Choice]:
    """DP-GEN's trust window: up to ``k`` frames uniformly at random with ``threshold <= u < upper``
    (``trust_lo``/``trust_hi`` on DP-GEN's max force deviation; ``fp_task_max``)."""
    u = c.uncertainty
    window = np.flatnonzero(np.isfinite(u) & (u >= threshold) & (u < upper))
    take = window if len(window) <= k else np.sort(rng.choice(window, size=k, replace=False))
    return [Choice(int(i), f"in the trust window [{threshold:g}, {upper:g}) ({u[i]:.3f}; "
                   f"{len(window)} frames in it), at random") for i in take]


def fps_uncertain(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
                  upper: float = np.inf) -> list[Choice]:
    """Greedy farthest-point sampling in (standardized) feature space among the eligible
    frames: first the most uncertain (or, with a training set, the most uncertain as well),
    then each step the frame farthest from the training frames and those chosen so far;
    ties go to the more uncertain frame (``rng`` unused)."""
    u = c.uncertainty
    prep = _prepare(c, k, threshold, upper, "fps_uncertain")
    if prep is None:
        return []
    idx, x, lx, _, _ = prep
    dmin = np.full(len(idx), np.inf) if lx is None else sq_dist(x, lx).min(axis=1)
    out = [Choice(int(idx[0]), f"most uncertain eligible frame ({u[idx[0]]:.3f} above {threshold:g})")]
    dmin = np.minimum(dmin, sq_dist(x, x[:1])[:, 0])
    taken = np.zeros(len(idx), bool)
    taken[0] = True
    while len(out) < min(k, len(idx)):
        d = np.where(taken, -1.0, dmin)
        j = int(np.argmax(d))  # idx is sorted by uncertainty: the first maximum is the most uncertain
        taken[j] = True
        out.append(Choice(int(idx[j]), f"farthest from the chosen and trained frames (distance "
                          f"{np.sqrt(d[j]):.3f}), uncertainty {u[idx[j]]:.3f}"))
        dmin = np.minimum(dmin, sq_dist(x, x[j : j + 1])[:, 0])
    return out


def kmeans_uncertain(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
                     upper: float = np.inf, iterations: int = 30) -> list[Choice]:
    """k clusters (k-means, k-means++ seeding) of the eligible frames in (standardized)
    feature space; from each cluster its most uncertain frame. Dense regions of the pool get
    more clusters, so the batch follows the pool's distribution, and within each region it
    takes the frame the ensemble knows least."""
    u = c.uncertainty
    idx = eligible(u, threshold, upper)
    if len(idx) == 0 or k <= 0:
        return []
    if len(idx) <= k:
        return [Choice(int(i), f"eligible ({u[i]:.3f} above {threshold:g}); no more than the budget")
                for i in _order_by_uncertainty(u, idx)]
    x = standardize(_need_features(c, "kmeans_uncertain")[idx])
    labels, _ = kmeans(x, k, rng, iterations)
    out = []
    for j in range(k):
        members = idx[labels == j]
        if len(members) == 0:
            continue
        best = _order_by_uncertainty(u, members)[0]
        out.append(Choice(int(best), f"most uncertain ({u[best]:.3f}) of k-means cluster {j + 1}/{k} "
                          f"({len(members)} frames)"))
    if len(out) < k:  # clusters that stayed empty: the most uncertain frames left
        have = {ch.index for ch in out}
        for i in _order_by_uncertainty(u, idx):
            if len(out) >= k:
                break
            if int(i) not in have:
                out.append(Choice(int(i), f"uncertainty {u[i]:.3f}, filling an empty cluster"))
    return out


def maxdet(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
           upper: float = np.inf, noise: float = 1e-6) -> list[Choice]:
    """Greedy log-determinant maximisation (bmdal-reg's ``maxdet``, Holzmueller et al. 2023)
    on the kernel k(a, b) = u_a u_b exp(-|a - b|^2 / 2 l^2) over standardized features (l: the
    median pairwise distance of the eligible frames): each step takes the frame with the
    largest posterior variance given the training frames and those chosen so far (pivoted
    Cholesky; the first pick without a training set is the most uncertain frame)."""
    prep = _prepare(c, k, threshold, upper, "maxdet", rng)
    if prep is None:
        return []
    idx, x, lx, ue, ell = prep
    n = len(idx)
    xa = x if lx is None else np.vstack([x, lx])  # eligible frames, then the training frames
    ua = ue if lx is None else np.concatenate([ue, _labeled_scale(c, ue)])
    var = ua * ua + noise  # posterior variance of every frame given the pivots so far
    basis: list[np.ndarray] = []  # columns of the pivoted Cholesky factor over all frames

    def pivot(j: int) -> None:
        kj = scaled_rbf(xa, ua, xa[j : j + 1], ua[j : j + 1], ell)[:, 0]
        col = (kj - sum(b * b[j] for b in basis)) / np.sqrt(max(var[j], noise))
        basis.append(col)
        np.maximum(var - col * col, 0.0, out=var)

    for t in range(n, len(xa)):  # condition on the training frames
        if var[t] > 2.0 * noise:
            pivot(t)
    out = []
    taken = np.zeros(n, bool)
    while len(out) < min(k, n):
        v = np.where(taken, -1.0, var[:n])
        j = int(np.argmax(v))  # ties: the more uncertain (idx is sorted by u)
        taken[j] = True
        out.append(Choice(int(idx[j]), f"largest posterior variance of the scaled kernel (sd {np.sqrt(max(v[j], 0.0)):.3f}"
                          f" of prior {ue[j]:.3f}) given {len(basis)} frames before"))
        pivot(j)
    return out


def lcmd(c: Candidates, k: int, rng: np.random.Generator, *, threshold: float = 0.0,
         upper: float = np.inf) -> list[Choice]:
    """Largest cluster maximum distance (Holzmueller et al., JMLR 24(164), 2023) in the
    distance of the uncertainty-scaled RBF kernel, d(a, b)^2 = k(a, a) + k(b, b) - 2 k(a, b):
    every eligible frame belongs to its nearest centre (training frames and frames chosen so
    far; without a training set the first centre is the most uncertain frame); each step
    takes, in the cluster with the largest sum of squared distances to its centre, the
    frame farthest from that centre."""
    prep = _prepare(c, k, threshold, upper, "lcmd", rng)
    if prep is None:
        return []
    idx, x, lx, ue, ell = prep
    out: list[Choice] = []
    taken = np.zeros(len(idx), bool)
    if lx is None:
        out.append(Choice(int(idx[0]), f"most uncertain eligible frame ({ue[0]:.3f} above {threshold:g}), first centre"))
        taken[0] = True
        d2 = ue * ue + ue[0] ** 2 - 2.0 * scaled_rbf(x, ue, x[:1], ue[:1], ell)[:, 0]
        centre = np.zeros(len(idx), dtype=int)  # centre id: -1 - t for training frame t, else position in out
    else:
        lu = _labeled_scale(c, ue)
        best_d2 = np.full(len(idx), np.inf)
        centre = np.zeros(len(idx), dtype=int)
        for s in range(0, len(lx), 256):
            kk = scaled_rbf(x, ue, lx[s : s + 256], lu[s : s + 256], ell)
            dd = ue[:, None] ** 2 + lu[None, s : s + 256] ** 2 - 2.0 * kk
            j = dd.argmin(axis=1)
            better = dd[np.arange(len(idx)), j] < best_d2
            best_d2 = np.where(better, dd[np.arange(len(idx)), j], best_d2)
            centre = np.where(better, -1 - (s + j), centre)
        d2 = best_d2
    d2 = np.maximum(d2, 0.0)
    d2[taken] = 0.0
    while len(out) < min(k, len(idx)):
        live = ~taken
        ids, inv = np.unique(centre[live], return_inverse=True)
        sizes = np.bincount(inv, weights=d2[live], minlength=len(ids))
        big = ids[int(np.argmax(sizes))]
        in_big = np.flatnonzero(live & (centre == big))
        j = int(in_big[np.argmax(d2[in_big])])  # ties: the more uncertain (idx is sorted by u)
        what = f"training frame {-1 - big}" if big < 0 else f"pick {big + 1}"
        out.append(Choice(int(idx[j]), f"farthest ({np.sqrt(d2[j]):.3f}) in the largest cluster (around {what}, "
                          f"{len(in_big)} frames, size {sizes.max():.3g}), uncertainty {ue[j]:.3f}"))
        taken[j] = True
        nd = ue * ue + ue[j] ** 2 - 2.0 * scaled_rbf(x, ue, x[j : j + 1], ue[j : j + 1], ell)[:, 0]
        nd = np.maximum(nd, 0.0)
        closer = nd < d2
        d2 = np.where(closer, nd, d2)
        centre = np.where(closer, len(out) - 1, centre)
        d2[taken] = 0.0
    return out


Strategy = Callable[..., list[Choice]]
STRATEGIES: dict[str, Strategy] = {
    "topk": topk,
    "dpgen_window": dpgen_window,
    "fps_uncertain": fps_uncertain,
    "kmeans_uncertain": kmeans_uncertain,
    "maxdet": maxdet,
    "lcmd": lcmd,
}


# ------------------------------------------------------------------------- quotas
def quotas(available: Sequence[int], k: int, share: str = "candidates") -> list[int]:
    """Split ``k`` over groups with ``available`` eligible frames each: in proportion to them
    (``share="candidates"``) or equally (``"equal"``), largest remainder, never more than a
    group has; what a group cannot take goes to the others."""
    avail = np.asarray(available, dtype=int)
    if share not in ("candidates", "equal"):
        raise SelectionInputError(f"share must be 'candidates' or 'equal', got {share!r}")
    q = np.zeros(len(avail), dtype=int)
    left = min(int(k), int(avail.sum()))
    while left > 0:
        room = avail - q
        open_ = room > 0
        w = np.where(open_, room if share == "candidates" else 1, 0).astype(float)
        ideal = left * w / w.sum()
        add = np.minimum(np.floor(ideal).astype(int), room)
        rest = left - int(add.sum())
        if rest > 0:  # largest remainders, ties to the lower group index
            frac = np.where(open_ & (add < room), ideal - np.floor(ideal), -1.0)
            for j in np.lexsort((np.arange(len(frac)), -frac))[:rest]:
                if frac[j] >= 0:
                    add[j] += 1
        if add.sum() == 0:
            break
        q += add
        left -= int(add.sum())
    return [int(v) for v in q]


def per_group(strategy: str | Strategy, c: Candidates, k: int, rng: np.random.Generator, *,
              share: str = "candidates", threshold: float = 0.0, upper: float = np.inf,
              **options) -> list[Choice]:
    """Split the budget over the condition groups (``quotas``) and run ``strategy`` within each
    group with its quota; a group's eligible frames follow the strategy's own rule."""
    fn = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    if c.groups is None:
        raise SelectionInputError("per_group needs group labels")
    names = sorted(set(c.groups), key=str)
    gidx = {g: np.array([i for i, h in enumerate(c.groups) if h == g], dtype=int) for g in names}
    u = c.uncertainty
    if fn is dpgen_window:
        n_ok = [int(np.sum((u[gidx[g]] >= threshold) & (u[gidx[g]] < upper))) for g in names]
    else:
        n_ok = [len(eligible(u[gidx[g]], threshold, upper)) for g in names]
    q = quotas(n_ok, k, share)
    out: list[Choice] = []
    for g, n_g, qg in zip(names, n_ok, q):
        if qg == 0:
            continue
        sub = fn(c.subset(gidx[g]), qg, rng, threshold=threshold, upper=upper, **options)
        out += [Choice(int(gidx[g][ch.index]), f"group {g} (quota {qg} of {k}, {n_g} eligible): {ch.reason}")
                for ch in sub]
    return out


def select(name: str, c: Candidates, k: int, rng: np.random.Generator, *, quota: bool = False,
           share: str = "candidates", **options) -> list[Choice]:
    """Run strategy ``name`` (``STRATEGIES``), per group when ``quota``; options go to the strategy."""
    if name not in STRATEGIES:
        raise SelectionInputError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if k < 0:
        raise SelectionInputError(f"budget k must be >= 0, got {k}")
    if quota:
        return per_group(name, c, k, rng, share=share, **options)
    return STRATEGIES[name](c, k, rng, **options)
