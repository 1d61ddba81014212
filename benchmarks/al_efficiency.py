"""Active-learning efficiency: labels needed to reach a target accuracy, by selection rule.

    .venv/bin/python benchmarks/al_efficiency.py --workers 1    # first pass (docs/benchmarks.md: timing)
    .venv/bin/python benchmarks/al_efficiency.py --strategies all   # every rule (adds to the cache)
    .venv/bin/python benchmarks/al_efficiency.py --report       # results from the cache, no training
    .venv/bin/python benchmarks/al_efficiency.py --quick        # smoke run, results in the workdir

Pool-based comparison on the example campaign's systems (examples/linio2.toml: LiNiO2 and
Li0.75NiO2 in (2, 2, 1) cells of 16/15 atoms, CHGNet labels as the stand-in for DFT).

Stage 0 (cached under ``--workdir``, default ``runs/al_efficiency``, which git ignores):

* initial data: the campaign's ``initial`` section (10 rattled/strained frames per
  composition, rattle 0.02-0.12 A, strain 3 %, campaign seed 7), labeled with CHGNet;
* an unlabeled candidate POOL: MD (``remote_al.dynamics.run_md``, 600 steps, 300, 700 and
  1000 K, both compositions, two walkers, 40 frames a run) with two throwaway DeePMD models
  trained on the initial data plus 48 extra rattled frames (up to 0.25 A; without close
  contacts in their data the MD collapses), plus 30 strongly rattled frames (0.10-0.20 A,
  strain 4 %). Every frame passes ``remote_al.structures.check_structure`` and is labeled
  once with CHGNet, so each strategy's "labeler call" is a lookup and the budget counts
  labels, not seconds. Two pools are compared: ``all`` (every frame) and ``campaign`` (only
  the MD frames at the campaign's temperatures, 300 and 700 K: what the example campaign's
  exploration produces);
* a held-out TEST set, never in the pool, never trained on: MD driven by CHGNet itself at
  the campaign's temperatures (300 and 700 K, both compositions; 20 frames 10 fs apart after
  100 fs): the in-distribution group; CHGNet MD at 1000 K and the campaign's 3 rattled test
  frames per composition: the out-of-distribution group.

Then, per seed, a round-0 ensemble of 4 members (``remote_al.training.train_member``,
subset 0.9, the campaign's loss prefactors, 800 steps from scratch) is trained on the
initial data and shared by the strategies. Each strategy runs ``--rounds`` (6) rounds of
``--k`` (20) labels, to 140 labels: the previous ensemble evaluates the pool
(``predict_ensemble``: Student-t widths, per-atom widths, DP-GEN's deviation, the true
error for the oracle; ``remote_al.features``: the first member's per-type mean descriptor
per frame), the strategy picks k frames, their labels join the training set, every member
continues from its previous checkpoint (``init_model``, as the campaign does) for
``--steps-continue`` steps, and the new ensemble's mean is scored on the test set by group.
Member seeds depend on (seed, round, member) only, the same for every strategy.

Strategies (``STRATEGIES``; the rules themselves are ``driver.strategies``), all spending
exactly k labels a round:

* ``random``: k frames uniformly from the unlabeled pool; the reference;
* ``oracle``: the k largest true force errors (frame RMSE of the ensemble mean against the
  CHGNet label): what a perfect per-frame error estimate would pick;
* ``topk``, ``fps``, ``kmeans``, ``maxdet``, ``lcmd``: the rules of ``driver.strategies``
  on the Student-t force width (max over atoms) with the campaign's threshold 0.10 eV/A
  and trust bound 3.0 eV/A, features of the selecting ensemble (``@desc``, the default;
  ``@awh``: per-atom width histogram; ``@dist``: neighbour-distance histogram) and the
  training set (initial data and frames labeled so far) as the frames already known;
  ``_group``: within per-condition quotas (composition x temperature, or rattled);
* ``dpgen_window``: DP-GEN's rule on its max force deviation in the trust window [lo, hi),
  the 50th and 95th percentiles of the round-0 deviations on the pool (per seed and pool).

When a rule finds fewer than k eligible frames, the highest scores below its range and then
the lowest above it fill the budget (``fill_budget``). The target of "labels to target" is
random's mean in-distribution test force RMSE at the full budget; the labels a rule needs
to reach it come from linear interpolation between rounds on the mean curve over seeds,
with a 95 % interval from resampling the seeds (``bootstrap_ratio``).

Training runs in ``--workers`` (1) persistent worker processes. ``--launcher in-process``
(default) runs train_member's ``dp --pt train`` / ``dp --pt freeze`` through DeePMD-kit's
entry point inside the worker instead of a subprocess (same arguments, same results,
torch imported once per worker); ``--launcher subprocess`` runs train_member unchanged.

Outputs in ``--out-dir``: ``al_efficiency.json`` (``headline``, settings, stage-0 summary,
the 10k-candidate selection timing, the round-0 feature study, per pool the curves,
labels-to-target with intervals and the last round's errors by test group, every record
with the frames it picked and why), ``al_efficiency.csv`` (one row per pool, strategy,
seed and round), ``al_efficiency.png`` (full pool) and ``al_efficiency_campaign_pool.png``.
They are rewritten after every finished (pool, strategy, seed), so an interrupted run
leaves partial results; every finished round is cached, so it resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ[_k] = "1"
os.environ.setdefault("NUM_WORKERS", "0")
os.environ.setdefault("DP_INFER_BATCH_SIZE", "1024")  # DeePMD-kit's default; set, it is not announced per model

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TYPE_MAP = ("Li", "Ni", "O")
# The selection rules, in the order a run trains them: the first ones are the first pass
# (``--strategies`` picks any subset; every finished round is cached, so a later invocation
# adds the rest). "<rule>_group": the rule within per-condition quotas (driver.strategies.
# per_group); "@awh" / "@dist": the same rule in another feature space (per-atom width
# histogram, neighbour-distance histogram) instead of the DeePMD descriptor.
STRATEGIES = (
    "random", "kmeans_group", "oracle", "lcmd_group", "topk",
    "lcmd", "topk_group", "fps", "maxdet", "kmeans", "dpgen_window", "fps_group",
    "kmeans_group@awh", "kmeans_group@dist", "topk_u2",
)
# the rule the headline reports: the campaign file's default (`selection.strategy = "topk"`, no quota),
# and the best measured one on the campaign pool (docs/benchmarks.md)
DEFAULT = "topk"
# the rule whose cost `selection_s_10k` reports: the costliest of the first pass (topk is a sort)
TIMED_RULE = "kmeans_group"
RULES = {"topk": "topk", "fps": "fps_uncertain", "kmeans": "kmeans_uncertain", "maxdet": "maxdet", "lcmd": "lcmd",
         "dpgen_window": "dpgen_window", "topk_u2": "topk"}  # benchmark name -> driver.strategies name
# Rules that use another trust bound than ``Settings.force_upper`` (3 eV/A, the benchmark's): "topk_u2" is
# top-k under examples/linio2.toml's ``selection.force_upper = 2.0`` (frames above it are not labeled)
RULE_UPPER = {"topk_u2": 2.0}
FEATURES = ("desc", "awh", "dist")
POOLS = ("campaign", "all")  # the campaign's conditions only; every pool frame
# The example campaign's structures: name, Li content, vacancy-ordering seed.
STRUCTURES = (("LiNiO2", 1.0, 0), ("Li0.75NiO2", 0.75, 1))
# The example campaign's [training.deepmd.loss] overrides (energy weighted up for short runs).
LOSS = {"start_pref_e": 0.2, "limit_pref_e": 2.0, "start_pref_f": 1000.0, "limit_pref_f": 1.0}


@dataclass
class Settings:
    seeds: int = 4
    rounds: int = 6
    k: int = 20
    members: int = 4
    subset_fraction: float = 0.9
    steps_initial: int = 800  # round 0, from scratch (the campaign's numb_steps)
    steps_continue: int = 200  # later rounds, from the previous checkpoint
    # initial data: the campaign's [initial] section
    campaign_seed: int = 7
    n_initial_per_structure: int = 10
    rattle_A: float = 0.08
    strain: float = 0.03
    # pool
    generator_members: int = 2
    generator_steps: int = 1500
    # the generators also see these (never pooled, tested or given to a strategy): without
    # close contacts in their data, MD with them collapses within a hundred steps
    generator_extra_per_structure: int = 25
    generator_rattle_A: tuple = (0.03, 0.25)
    pool_temperatures_K: tuple = (300.0, 700.0, 1000.0)
    pool_walkers: int = 2
    md_steps: int = 600
    pool_frames_per_run: int = 40
    pool_rattled_per_structure: int = 15
    pool_rattle_A: tuple = (0.10, 0.20)
    pool_strain: float = 0.04
    # test: MD with CHGNet itself (the reference's own thermal distribution), frames after
    # test_equil_steps, then every test_interval steps
    test_temperatures_K: tuple = (300.0, 700.0)  # the campaign's conditions: the in-distribution group
    # out-of-distribution test group: CHGNet MD hotter than the campaign explores (plus the rattled frames)
    test_ood_temperatures_K: tuple = (1000.0,)
    test_walkers: int = 1
    test_equil_steps: int = 100
    test_interval: int = 10
    test_frames_per_run: int = 20
    test_rattled_per_structure: int = 3
    # selection
    force_threshold: float = 0.10  # eV/A, the campaign's
    force_upper: float = 3.0  # eV/A, the campaign's
    dedup_tolerance_A: float = 0.05
    min_distance_A: float = 1.2
    dpgen_quantiles: tuple = (0.50, 0.95)
    workers: int = 1
    # "in-process": train_member's dp train/freeze run inside persistent worker processes
    # (same arguments, DeePMD-kit imported once per worker); "subprocess": train_member as is
    launcher: str = "in-process"
    # "all": every pool frame is a candidate; "campaign": only the MD frames at the campaign's
    # own temperatures (those of the in-distribution test group), i.e. what the example
    # campaign's exploration produces (no 1000 K runs, no strongly rattled frames)
    pools: tuple = POOLS
    strategies: tuple = STRATEGIES[:5]
    bootstrap: int = 2000  # resamples of the seeds for the labels-to-target intervals

    @classmethod
    def quick(cls) -> "Settings":
        return cls(
            seeds=2, rounds=2, k=4, members=2, steps_initial=60, steps_continue=30,
            generator_members=1, generator_steps=200, generator_extra_per_structure=6,
            pool_temperatures_K=(700.0, 1000.0),
            pool_walkers=1, md_steps=200, pool_frames_per_run=5, pool_rattled_per_structure=2,
            test_temperatures_K=(700.0,), test_ood_temperatures_K=(1000.0,), test_walkers=1, test_equil_steps=10, test_interval=5, test_frames_per_run=3,
            test_rattled_per_structure=1, n_initial_per_structure=4,
            strategies=("random", "kmeans_group", "oracle", "lcmd_group", "topk", "dpgen_window", "maxdet@awh",
                        "fps@dist"),
        )

    def stage0_key(self) -> dict:
        names = [
            "campaign_seed", "n_initial_per_structure", "rattle_A", "strain", "generator_members",
            "generator_steps", "generator_extra_per_structure", "generator_rattle_A", "pool_temperatures_K", "pool_walkers", "md_steps", "pool_frames_per_run",
            "pool_rattled_per_structure", "pool_rattle_A", "pool_strain", "test_temperatures_K", "test_ood_temperatures_K",
            "test_walkers", "test_equil_steps", "test_interval", "test_frames_per_run", "test_rattled_per_structure", "min_distance_A",
        ]
        d = dataclasses.asdict(self)
        return {n: (list(d[n]) if isinstance(d[n], tuple) else d[n]) for n in names}


# =============================================================== strategy functions
def max_force_deviation(forces: Sequence[np.ndarray]) -> np.ndarray:
    """DP-GEN's ``max_devi_f`` per frame: for each atom, the norm of the per-component
    standard deviation over models (ddof 0), i.e. sqrt(mean_m |f_m - mean f|^2); then the
    max over atoms. ``forces``: one (M, N, 3) array per frame."""
    out = np.empty(len(forces))
    for i, f in enumerate(forces):
        f = np.asarray(f, dtype=float)
        per_atom = np.sqrt(np.mean(np.sum((f - f.mean(axis=0)) ** 2, axis=-1), axis=0))
        out[i] = per_atom.max()
    return out


def parse_strategy(name: str) -> tuple[str, bool, str]:
    """``"kmeans_group@awh"`` -> ("kmeans", True, "awh"): the rule, per-group quotas, the features."""
    rule, _, feat = name.partition("@")
    quota = rule.endswith("_group")
    rule = rule[: -len("_group")] if quota else rule
    feat = feat or "desc"
    if rule in ("random", "oracle"):
        if quota or feat != "desc":
            raise ValueError(f"{name!r}: random and oracle take no quota or features")
    elif rule not in RULES or feat not in FEATURES:
        raise ValueError(f"unknown strategy {name!r}: rules {', '.join(['random', 'oracle', *RULES])}, "
                         f"'_group' for quotas, features '@' {', '.join(FEATURES)}")
    return rule, quota, feat


def select_random(unlabeled: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` ids uniformly, without replacement, from the unlabeled pool."""
    unlabeled = list(unlabeled)
    if len(unlabeled) <= k:
        return unlabeled
    return sorted(int(i) for i in rng.choice(unlabeled, size=k, replace=False))


def fill_budget(unlabeled: Sequence[int], score: np.ndarray, picked: Sequence[int], k: int,
                lo: float, hi: float, window: bool = False) -> list[int]:
    """Ids that bring ``picked`` up to ``k`` when the rule found fewer eligible frames: the
    highest scores below the eligible range first (below the threshold; DP-GEN: below lo),
    then the lowest above it (above the trust bound / at or above hi). ``score`` is indexed by
    id. A campaign would label fewer; the benchmark compares rules at equal budgets."""
    have = set(int(i) for i in picked)
    rest = np.array([int(i) for i in unlabeled if int(i) not in have], dtype=int)
    if len(rest) == 0 or len(have) >= k:
        return []
    u = np.asarray(score, dtype=float)[rest]
    below = (u < lo) if window else (u <= lo)
    above = ~below & ((u >= hi) if window else (u > hi))
    order = list(rest[below][np.lexsort((rest[below], -u[below]))]) + list(rest[above][np.lexsort((rest[above], u[above]))])
    return [int(i) for i in order[: k - len(have)]]


def labels_to_reach(n_labels: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """Labels at which a curve first reaches ``target`` (linear interpolation between the
    round before and the round that reaches it); None if it never does."""
    n = [float(x) for x in n_labels]
    y = [float(v) for v in values]
    for i, v in enumerate(y):
        if v <= target:
            if i == 0:
                return n[0]
            return n[i - 1] + (y[i - 1] - target) / (y[i - 1] - v) * (n[i] - n[i - 1])
    return None


def bootstrap_ratio(n_labels: Sequence[float], reference: np.ndarray, curves: np.ndarray, n_boot: int,
                    seed: int = 0) -> dict:
    """Labels a strategy needs to reach the reference's full-budget value, over the
    reference's full budget: on the mean curves of the seeds, and a 95 % interval from
    resampling the seeds (paired: one resample picks the same seeds for both; they share
    round 0). ``reference``, ``curves``: (seeds, rounds), rows aligned by seed. A resample
    whose curve never gets there counts as above every finite ratio (interval ends ``None``
    when more than 2.5 % of them do)."""
    reference, curves = np.asarray(reference, float), np.asarray(curves, float)
    full = float(n_labels[-1])
    need = labels_to_reach(n_labels, curves.mean(axis=0), reference[:, -1].mean())
    rng = np.random.default_rng(seed)
    n = len(reference)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        got = labels_to_reach(n_labels, curves[idx].mean(axis=0), reference[idx, -1].mean())
        vals[b] = np.inf if got is None else got / full
    lo, hi = np.quantile(vals, [0.025, 0.975], method="inverted_cdf")  # no interpolation with inf
    return {
        "ratio": None if need is None else need / full,
        "labels_needed": need,
        "ci95": [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)],
        "share_of_resamples_reaching": float(np.mean(np.isfinite(vals))),
        "seeds": n,
    }


def knn_error_skill(features: np.ndarray, error: np.ndarray, k: int = 5) -> float | None:
    """How much a feature space says about where the model is wrong: the Spearman correlation
    between each frame's true error and the mean error of its k nearest other frames
    (standardized features). Diversity in a space where it is near 0 spreads labels blindly."""
    from driver.feature_space import sq_dist as _sq_dist, standardize

    x = standardize(features)
    d = _sq_dist(x, x)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    pred = np.asarray(error, float)[nn].mean(axis=1)
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)  # noqa: E731
    if len(x) < k + 2 or np.ptp(pred) == 0:
        return None  # too few frames, or every neighbourhood alike
    return float(np.corrcoef(rank(pred), rank(np.asarray(error, float)))[0, 1])


def cluster_purity(features: np.ndarray, groups: Sequence, seed: int = 0) -> float:
    """Share of frames whose k-means cluster (k = number of groups) is mostly their own group."""
    from driver.feature_space import kmeans, standardize

    g = np.asarray([str(x) for x in groups])
    names = sorted(set(g))
    labels, _ = kmeans(standardize(features), len(names), np.random.default_rng(seed))
    agree = 0
    for j in set(labels.tolist()):
        _, counts = np.unique(g[labels == j], return_counts=True)
        agree += int(counts.max())
    return agree / len(g)


def selection_timing(n: int = 10_000, k: int = 20, strategy: str = TIMED_RULE, seed: int = 0,
                     desc_dim: int = 128, n_groups: int = 6) -> dict:
    """CPU seconds (one thread; wall time as ``wall_s``) to select ``k`` of ``n`` synthetic
    candidates of 16-100 atoms with ``strategy``: per-frame features from per-atom descriptors
    (``remote_al.features.frame_descriptor_features``, chunked by frame size as the UQ
    evaluation produces them), the max per-atom force width, and the selection itself.
    Generating the synthetic per-atom arrays is not timed."""
    from driver.strategies import Candidates, select
    from remote_al.features import frame_descriptor_features

    rule, quota, _ = parse_strategy(strategy)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(16, 101, n)
    feats = np.zeros((n, len(TYPE_MAP) * desc_dim))
    width = np.zeros(n)
    t_feat = c_feat = 0.0
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        atype = np.sort(rng.integers(0, len(TYPE_MAP), size))
        desc = rng.normal(size=(len(idx), size, desc_dim)) + 0.3 * atype[None, :, None]
        atom_w = rng.lognormal(-1.0, 0.6, (len(idx), size))
        t0, c0 = time.perf_counter(), time.process_time()
        feats[idx] = frame_descriptor_features(desc, atype, len(TYPE_MAP))
        width[idx] = atom_w.max(axis=1)
        t_feat += time.perf_counter() - t0
        c_feat += time.process_time() - c0
    groups = tuple(int(x) for x in rng.integers(0, n_groups, n))
    t0, c0 = time.perf_counter(), time.process_time()
    cands = Candidates(width, feats, groups)
    if rule in ("random", "oracle"):
        picked = select_random(range(n), k, rng)
    else:
        picked = [c.index for c in select(RULES[rule], cands, k, np.random.default_rng(seed), quota=quota,
                                          threshold=0.10, upper=3.0)]
    t_sel, c_sel = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds of this one thread: what one core takes, also on a machine others load
    return {"strategy": strategy, "n_candidates": n, "k": k, "atoms": [16, 100], "descriptor_dim": desc_dim,
            "feature_dim": int(feats.shape[1]), "groups": n_groups, "picked": len(set(picked)),
            "features_s": c_feat, "select_s": c_sel, "selection_s_10k": c_feat + c_sel,
            "wall_s": t_feat + t_sel, "threads": 1}


# ================================================================= process workers
def _label_chunk(text: str) -> str:
    """CHGNet labels for frames (extxyz in, labeled extxyz out; info['label_ok'] per frame)."""
    import tempfile

    from ase.calculators.singlepoint import SinglePointCalculator

    from remote_al.labelers import get_labeler
    from remote_al.structures import from_extxyz, to_extxyz

    frames = from_extxyz(text)
    with tempfile.TemporaryDirectory() as tmp:
        labels = get_labeler("chgnet").label(frames, list(range(len(frames))), Path(tmp))
    out = []
    for a, lab in zip(frames, labels):
        b = a.copy()
        b.info["label_ok"] = lab.status == "ok"
        if lab.status == "ok":
            b.calc = SinglePointCalculator(b, energy=lab.energy, forces=np.array(lab.forces),
                                           stress=np.array(lab.stress) if lab.stress else None)
        out.append(b)
    return to_extxyz(out)


def _md(req: dict) -> dict:
    from remote_al.dynamics import run_md
    from remote_al.records import MDRequest

    res = run_md(MDRequest(**req))
    return {"frames_extxyz": res.frames_extxyz, "stop_reason": res.stop_reason, "wall_s": res.wall_s,
            "mean_temperature_K": res.mean_temperature_K}


def _chgnet_md(job: dict) -> str:
    """Langevin MD (or, with ``job["ensemble"] = "npt"``, Berendsen NPT at ``pressure_GPa``)
    driven by CHGNet; labeled frames (extxyz) after the equilibration steps."""
    import torch
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from remote_al.labelers import get_labeler
    from remote_al.structures import from_extxyz, to_extxyz

    torch.set_num_threads(1)
    (atoms,) = from_extxyz(job["structure_extxyz"])[:1]
    atoms.calc = get_labeler("chgnet")._calculator()
    rng = np.random.default_rng(job["seed"])
    MaxwellBoltzmannDistribution(atoms, temperature_K=job["temperature_K"], rng=rng)
    Stationary(atoms)
    if job.get("ensemble", "nvt") == "npt":  # remote_al.dynamics.run_md's barostat, the labeler's forces
        from ase.md.nptberendsen import NPTBerendsen

        dyn = NPTBerendsen(atoms, timestep=1.0 * units.fs, temperature_K=job["temperature_K"],
                           pressure_au=job.get("pressure_GPa", 0.0) * units.GPa, taut=100 * units.fs,
                           taup=500 * units.fs, compressibility_au=1.0 / (150.0 * units.GPa))
    else:
        dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=job["temperature_K"],
                       friction=0.02 / units.fs, rng=rng)
    dyn.run(job["equil_steps"])
    frames = []
    for _ in range(job["n_frames"]):
        dyn.run(job["interval"])
        snap = atoms.copy()
        snap.calc = SinglePointCalculator(snap, energy=float(atoms.get_potential_energy()),
                                          forces=np.array(atoms.get_forces()))
        snap.info["label_ok"] = True
        frames.append(snap)
    return to_extxyz(frames)


def _run_in_process(cmd, workdir, env, log_name):
    """Stand-in for ``remote_al.training._run`` in this benchmark's persistent worker processes:
    the same ``dp --pt train|freeze`` arguments, run by DeePMD-kit's own entry point inside the
    worker, so torch and DeePMD-kit are imported once per worker instead of twice per member."""
    import contextlib
    import logging

    from deepmd.main import main as dp_main

    from remote_al.training import TrainingError

    args = list(cmd)[list(cmd).index("--pt"):]
    here = os.getcwd()
    log = Path(workdir) / log_name
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        os.chdir(workdir)
        try:
            dp_main(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise TrainingError(f"{' '.join(args)} exited with {exc.code}", str(workdir)) from exc
        except Exception as exc:
            raise TrainingError(f"{' '.join(args)} raised {type(exc).__name__}: {exc}", str(workdir)) from exc
        finally:
            os.chdir(here)
            logging.getLogger("deepmd").handlers.clear()


def _train(job: dict) -> dict:
    """``remote_al.training.train_member`` in a worker process; with launcher "in-process" its
    two ``dp`` subprocesses run in the worker itself (``_run_in_process``)."""
    import remote_al.training as training
    from remote_al.records import TrainRequest

    if job["launcher"] == "in-process":
        training._run = _run_in_process
    return training.train_member(TrainRequest.from_dict(job["request"])).to_dict()


_FRAMES: dict = {}  # per worker process: the stage-0 test and pool frames


def _evaluate_job(job: dict) -> dict:
    """``evaluate`` in a worker process (DeePMD-kit models loaded there; a worker is replaced
    after a few tasks, so memory the loaded models keep is given back)."""
    from remote_al.structures import from_extxyz

    d = job["stage0"]
    if _FRAMES.get("dir") != d:
        _FRAMES.update(dir=d, **{name: from_extxyz((Path(d) / f"{name}.extxyz").read_text())
                                 for name in ("test", "pool", "initial")})
    return evaluate(job["model_paths"], _FRAMES["test"], _FRAMES["pool"], _FRAMES["initial"])


def frame_group(a) -> str:
    """A frame's condition: composition and temperature (MD) or 'rattled'."""
    what = "rattled" if a.info.get("source") == "rattled" else f"{a.info['temperature_K']:g} K"
    return f"{a.info['composition']} {what}"


def _ctx():
    import multiprocessing

    return multiprocessing.get_context("spawn")


# ========================================================================== stage 0
class Log:
    def __init__(self):
        self.t0 = time.time()
        self.lock = threading.Lock()

    def __call__(self, msg: str) -> None:
        with self.lock:
            el = time.time() - self.t0
            print(f"[{int(el // 60):3d}:{int(el % 60):02d}] {msg}", flush=True)


def _label_all(frames, workers: int, say, what: str):
    from remote_al.structures import from_extxyz, to_extxyz

    if not frames:
        return []
    t0 = time.time()
    n_chunks = max(workers, min(len(frames), 2 * workers))
    chunks = [list(range(len(frames)))[i::n_chunks] for i in range(n_chunks)]
    chunks = [c for c in chunks if c]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_ctx()) as ex:
        outs = list(ex.map(_label_chunk, [to_extxyz([frames[i] for i in c]) for c in chunks]))
    labeled = [None] * len(frames)
    for c, text in zip(chunks, outs):
        for i, a in zip(c, from_extxyz(text)):
            labeled[i] = a
    good = [a for a in labeled if a.info.get("label_ok") and a.calc is not None]
    say(f"labeled {len(good)}/{len(frames)} {what} frames with CHGNet in {time.time() - t0:.0f} s")
    return good


class WorkerSlots:
    """``workers`` single-process executors, each replaced after ``max_tasks`` tasks, so memory
    that DeePMD-kit keeps after loading models or training in a worker is given back.
    (``ProcessPoolExecutor(max_tasks_per_child=...)`` on Python 3.11 can lose workers when it
    replaces them.) ``run`` blocks the calling thread; callers queue in order."""

    def __init__(self, workers: int, max_tasks: int = 8):
        import queue

        self.max_tasks = max_tasks
        self.slots: "queue.Queue" = queue.Queue()
        for _ in range(workers):
            self.slots.put([None, 0])
        self.fan_out = ThreadPoolExecutor(max_workers=64)

    def run(self, fn, arg):
        slot = self.slots.get()
        try:
            if slot[0] is None or slot[1] >= self.max_tasks:
                if slot[0] is not None:
                    slot[0].shutdown()
                slot[0], slot[1] = ProcessPoolExecutor(max_workers=1, mp_context=_ctx()), 0
            slot[1] += 1
            return slot[0].submit(fn, arg).result()
        finally:
            self.slots.put(slot)

    def submit(self, fn, arg):
        return self.fan_out.submit(self.run, fn, arg)

    def shutdown(self):
        self.fan_out.shutdown()
        while not self.slots.empty():
            ex, _ = self.slots.get()
            if ex is not None:
                ex.shutdown()


@dataclass(frozen=True)
class Trained:
    """What the benchmark uses of a ``TrainResult`` (read from its dict, so that a field the
    record gains while a long run is under way does not stop it)."""

    model_path: str
    checkpoint_path: str
    wall_s: float

    @classmethod
    def of(cls, d: dict) -> "Trained":
        return cls(d["model_path"], d["checkpoint_path"], float(d.get("wall_s", 0.0)))


def _train_many(reqs, workers: int, launcher: str):
    pool = WorkerSlots(workers)
    try:
        futs = [pool.submit(_train, {"request": r.to_dict(), "launcher": launcher}) for r in reqs]
        return [Trained.of(f.result()) for f in futs]
    finally:
        pool.shutdown()


def build_stage0(s: Settings, workdir: Path, say) -> dict:
    """Initial data, candidate pool and test set, labeled; cached in ``workdir/stage0``."""
    from remote_al.deepmd_data import write_systems
    from remote_al.records import TrainRequest
    from remote_al.structures import cathode_cell, check_structure, from_extxyz, perturb, to_extxyz

    d = workdir / "stage0"
    meta_path = d / "stage0.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == s.stage0_key():
            say(f"stage 0: cached in {d}")
            return meta
        raise SystemExit(f"{d} was built with other settings; remove it or pass --fresh")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    t0 = time.time()
    bases = {name: cathode_cell(x, supercell=(2, 2, 1), seed=sd) for name, x, sd in STRUCTURES}

    # ---- initial data and rattled test frames, as the campaign's round 0 builds them
    rng = np.random.default_rng(s.campaign_seed)
    initial, test_rattled = [], []
    for name, _, _ in STRUCTURES:
        for split, n in (("train", s.n_initial_per_structure), ("test", s.test_rattled_per_structure)):
            for i in range(n):
                amp = s.rattle_A * (0.25 + 1.25 * i / max(1, n - 1))
                a = perturb(bases[name], amp, s.strain, rng)
                a.info.update(composition=name, source="rattled", temperature_K=0.0, rattle_A=amp)
                (initial if split == "train" else test_rattled).append(a)
    # ---- throwaway generator models for the MD that builds the pool and the test set
    rng_g = np.random.default_rng(s.campaign_seed + 2000)
    extra = []
    for name, _, _ in STRUCTURES:
        for i in range(s.generator_extra_per_structure):
            amp = float(rng_g.uniform(*s.generator_rattle_A))
            a = perturb(bases[name], amp, s.pool_strain, rng_g)
            a.info.update(composition=name, source="rattled", temperature_K=0.0, rattle_A=amp)
            if check_structure(a, min_dist_A=s.min_distance_A).ok:
                extra.append(a)
    for part, fr in (("initial", initial), ("test", test_rattled), ("generator", extra)):
        for a in fr:
            a.info["part"] = part
    labeled = _label_all(initial + test_rattled + extra, s.workers, say, "initial, rattled test and generator")
    initial, test_rattled, extra = ([a for a in labeled if a.info["part"] == p] for p in ("initial", "test", "generator"))
    systems = write_systems(initial + extra, d / "generator_deepmd", TYPE_MAP)
    reqs = [
        TrainRequest(f"gen{m}", str(d / f"generator{m}"), tuple(systems), TYPE_MAP, member=m, seed=9001 + 10 * m,
                     subset_fraction=s.subset_fraction, numb_steps=s.generator_steps, deepmd={"loss": LOSS},
                     device="cpu")
        for m in range(s.generator_members)
    ]
    gens = _train_many(reqs, s.workers, s.launcher)
    gen_paths = [g.model_path for g in gens]
    say(f"stage 0: {len(gens)} generator models trained ({max(g.wall_s for g in gens):.0f} s each at most)")

    # ---- MD: pool and test runs (different seeds)
    runs = []
    for split, temps, walkers, nf, seed0 in (
        ("pool", s.pool_temperatures_K, s.pool_walkers, s.pool_frames_per_run, 100),
    ):
        j = 0
        for name, _, _ in STRUCTURES:
            for t in temps:
                for w in range(walkers):
                    runs.append((split, name, t, dict(
                        task_key=f"{split}-{name}-{t:g}-{w}", workdir=str(d / "md" / f"{split}-{name}-{t:g}K-{w}"),
                        model_path=gen_paths[w % len(gen_paths)], structure_extxyz=to_extxyz(bases[name]),
                        temperature_K=float(t), steps=s.md_steps, n_frames=nf, seed=seed0 + j, device="cpu")))
                    j += 1
    test_jobs = [
        (name, float(t), dict(structure_extxyz=to_extxyz(bases[name]), temperature_K=float(t), seed=500 + j,
                              equil_steps=s.test_equil_steps, interval=s.test_interval, n_frames=s.test_frames_per_run))
        for j, (name, t, w) in enumerate((n, t, w) for n, _, _ in STRUCTURES
                                         for t in tuple(s.test_temperatures_K) + tuple(s.test_ood_temperatures_K)
                                         for w in range(s.test_walkers))
    ]
    t1 = time.time()
    with ProcessPoolExecutor(max_workers=s.workers, mp_context=_ctx()) as ex:
        test_futs = [ex.submit(_chgnet_md, job) for _, _, job in test_jobs]
        md_out = list(ex.map(_md, [r[3] for r in runs]))
        test_out = [f.result() for f in test_futs]
    frames = {"pool": [], "test": []}
    stops = []
    for (split, name, t, req), res in zip(runs, md_out):
        if res["stop_reason"]:
            stops.append(f"{req['task_key']}: {res['stop_reason']}")
        for a in from_extxyz(res["frames_extxyz"]):
            a.info.update(composition=name, source="md", temperature_K=float(t))
            frames[split].append(a)
    for (name, t, _), text in zip(test_jobs, test_out):
        for a in from_extxyz(text):
            a.info.update(composition=name, source="md", temperature_K=t)
            frames["test"].append(a)
    say(f"stage 0: {len(runs)} DeePMD MD runs (pool) and {len(test_jobs)} CHGNet MD runs (test) in "
        f"{time.time() - t1:.0f} s, {len(frames['pool'])} pool and {len(frames['test'])} test frames"
        + (f"; stopped early: {stops}" if stops else ""))

    # ---- strongly rattled pool frames
    rng = np.random.default_rng(s.campaign_seed + 1000)
    for name, _, _ in STRUCTURES:
        for i in range(s.pool_rattled_per_structure):
            amp = float(rng.uniform(*s.pool_rattle_A))
            a = perturb(bases[name], amp, s.pool_strain, rng)
            a.info.update(composition=name, source="rattled", temperature_K=0.0, rattle_A=amp)
            frames["pool"].append(a)

    # ---- filters before labels, then CHGNet
    filtered = {}
    for split in ("pool", "test"):
        keep = []
        for a in frames[split]:
            if check_structure(a, min_dist_A=s.min_distance_A).ok:
                keep.append(a)
        filtered[split] = len(frames[split]) - len(keep)
        frames[split] = keep
    pool = _label_all(frames["pool"], s.workers, say, "pool")
    test = test_rattled + frames["test"]  # CHGNet MD frames carry their labels
    for i, a in enumerate(pool):
        a.info["pid"] = i
    for name, fr in (("initial", initial), ("pool", pool), ("test", test)):
        (d / f"{name}.extxyz").write_text(to_extxyz(fr))

    def counts(fr):
        out: dict[str, int] = {}
        for a in fr:
            key = f"{a.info['composition']} {a.info['source']}" + (
                f" {a.info['temperature_K']:g} K" if a.info["source"] == "md" else "")
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    emin = {name: min(a.get_potential_energy() / len(a) for a in initial if a.info["composition"] == name)
            for name, _, _ in STRUCTURES}

    def excess(fr):  # CHGNet energy per atom above the lowest initial frame of the composition, meV/atom
        out: dict[str, list] = {}
        for a in fr:
            key = f"{a.info['composition']} {a.info['source']}" + (
                f" {a.info['temperature_K']:g} K" if a.info["source"] == "md" else "")
            out.setdefault(key, []).append(1000 * (a.get_potential_energy() / len(a) - emin[a.info["composition"]]))
        return {k: {"median": float(np.median(v)), "max": float(np.max(v))} for k, v in sorted(out.items())}

    def fmax(fr):
        return [float(np.abs(a.get_forces()).max()) for a in fr]

    meta = {
        "settings": s.stage0_key(),
        "n_initial": len(initial), "n_pool": len(pool), "n_test": len(test), "n_generator_extra": len(extra),
        "pool_counts": counts(pool), "test_counts": counts(test),
        "filtered_before_labeling": filtered, "md_stopped_early": stops,
        "energy_above_initial_min_meV_atom": {"pool": excess(pool), "test": excess(test)},
        "label_max_force_eV_A": {n: {"median": float(np.median(fmax(f))), "max": float(np.max(fmax(f)))}
                                 for n, f in (("initial", initial), ("pool", pool), ("test", test))},
        "wall_s": time.time() - t0,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    say(f"stage 0 done in {meta['wall_s']:.0f} s: {len(initial)} initial, {len(pool)} pool, {len(test)} test frames")
    return meta


# ====================================================================== evaluation
def evaluate(model_paths, test, pool, initial) -> dict:
    """One ensemble on every stage-0 frame: per test frame its errors (ensemble mean against
    the CHGNet label); per pool frame the energy/force CI widths, DP-GEN's max force
    deviation, the true force error (for the oracle), the per-atom force widths and the
    descriptor features (first member, ``remote_al.features``); the same widths and
    features of the initial data (the training set's part that is not in the pool)."""
    from deepmd.infer import DeepPot

    from remote_al.ensemble import predict_ensemble
    from remote_al.fast_uq import ensemble_features
    from remote_al.uq import ensemble_ci_width, frame_uncertainty

    models = [DeepPot(p) for p in model_paths]
    frames = list(test) + list(pool) + list(initial)
    t0 = time.perf_counter()
    energies, forces = predict_ensemble(models, frames)
    t_uq = time.perf_counter() - t0
    t0 = time.perf_counter()
    desc = ensemble_features(models[:1], list(pool) + list(initial))
    t_feat = time.perf_counter() - t0
    nt, npool = len(test), len(pool)
    natoms = np.array([len(a) for a in frames])
    e_err = (energies.mean(axis=0) - np.array([a.get_potential_energy() for a in frames])) / natoms
    df = [forces[i].mean(axis=0) - frames[i].get_forces() for i in range(len(frames))]
    f_sq = np.array([float(np.sum(d**2)) for d in df])
    f_n = np.array([d.size for d in df])
    f_maxabs = np.array([float(np.abs(d).max()) for d in df])
    e_w, f_w = frame_uncertainty(energies, forces, natoms)
    atom_w = [ensemble_ci_width(np.asarray(f), axis=0).max(axis=-1) for f in forces]  # (N,) per frame
    te, po, ini = slice(0, nt), slice(nt, nt + npool), slice(nt + npool, None)
    return {
        "energy_rmse_meV_atom": float(np.sqrt(np.mean(e_err[te] ** 2)) * 1000.0),
        "force_rmse_eV_A": float(np.sqrt(f_sq[te].sum() / f_n[te].sum())),
        "test_f_sq": f_sq[te], "test_f_n": f_n[te], "test_f_maxabs": f_maxabs[te], "test_e_err": e_err[te],
        "pool_energy_width": e_w[po], "pool_force_width": f_w[po], "pool_max_devi_f": max_force_deviation(forces[po]),
        "pool_force_error_rms": np.sqrt(f_sq[po] / f_n[po]), "pool_force_error_max": f_maxabs[po],
        "pool_atom_width": np.concatenate(atom_w[po]), "pool_natoms": natoms[po],
        "pool_desc": desc[:npool], "initial_desc": desc[npool:],
        "initial_force_width": f_w[ini], "initial_atom_width": np.concatenate(atom_w[ini]),
        "initial_natoms": natoms[ini],
        "uq_s_per_frame": t_uq / len(frames), "features_s_per_frame": t_feat / max(1, npool + len(initial)),
    }


def _split_atoms(flat: np.ndarray, natoms: np.ndarray) -> list[np.ndarray]:
    return np.split(np.asarray(flat), np.cumsum(np.asarray(natoms, dtype=int))[:-1])


def _source_counts(frames) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in frames:
        key = "rattled" if a.info["source"] == "rattled" else f"{a.info['temperature_K']:g}K"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# ========================================================================= the runs
class Bench:
    def __init__(self, s: Settings, workdir: Path, say):
        from remote_al.structures import from_extxyz

        self.s, self.workdir, self.say = s, workdir, say
        d = workdir / "stage0"
        self.initial = from_extxyz((d / "initial.extxyz").read_text())
        self.pool = from_extxyz((d / "pool.extxyz").read_text())
        self.test = from_extxyz((d / "test.extxyz").read_text())
        self.train_pool = WorkerSlots(s.workers)
        self.eval_lock = threading.Lock()
        self._dist = None
        self._evals: dict = {}  # model paths -> future of evaluate()
        temps = {float(t) for t in s.test_temperatures_K}

        def campaign(a) -> bool:
            return a.info["source"] == "md" and float(a.info["temperature_K"]) in temps

        self.allowed = {"all": list(range(len(self.pool))), "campaign": [i for i, a in enumerate(self.pool) if campaign(a)]}
        self.groups = [frame_group(a) for a in self.pool]
        self.test_group = np.array([frame_group(a).split(" ", 1)[1] for a in self.test])
        self.test_split = np.array(["in-distribution" if campaign(a) else "out-of-distribution" for a in self.test])

    @staticmethod
    def tag(pool: str, strategy: str) -> str:
        return strategy if pool == "all" else f"{pool}-pool/{strategy}"

    def member_seed(self, seed: int, rnd: int, m: int) -> int:
        # the same seeds for every strategy: differences come from the data only
        return 100000 * (seed + 1) + 1000 * rnd + 10 * m

    def train(self, tag: str, seed: int, rnd: int, pool_ids: Sequence[int], init: Sequence[str] | None):
        """Train the round's members (continuing from ``init`` checkpoints); members that all
        finished in an interrupted run (``trained.json`` with the same request) are reused."""
        from remote_al.deepmd_data import group_frames, legacy_system_name, write_systems

        s = self.s
        base = self.workdir / "runs" / tag
        frames = list(self.initial) + [self.pool[i] for i in pool_ids]
        # the names the measured runs used, so that an interrupted run still finds its members
        names = {sym: legacy_system_name(sym) for sym in group_frames(frames)}
        systems = [str(base / "data" / names[sym]) for sym in sorted(names)]
        reqs = self._train_requests(tag, seed, rnd, init, base, systems)
        marks = [Path(r.workdir) / "trained.json" for r in reqs]
        if all(m.exists() for m in marks):  # every member finished before an interruption: reuse them
            done = [json.loads(m.read_text()) for m in marks]
            if all(d["request"] == r.to_dict() and Path(d["model_path"]).exists() for d, r in zip(done, reqs)):
                ids = json.loads((base / "pool_ids.json").read_text()) if (base / "pool_ids.json").exists() else None
                if ids == [int(i) for i in pool_ids]:
                    return [Trained.of(d) for d in done]
        if base.exists():
            shutil.rmtree(base)
        if write_systems(frames, base / "data", TYPE_MAP, names) != systems:
            raise RuntimeError(f"{base / 'data'}: deepmd systems are not where the requests expect them")
        (base / "pool_ids.json").write_text(json.dumps([int(i) for i in pool_ids]))
        futs = [self.train_pool.submit(_train, {"request": r.to_dict(), "launcher": s.launcher}) for r in reqs]
        out = []
        for r, f, mark in zip(reqs, futs, marks):
            d = f.result()
            mark.write_text(json.dumps({"request": r.to_dict(), "model_path": d["model_path"],
                                        "checkpoint_path": d["checkpoint_path"], "wall_s": d.get("wall_s", 0.0)}))
            out.append(Trained.of(d))
        return out

    def _train_requests(self, tag, seed, rnd, init, base, systems) -> list:
        from remote_al.records import TrainRequest

        s = self.s
        return [
            TrainRequest(
                task_key=f"{tag}/m{m}", workdir=str(base / f"m{m}"), systems=tuple(systems), type_map=TYPE_MAP,
                member=m, seed=self.member_seed(seed, rnd, m), subset_fraction=s.subset_fraction,
                numb_steps=s.steps_initial if init is None else s.steps_continue, deepmd={"loss": LOSS},
                init_model=None if init is None else init[m], device="cpu",
            )
            for m in range(s.members)
        ]

    def evaluate(self, model_paths) -> dict:
        key = tuple(model_paths)
        cache = Path(model_paths[0]).parents[1] / "eval.npz"  # runs/s<seed>/.../r<round>/eval.npz
        with self.eval_lock:  # one evaluation per ensemble, in a worker process, kept on disk
            if key not in self._evals:
                if cache.exists():
                    from concurrent.futures import Future

                    with np.load(cache) as z:
                        ev = {k: (float(z[k]) if z[k].ndim == 0 else z[k]) for k in z.files}
                    self._evals[key] = Future()
                    self._evals[key].set_result(ev)
                else:
                    job = {"model_paths": list(model_paths), "stage0": str(self.workdir / "stage0")}
                    self._evals[key] = self.train_pool.submit(_evaluate_job, job)
            fut = self._evals[key]
        ev = fut.result()
        with self.eval_lock:
            if not cache.exists():
                tmp = cache.with_name("eval.tmp.npz")
                np.savez(tmp, **ev)
                os.replace(tmp, cache)
        return ev

    def by_group(self, ev: dict) -> dict:
        """Test errors of the ensemble mean by group: each temperature / 'rattled', the
        in-distribution (the campaign's conditions) and out-of-distribution splits, all."""
        out = {}
        labels = sorted(set(self.test_group.tolist())) + ["in-distribution", "out-of-distribution", "all"]
        for g in labels:
            m = (np.ones(len(self.test), bool) if g == "all" else
                 (self.test_split == g) if g.endswith("distribution") else (self.test_group == g))
            if not m.any():
                continue
            out[g] = {"force_rmse_eV_A": float(np.sqrt(ev["test_f_sq"][m].sum() / ev["test_f_n"][m].sum())),
                      "energy_rmse_meV_atom": float(np.sqrt(np.mean(ev["test_e_err"][m] ** 2)) * 1000.0),
                      "max_force_error_eV_A": float(ev["test_f_maxabs"][m].max()), "n_frames": int(m.sum())}
        return out

    def record(self, pool, seed, strategy, rnd, pool_ids, trained, ev, t_train, selection=None) -> dict:
        return {
            "pool": pool, "seed": seed, "strategy": strategy, "round": rnd,
            "n_labels": len(self.initial) + len(pool_ids), "n_selected": len(pool_ids),
            "energy_rmse_meV_atom": ev["energy_rmse_meV_atom"], "force_rmse_eV_A": ev["force_rmse_eV_A"],
            "test_by_group": self.by_group(ev),
            "round_train_wall_s": t_train,
            "pool_ids": [int(i) for i in pool_ids],
            "model_paths": [t.model_path for t in trained], "checkpoints": [t.checkpoint_path for t in trained],
            "pool_force_width_median": float(np.median(ev["pool_force_width"])),
            "pool_max_devi_f_median": float(np.median(ev["pool_max_devi_f"])),
            "uq_s_per_frame": ev.get("uq_s_per_frame"), "features_s_per_frame": ev.get("features_s_per_frame"),
            "selection": selection or {},
        }

    # -- features
    def dist_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour-distance histograms (``driver.selection.fingerprint``) of the pool and initial frames."""
        from driver.selection import fingerprint
        from driver.feature_space import distance_histogram

        if self._dist is None:
            fr = list(self.pool) + list(self.initial)
            h = distance_histogram([fingerprint(a)[1] for a in fr], [len(a) for a in fr])
            self._dist = (h[: len(self.pool)], h[len(self.pool):])
        return self._dist

    def features(self, ev: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(pool features, initial-data features) of one kind: 'desc' (per-type mean DeePMD
        descriptor), 'awh' (per-atom width histogram) or 'dist' (distance histogram)."""
        from driver.feature_space import atom_width_histogram

        if kind == "desc":
            return ev["pool_desc"], ev["initial_desc"]
        if kind == "awh":
            return (atom_width_histogram(_split_atoms(ev["pool_atom_width"], ev["pool_natoms"])),
                    atom_width_histogram(_split_atoms(ev["initial_atom_width"], ev["initial_natoms"])))
        return self.dist_features()

    def feature_study(self, ev: dict) -> dict:
        """For each feature kind, on the full and the campaign pool: how well the nearest
        neighbours' true errors predict a frame's (``knn_error_skill``) and how well k-means
        recovers the conditions (``cluster_purity``)."""
        out = {}
        for kind in FEATURES:
            x, _ = self.features(ev, kind)
            for pool, ids in self.allowed.items():
                out[f"{kind} {pool}"] = {
                    "knn_error_spearman": knn_error_skill(x[ids], ev["pool_force_error_rms"][ids]),
                    "kmeans_condition_purity": cluster_purity(x[ids], [self.groups[i] for i in ids]),
                }
        return out

    # -- round 0, shared by the strategies of one seed
    def round0(self, seed: int) -> dict:
        path = self.workdir / "runs" / f"s{seed}" / "r0.json"
        if path.exists():
            return json.loads(path.read_text())
        t0 = time.time()
        trained = self.train(f"s{seed}/r0", seed, 0, [], None)
        t_train = time.time() - t0
        ev = self.evaluate([t.model_path for t in trained])
        rec = self.record(None, seed, "initial", 0, [], trained, ev, t_train)
        rec["dpgen_trust"] = {pool: [float(np.quantile(ev["pool_max_devi_f"][ids], q)) for q in self.s.dpgen_quantiles]
                              for pool, ids in self.allowed.items()}
        rec["pool_force_width_quantiles"] = {f"q{round(q * 100)}": float(np.quantile(ev["pool_force_width"], q))
                                             for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
        rec["pool_share_above_threshold"] = float(np.mean(ev["pool_force_width"] > self.s.force_threshold))
        rec["feature_study"] = self.feature_study(ev)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2))
        lo, hi = rec["dpgen_trust"]["all"]
        self.say(f"seed {seed} round 0: {rec['n_labels']} labels, force RMSE {rec['force_rmse_eV_A']:.3f} eV/A, "
                 f"energy RMSE {rec['energy_rmse_meV_atom']:.1f} meV/atom; DP-GEN trust window "
                 f"[{lo:.3f}, {hi:.3f}) eV/A; {rec['pool_share_above_threshold']:.0%} of the pool above "
                 f"the {self.s.force_threshold:g} eV/A width threshold ({t_train:.0f} s training)")
        return rec

    # -- one strategy's picks for one round
    def choose(self, pool: str, strategy: str, seed: int, rnd: int, prev: dict, r0: dict,
               unlabeled: list[int]) -> tuple[list[int], dict]:
        from driver.strategies import Candidates, select

        s = self.s
        ev = self.evaluate(prev["model_paths"])  # the ensemble that selects this round (cached)
        rng = np.random.default_rng([seed, zlib.crc32(strategy.encode()), rnd])
        rule, quota, feat = parse_strategy(strategy)
        unl = np.asarray(unlabeled, dtype=int)
        if rule == "random":
            return select_random(unlabeled, s.k, rng), {}
        if rule == "oracle":  # the true force error against the label: no rule can know more
            err = ev["pool_force_error_rms"]
            order = unl[np.lexsort((unl, -err[unl]))]
            return sorted(int(i) for i in order[: s.k]), {"force_error_rms_mean": float(np.mean(err[order[: s.k]]))}
        if rule == "dpgen_window":
            score = ev["pool_max_devi_f"]
            lo, hi = r0["dpgen_trust"][pool]
        else:
            score = ev["pool_force_width"]
            lo, hi = s.force_threshold, RULE_UPPER.get(rule, s.force_upper)
        x, x_init = self.features(ev, feat)
        labeled = sorted(set(prev["pool_ids"]))
        init_score = ev["initial_force_width"] if rule != "dpgen_window" else np.full(len(self.initial), np.nan)
        cands = Candidates(
            score[unl], x[unl], tuple(self.groups[i] for i in unl), None,
            np.vstack([x_init, x[labeled]]) if labeled else x_init,
            np.concatenate([init_score, score[labeled]]) if rule != "dpgen_window" else None,
        )
        t0 = time.perf_counter()
        choices = select(RULES[rule], cands, s.k, rng, quota=quota, threshold=lo, upper=hi)
        t_sel = time.perf_counter() - t0
        picked = [int(unl[c.index]) for c in choices]
        extra = fill_budget(unl, score, picked, s.k, lo, hi, window=rule == "dpgen_window")
        info = {"eligible_window": [lo, hi], "filled": len(extra), "select_s": t_sel,
                "reasons": {str(int(unl[c.index])): c.reason for c in choices}}
        return sorted(picked + extra), info

    # -- one strategy, one seed, one pool
    def pipeline(self, pool: str, seed: int, strategy: str, r0: dict, dry: bool = False) -> list[dict]:
        s = self.s
        recs = [dict(r0, strategy=strategy, pool=pool)]
        prev = r0
        for rnd in range(1, s.rounds + 1):
            path = self.workdir / "runs" / f"s{seed}" / self.tag(pool, strategy) / f"r{rnd}.json"
            if path.exists():
                prev = json.loads(path.read_text())
                recs.append(prev)
                continue
            if dry:
                break
            labeled = set(prev["pool_ids"])
            unlabeled = [i for i in self.allowed[pool] if i not in labeled]
            picked, info = self.choose(pool, strategy, seed, rnd, prev, r0, unlabeled)
            info = dict(info, picked=[int(i) for i in picked])
            ev_prev = self.evaluate(prev["model_paths"])
            info["force_width_mean"] = float(np.mean(ev_prev["pool_force_width"][picked])) if picked else None
            info["force_error_rms_mean"] = float(np.mean(ev_prev["pool_force_error_rms"][picked])) if picked else None
            info["sources"] = _source_counts([self.pool[i] for i in picked])
            t0 = time.time()
            ids = sorted(labeled | set(picked))
            trained = self.train(f"s{seed}/{self.tag(pool, strategy)}/r{rnd}", seed, rnd, ids, prev["checkpoints"])
            t_train = time.time() - t0
            ev = self.evaluate([t.model_path for t in trained])
            rec = self.record(pool, seed, strategy, rnd, ids, trained, ev, t_train, info)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec, indent=2))
            os.replace(tmp, path)
            ind = rec["test_by_group"]["in-distribution"]["force_rmse_eV_A"]
            self.say(f"{pool:8s} seed {seed} {strategy:14s} round {rnd}: {rec['n_labels']} labels, force RMSE "
                     f"{ind:.3f} eV/A in-distribution ({rec['force_rmse_eV_A']:.3f} all); picked {info['sources']} "
                     f"({t_train:.0f} s training)")
            recs.append(rec)
            prev = rec
        return recs

    def jobs(self) -> list[tuple[str, str, int]]:
        """(pool, strategy, seed) in training order: the first three strategies (random, the
        default, the oracle: the headline) pool by pool and seed by seed, so that an interrupted
        run has paired comparisons on as many seeds as it got to; then the others strategy by
        strategy."""
        s = self.s
        seeds = range(s.seeds)
        return ([(pool, st, seed) for pool in s.pools for seed in seeds for st in s.strategies[:3]]
                + [(pool, st, seed) for st in s.strategies[3:] for pool in s.pools for seed in seeds])

    def collect(self) -> list[dict]:
        """Every cached round of the configured jobs, training nothing."""
        out = []
        for seed in range(self.s.seeds):
            path = self.workdir / "runs" / f"s{seed}" / "r0.json"
            if not path.exists():
                continue
            r0 = json.loads(path.read_text())
            for pool, st, sd in self.jobs():
                if sd == seed:
                    out += self.pipeline(pool, seed, st, r0, dry=True)
        return out

    def run(self, on_progress=None) -> list[dict]:
        """Round 0 of every seed, then the jobs in order, two at a time (one trains while the
        other evaluates and selects); ``on_progress(records)`` after each finished job."""
        from concurrent.futures import as_completed

        with ThreadPoolExecutor(max_workers=2) as ex:
            r0s = dict(zip(range(self.s.seeds), ex.map(self.round0, range(self.s.seeds))))
        done: dict = {}
        with ThreadPoolExecutor(max_workers=2) as ex:
            futs = {ex.submit(self.pipeline, pool, seed, st, r0s[seed]): (pool, st, seed)
                    for pool, st, seed in self.jobs()}
            for f in as_completed(futs):
                done[futs[f]] = f.result()
                if on_progress is not None:
                    on_progress([r for recs in done.values() for r in recs] + self.collect())
        self.train_pool.shutdown()
        return self.collect()


# ========================================================================== summary
HEADLINE_KEY = "force_rmse_eV_A in-distribution"
CURVE_KEYS = ("force_rmse_eV_A in-distribution", "force_rmse_eV_A out-of-distribution", "force_rmse_eV_A all",
              "energy_rmse_meV_atom in-distribution", "energy_rmse_meV_atom all")


def metric(rec: dict, key: str) -> float:
    what, group = key.split(" ", 1)
    return rec["test_by_group"][group][what]


def _unique(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        key = (r["pool"], r["strategy"], r["seed"], r["round"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def summarize(records: list[dict], s: Settings, pool: str) -> dict:
    """Curves (mean and std over the seeds that finished every round), labels-to-target with
    bootstrap intervals against random, the last round's errors by test group, and where the
    picks came from. Strategies with fewer finished seeds are listed under ``progress``."""
    recs = [r for r in _unique(records) if r["pool"] == pool]
    rows: dict = {}
    for r in recs:
        rows.setdefault(r["strategy"], {}).setdefault(r["seed"], {})[r["round"]] = r
    progress = {st: {str(sd): max(rr) for sd, rr in sorted(by.items())} for st, by in rows.items()}
    complete = {st: sorted(sd for sd, rr in by.items() if all(k in rr for k in range(s.rounds + 1)))
                for st, by in rows.items()}
    complete = {st: sds for st, sds in complete.items() if sds}
    out: dict = {"pool": pool, "n_candidates": None, "progress_last_round_per_seed": progress,
                 "complete_seeds": complete, "curves": {}, "targets": {}, "final_by_group": {}, "picked_sources": {}}
    if not complete:
        return out
    n_labels = None
    for st, sds in complete.items():
        n_labels = [float(rows[st][sds[0]][k]["n_labels"]) for k in range(s.rounds + 1)]
        c = {"n_labels": n_labels, "seeds": sds}
        for key in CURVE_KEYS:
            vals = np.array([[metric(rows[st][sd][k], key) for k in range(s.rounds + 1)] for sd in sds])
            c[key + " mean"] = vals.mean(axis=0).tolist()
            c[key + " std"] = (vals.std(axis=0, ddof=1) if len(sds) > 1 else np.zeros(s.rounds + 1)).tolist()
        out["curves"][st] = c
        last = [rows[st][sd][s.rounds]["test_by_group"] for sd in sds]
        out["final_by_group"][st] = {
            g: {w: {"mean": float(np.mean([x[g][w] for x in last])),
                    "std": float(np.std([x[g][w] for x in last], ddof=1)) if len(last) > 1 else 0.0}
                for w in ("force_rmse_eV_A", "energy_rmse_meV_atom", "max_force_error_eV_A")}
            for g in last[0]}
        src: dict[str, int] = {}
        for sd in sds:
            for k in range(1, s.rounds + 1):
                for name, n in rows[st][sd][k].get("selection", {}).get("sources", {}).items():
                    src[name] = src.get(name, 0) + n
        out["picked_sources"][st] = dict(sorted(src.items()))
    n0 = n_labels[0]
    if "random" not in complete:
        return out
    for key in (HEADLINE_KEY, "force_rmse_eV_A all", "force_rmse_eV_A out-of-distribution",
                "energy_rmse_meV_atom in-distribution"):
        ref_seeds = complete["random"]
        t = {"reference": "random", "target": float(np.mean([metric(rows["random"][sd][s.rounds], key) for sd in ref_seeds])),
             "random_full_budget_labels": n_labels[-1], "per_strategy": {}}
        for st, sds in complete.items():
            common = [sd for sd in sds if sd in ref_seeds]
            ref = np.array([[metric(rows["random"][sd][k], key) for k in range(s.rounds + 1)] for sd in common])
            cur = np.array([[metric(rows[st][sd][k], key) for k in range(s.rounds + 1)] for sd in common])
            b = bootstrap_ratio(n_labels, ref, cur, s.bootstrap, seed=zlib.crc32(f"{pool}/{st}/{key}".encode()))
            per_seed = [labels_to_reach(n_labels, cur[j], ref[j, -1]) for j in range(len(common))]
            t["per_strategy"][st] = dict(
                b, final_mean=float(cur[:, -1].mean()), final_std=float(cur[:, -1].std(ddof=1)) if len(common) > 1 else 0.0,
                final_vs_random=float(cur[:, -1].mean() / ref[:, -1].mean()),
                selected_ratio=None if b["labels_needed"] is None else (b["labels_needed"] - n0) / (n_labels[-1] - n0),
                labels_needed_per_seed=per_seed)
        out["targets"][key] = t
    return out


def headline(summaries: dict, s: Settings, timing: dict) -> dict:
    """The numbers issue #21 asks for, on the in-distribution test force RMSE."""
    out: dict = {"default": DEFAULT, "metric": "test force RMSE of the ensemble mean, in-distribution group "
                 "(CHGNet MD at the campaign's temperatures); target: random's mean at the full budget",
                 "seeds": None, "max_labels": None, "selection_s_10k": timing.get("selection_s_10k")}
    seeds, met = [], True
    for pool, name in (("campaign", "campaign_pool"), ("all", "full_pool")):
        summ = summaries.get(pool) or {}
        per = summ.get("targets", {}).get(HEADLINE_KEY, {}).get("per_strategy", {})
        d = per.get(DEFAULT, {})
        o = per.get("oracle", {})
        ranked = sorted(((v["ratio"] if v["ratio"] is not None else np.inf, v["final_mean"], st)
                         for st, v in per.items() if st not in ("random", "oracle")))
        out[name] = {
            "default_vs_random_labels_ratio": d.get("ratio"), "default_ci95": d.get("ci95"),
            "default_final_vs_random": d.get("final_vs_random"),
            "oracle_vs_random_labels_ratio": o.get("ratio"), "oracle_ci95": o.get("ci95"),
            "best_rule": ranked[0][2] if ranked else None,
            "best_rule_ratio": (None if not ranked or not np.isfinite(ranked[0][0]) else float(ranked[0][0])),
            "seeds": d.get("seeds"),
        }
        if d.get("seeds"):
            seeds.append(d["seeds"])
        if summ.get("curves"):
            out["max_labels"] = max(c["n_labels"][-1] for c in summ["curves"].values())
        goal = 0.5 if pool == "campaign" else 0.7
        met = met and d.get("ratio") is not None and d["ratio"] <= goal
    out["seeds"] = min(seeds) if seeds else 0
    done = all(len((summaries.get(p) or {}).get("complete_seeds", {}).get(st, [])) >= s.seeds
               for p in s.pools for st in s.strategies)
    out["partial"] = not (done and set(s.strategies) >= set(STRATEGIES[:5]))
    out["goal"] = {"campaign_pool_at_most": 0.5, "full_pool_at_most": 0.7, "never_above": 1.0, "met": bool(met)}
    return out


def write_outputs(out_dir: Path, payload: dict, records: list[dict], stem: str = "al_efficiency") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out_dir / f"{stem}.json")
    groups = ("in-distribution", "out-of-distribution", "all")
    cols = ["pool", "strategy", "seed", "round", "n_labels", "n_selected"] + [
        f"force_rmse_eV_A {g}" for g in groups] + [f"energy_rmse_meV_atom {g}" for g in groups] + [
        "pool_force_width_median", "pool_max_devi_f_median", "round_train_wall_s", "picked_sources"]
    order = {st: i for i, st in enumerate(STRATEGIES)}
    with open(out_dir / f"{stem}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in sorted(_unique(records), key=lambda r: (r["pool"], order.get(r["strategy"], 99), r["seed"], r["round"])):
            src = r.get("selection", {}).get("sources", {})
            tg = r["test_by_group"]
            w.writerow([r["pool"], r["strategy"], r["seed"], r["round"], r["n_labels"], r["n_selected"]]
                       + [f"{tg[g]['force_rmse_eV_A']:.4f}" if g in tg else "" for g in groups]
                       + [f"{tg[g]['energy_rmse_meV_atom']:.3f}" if g in tg else "" for g in groups]
                       + [f"{r['pool_force_width_median']:.4f}", f"{r['pool_max_devi_f_median']:.4f}",
                          f"{r['round_train_wall_s']:.1f}", " ".join(f"{k}:{v}" for k, v in src.items())])
    for pool, summ in payload["pools"].items():
        if summ.get("curves"):
            plot(out_dir / (f"{stem}.png" if pool == "all" else f"{stem}_{pool}_pool.png"), summ, payload["settings"])


STYLE = {"random": ("tab:gray", "o-"), "oracle": ("black", "v:"), "topk": ("tab:blue", "s-"),
         "topk_group": ("tab:blue", "s--"), "kmeans_group": ("tab:red", "D-"), "kmeans": ("tab:red", "D--"),
         "lcmd_group": ("tab:green", "^-"), "lcmd": ("tab:green", "^--"), "fps": ("tab:purple", "P--"),
         "fps_group": ("tab:purple", "P-"), "maxdet": ("tab:brown", "X--"), "dpgen_window": ("tab:orange", "h-"),
         "kmeans_group@awh": ("tab:pink", "D:"), "kmeans_group@dist": ("tab:olive", "D:")}


def plot(path: Path, summary: dict, settings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("force_rmse_eV_A in-distribution", "force RMSE (eV/Å), in-distribution test"),
              ("force_rmse_eV_A out-of-distribution", "force RMSE (eV/Å), out-of-distribution test"),
              ("energy_rmse_meV_atom in-distribution", "energy RMSE (meV/atom), in-distribution test"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, label) in zip(axes, panels):
        for st, c in summary["curves"].items():
            color, fmt = STYLE.get(st, ("tab:cyan", ".-"))
            n, m, sd = np.array(c["n_labels"]), np.array(c[key + " mean"]), np.array(c[key + " std"])
            lab = f"{st} ({len(c['seeds'])} seeds)" + (" [default]" if st == DEFAULT else "")
            ax.plot(n, m, fmt, color=color, label=lab, ms=4, lw=2.2 if st in (DEFAULT, "random") else 1.2)
            if st in (DEFAULT, "random", "oracle"):
                ax.fill_between(n, m - sd, m + sd, color=color, alpha=0.15)
        t = summary["targets"].get(key)
        if t:
            ax.axhline(t["target"], color="k", ls="--", lw=0.7)
        ax.set_xlabel("labels (CHGNet calls, incl. the initial set)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    what = "full pool" if summary["pool"] == "all" else "campaign pool (300/700 K MD only)"
    fig.suptitle(f"LiNiO2 / Li0.75NiO2, {settings['members']}-member DeePMD ensembles, {what}, k = {settings['k']} "
                 f"labels a round; mean ± std over seeds (band: default, random, oracle); dashed: random at the "
                 f"full budget", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def illustrate(path: Path, k: int = 12, seed: int = 0) -> None:
    """A synthetic 2-D pool (a dense cluster with low widths, a medium one, a small far one
    with the highest widths: 300 K, 700 K and 1000 K/rattled frames in caricature) and the
    picks of six rules: the picture behind the measured differences (docs/benchmarks.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from driver.strategies import Candidates, select

    rng = np.random.default_rng(seed)
    parts = [(240, (0.0, 0.0), 0.8, (0.2, 0.6)), (120, (3.5, 1.0), 0.6, (0.4, 1.0)), (40, (7.0, -2.0), 0.5, (0.9, 2.0))]
    x = np.vstack([rng.normal(c, sd, (n, 2)) for n, c, sd, _ in parts])
    u = np.concatenate([rng.uniform(lo, hi, n) for n, _, _, (lo, hi) in parts])
    groups = tuple(np.repeat(["A", "B", "C"], [p[0] for p in parts]))
    cands = Candidates(u, x, groups)
    rules = (("random", None, False), ("topk", "topk", False), ("fps", "fps_uncertain", False),
             ("lcmd", "lcmd", False), ("lcmd_group", "lcmd", True), ("kmeans_group", "kmeans_uncertain", True))
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2), sharex=True, sharey=True)
    for ax, (name, rule, quota) in zip(axes.ravel(), rules):
        if rule is None:
            picked = select_random(range(len(u)), k, np.random.default_rng(seed))
        else:
            picked = [c.index for c in select(rule, cands, k, np.random.default_rng(seed), quota=quota)]
        sc = ax.scatter(x[:, 0], x[:, 1], c=u, s=9, cmap="viridis", alpha=0.6)
        ax.scatter(x[picked, 0], x[picked, 1], s=70, facecolors="none", edgecolors="red", linewidths=1.6)
        share = ", ".join(f"{g} {sum(groups[i] == g for i in picked)}" for g in "ABC")
        ax.set_title(f"{name}: {share}", fontsize=10)
    fig.colorbar(sc, ax=axes, shrink=0.8, label="uncertainty (force CI width)")
    fig.suptitle(f"{k} picks (red) from a synthetic pool: A dense and confident, B medium, C small, far and "
                 "most uncertain (240/120/40 frames)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(summaries: dict, say) -> None:
    for pool, summ in summaries.items():
        t = summ.get("targets", {}).get(HEADLINE_KEY)
        if not t:
            say(f"{pool} pool: no complete random curve yet; progress {summ.get('progress_last_round_per_seed')}")
            continue
        say(f"{pool} pool, {HEADLINE_KEY}: target = random at {t['random_full_budget_labels']:g} labels = "
            f"{t['target']:.4f} eV/A")
        for st, v in sorted(t["per_strategy"].items(), key=lambda kv: kv[1]["ratio"] if kv[1]["ratio"] is not None else 9):
            r = "not reached" if v["ratio"] is None else f"ratio {v['ratio']:.2f}"
            ci = ", ".join("-" if x is None else f"{x:.2f}" for x in v["ci95"])
            say(f"  {st:18s} final {v['final_mean']:.4f} ± {v['final_std']:.3f} eV/A ({v['final_vs_random']:.3f} of "
                f"random); labels to target: {r} [95 % CI {ci}], {v['seeds']} seeds")


# ============================================================================= main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (a few minutes; results in the workdir)")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--k", type=int, help="labels per round, every strategy")
    ap.add_argument("--members", type=int)
    ap.add_argument("--steps-initial", type=int)
    ap.add_argument("--steps-continue", type=int)
    ap.add_argument("--subset-fraction", type=float,
                    help="share of the labeled frames each member trains on (default 0.9, the campaign's; 1.0: "
                         "every member on all frames, as DP-GEN trains). Use its own --workdir: stage 0 can be "
                         "shared (a link to another workdir's stage0), the rounds cannot")
    ap.add_argument("--workers", type=int, help="parallel DeePMD trainings / labeling processes (default 1)")
    ap.add_argument("--launcher", choices=("in-process", "subprocess"),
                    help="how train_member runs dp: inside persistent workers (default) or as subprocesses")
    ap.add_argument("--workdir", help="cache (default runs/al_efficiency[_quick], git-ignored)")
    ap.add_argument("--out-dir", help="results (default benchmarks/results; --quick: the workdir)")
    ap.add_argument("--fresh", action="store_true", help="delete the workdir first")
    ap.add_argument("--stage0-only", action="store_true", help="build (or show) the cached data and stop")
    ap.add_argument("--report", action="store_true", help="train nothing: write the results from the cached rounds")
    ap.add_argument("--illustrate", metavar="PNG", help="draw the rules' picks on a synthetic 2-D pool and stop")
    ap.add_argument("--pools", help=f"comma-separated subset of {','.join(POOLS)} (default both)")
    ap.add_argument("--strategies", help=f"comma-separated, in training order; 'all' for {','.join(STRATEGIES)} "
                    f"(default: the first pass, {','.join(STRATEGIES[:5])}); random is the reference")
    args = ap.parse_args(argv)
    if args.illustrate:
        illustrate(Path(args.illustrate))
        return {}

    s = Settings.quick() if args.quick else Settings()
    for name in ("seeds", "rounds", "k", "members", "steps_initial", "steps_continue", "subset_fraction", "workers",
                 "launcher"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    if not 0 < s.subset_fraction <= 1:
        ap.error(f"--subset-fraction must lie in (0, 1], got {s.subset_fraction}")
    if args.pools:
        s.pools = tuple(x.strip() for x in args.pools.split(",") if x.strip())
        if set(s.pools) - set(POOLS):
            ap.error(f"--pools: choose from {', '.join(POOLS)}")
    if args.strategies:
        names = STRATEGIES if args.strategies == "all" else tuple(x.strip() for x in args.strategies.split(",") if x.strip())
        try:
            for x in names:
                parse_strategy(x)
        except ValueError as exc:
            ap.error(f"--strategies: {exc}")
        if "random" not in names:
            ap.error("--strategies: random is the reference and must be included")
        s.strategies = names
    workdir = Path(args.workdir or (ROOT / "runs" / ("al_efficiency_quick" if args.quick else "al_efficiency")))
    out_dir = Path(args.out_dir) if args.out_dir else (workdir if args.quick else ROOT / "benchmarks" / "results")
    workdir = workdir.resolve()
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_key = {k: v for k, v in dataclasses.asdict(s).items()
               if k not in ("seeds", "rounds", "workers", "launcher", "pools", "strategies", "bootstrap")}
    key_path = workdir / "run_settings.json"
    if key_path.exists() and json.loads(key_path.read_text()) != json.loads(json.dumps(run_key)):
        if (workdir / "runs").exists() and not args.report:
            shutil.rmtree(workdir / "runs")  # other training or selection settings: cached rounds are void
    if not args.report:
        key_path.write_text(json.dumps(run_key, indent=2))

    say = Log()
    say(f"al_efficiency: pools {','.join(s.pools)}; {s.seeds} seeds x {len(s.strategies)} strategies x {s.rounds} rounds "
        f"of k={s.k}, {s.members} members, {s.steps_initial}/{s.steps_continue} steps, {s.workers} workers; "
        f"workdir {workdir}")
    t0 = time.time()
    stage0 = build_stage0(s, workdir, say)
    t_stage0 = time.time() - t0
    if args.stage0_only:
        print(json.dumps({k: v for k, v in stage0.items() if k != "settings"}, indent=1))
        return stage0
    runs = [selection_timing(seed=i) for i in range(3)]
    timing = dict(runs[0], selection_s_10k=float(np.median([r["selection_s_10k"] for r in runs])),
                  selection_s_10k_min=float(min(r["selection_s_10k"] for r in runs)),
                  features_s=float(np.median([r["features_s"] for r in runs])),
                  select_s=float(np.median([r["select_s"] for r in runs])),
                  wall_s=float(np.median([r["wall_s"] for r in runs])), repeats=len(runs))
    say(f"selection of {timing['k']} from 10,000 synthetic candidates with {TIMED_RULE}: {timing['selection_s_10k']:.2f} s "
        f"(features {timing['features_s']:.2f} s, selection {timing['select_s']:.2f} s; CPU time of one thread, median of "
        f"3; wall {timing['wall_s']:.2f} s)")
    bench = Bench(s, workdir, say)
    lock = threading.Lock()

    def report(records) -> dict:
        summaries = {pool: summarize(records, s, pool) for pool in s.pools}
        for pool in s.pools:
            summaries[pool]["n_candidates"] = len(bench.allowed[pool])
        r0 = sorted((r for r in _unique(records) if r["round"] == 0), key=lambda r: r["seed"])
        payload = {
            "benchmark": "al_efficiency",
            "headline": headline(summaries, s, timing),
            "settings": {**dataclasses.asdict(s), "strategies": list(s.strategies), "all_strategies": list(STRATEGIES),
                         "loss": LOSS, "structures": [n for n, _, _ in STRUCTURES], "cell": "(2, 2, 1), 16/15 atoms",
                         "labeler": "CHGNet (stand-in for DFT)", "training": "round 0 from scratch, later rounds "
                         "continue each member from its previous checkpoint (init_model)"},
            "stage0": stage0,
            "selection_timing": timing,
            "round0": {str(r["seed"]): {k: r.get(k) for k in ("dpgen_trust", "pool_force_width_quantiles",
                                                              "pool_share_above_threshold", "feature_study",
                                                              "test_by_group", "uq_s_per_frame", "features_s_per_frame")}
                       for r in {r["seed"]: r for r in r0}.values()},
            "pools": summaries,
            "records": [{k: v for k, v in r.items() if k not in ("model_paths", "checkpoints", "feature_study")}
                        for r in _unique(records)],
            "wall_s_this_invocation": time.time() - t0,
            "wall_s_stage0_when_built": stage0.get("wall_s"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }
        with lock:
            write_outputs(out_dir, payload, records)
        return payload

    if args.report:
        records = bench.collect()
    else:
        records = bench.run(on_progress=report)
    payload = report(records)
    print_summary(payload["pools"], say)
    say(f"headline: {json.dumps(payload['headline'])}")
    say(f"done in {(time.time() - t0) / 60:.1f} min (stage 0 {t_stage0 / 60:.1f} min); wrote {out_dir}/al_efficiency.*")
    return payload


if __name__ == "__main__":
    main()
