"""Active-learning efficiency: labels needed to reach a target accuracy, by selection rule.

    .venv/bin/python benchmarks/al_efficiency.py            # full run (docs/benchmarks.md: timing)
    .venv/bin/python benchmarks/al_efficiency.py --quick    # smoke run, results in the workdir

Pool-based comparison on the example campaign's systems (examples/linio2.toml: LiNiO2 and
Li0.75NiO2 in (2, 2, 1) cells of 16/15 atoms, CHGNet labels as the stand-in for DFT).

Stage 0 (cached under ``--workdir``, default ``runs/al_efficiency``, which git ignores):

* initial data: the campaign's ``initial`` section (10 rattled/strained frames per
  composition, rattle 0.02-0.12 A, strain 3 %, campaign seed 7), labeled with CHGNet;
* an unlabeled candidate POOL: MD (``remote_al.dynamics.run_md``, 600 steps, 300, 700 and
  1000 K, both compositions, two walkers) with two throwaway DeePMD models trained on the
  initial data plus 48 extra rattled frames (up to 0.25 A; without close contacts in their
  data the MD collapses), plus 30 strongly rattled frames (0.10-0.20 A, strain 4 %). Every
  frame passes ``remote_al.structures.check_structure`` and is labeled once with CHGNet,
  so each strategy's "labeler call" is a lookup and the budget counts labels, not seconds;
* a held-out TEST set: MD driven by CHGNet itself at the campaign's temperatures (300 and
  700 K, both compositions; 20 frames 10 fs apart after 100 fs), plus the campaign's 3
  rattled test frames per composition; never in the pool, never trained on.

Then, per seed, a round-0 ensemble of 4 members (``remote_al.training.train_member``,
subset 0.9, the campaign's loss prefactors, 800 steps from scratch) is trained on the
initial data and shared by the strategies. Each strategy runs ``--rounds`` rounds: the
previous ensemble evaluates the pool (``predict_ensemble``, ``frame_uncertainty``), the
strategy picks ``--k`` frames, their labels join the training set, every member continues
from its previous checkpoint (``init_model``, as the campaign does) for
``--steps-continue`` steps, and the new ensemble's mean is scored on the test set (energy
RMSE per atom, force RMSE over components). Member seeds depend on (seed, round, member)
only, the same for every strategy. Strategies, all spending exactly k labels a round:

* ``ours``: ``driver.selection.select`` with the campaign's policy (force CI width
  threshold 0.10 eV/A, trust bound 3.0 eV/A, near-duplicate filter 0.05 A, highest widths
  first, cap k). If fewer than k frames are above the threshold, ``select`` runs again with
  threshold 0 on the rest (highest widths below the threshold); if still short, the lowest
  widths above the trust bound;
* ``random``: k frames uniformly from the unlabeled pool;
* ``dpgen``: DP-GEN's max force deviation (per atom, the root mean square over models of
  the deviation from the mean force; max over atoms), candidates in the trust window
  [lo, hi), k of them uniformly at random (``fp_task_max``). lo and hi are the 50th and
  95th percentiles of the round-0 ensemble's deviations on the pool (per seed), fixed over
  rounds. Fewer than k candidates: the highest deviations below lo fill the budget;
* ``ours_window`` (a variant): ``ours`` with threshold and trust bound at the same round-0
  percentiles (50th, 95th) of the Student-t widths.

Training runs in ``--workers`` (2) persistent worker processes. ``--launcher in-process``
(default) runs train_member's ``dp --pt train`` / ``dp --pt freeze`` through DeePMD-kit's
entry point inside the worker instead of a subprocess (same arguments, same results,
torch imported once per worker); ``--launcher subprocess`` runs train_member unchanged.

Outputs in ``--out-dir``: ``al_efficiency.json`` (settings, stage-0 summary, every record,
summary with labels-to-target), ``al_efficiency.csv`` (one row per strategy, seed and
round) and ``al_efficiency.png`` (test RMSE against labels, mean and standard deviation
over seeds). Every finished round is cached, so an interrupted run resumes.
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
# ours_window: the campaign's selection with DP-GEN-style trust levels (threshold and upper bound
# at the same round-0 quantiles as dpgen's lo and hi, on the Student-t widths): a variant tried
# because plain "ours" goes for the frames farthest from the test distribution
STRATEGIES = ("ours", "random", "dpgen", "ours_window")
# The example campaign's structures: name, Li content, vacancy-ordering seed.
STRUCTURES = (("LiNiO2", 1.0, 0), ("Li0.75NiO2", 0.75, 1))
# The example campaign's [training.deepmd.loss] overrides (energy weighted up for short runs).
LOSS = {"start_pref_e": 0.2, "limit_pref_e": 2.0, "start_pref_f": 1000.0, "limit_pref_f": 1.0}


@dataclass
class Settings:
    seeds: int = 3
    rounds: int = 3
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
    pool_frames_per_run: int = 25
    pool_rattled_per_structure: int = 15
    pool_rattle_A: tuple = (0.10, 0.20)
    pool_strain: float = 0.04
    # test: MD with CHGNet itself (the reference's own thermal distribution), frames after
    # test_equil_steps, then every test_interval steps
    test_temperatures_K: tuple = (300.0, 700.0)
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
    workers: int = 2
    # "in-process": train_member's dp train/freeze run inside persistent worker processes
    # (same arguments, DeePMD-kit imported once per worker); "subprocess": train_member as is
    launcher: str = "in-process"
    # "all": every pool frame is a candidate; "campaign": only the MD frames at the campaign's
    # own temperatures (those of the test set), i.e. what the example campaign's exploration
    # produces (no 1000 K runs, no strongly rattled frames)
    pool: str = "all"
    strategies: tuple = STRATEGIES

    @classmethod
    def quick(cls) -> "Settings":
        return cls(
            seeds=2, rounds=1, k=4, members=2, steps_initial=60, steps_continue=30,
            generator_members=1, generator_steps=200, generator_extra_per_structure=6,
            pool_temperatures_K=(300.0, 1000.0),
            pool_walkers=1, md_steps=200, pool_frames_per_run=5, pool_rattled_per_structure=2,
            test_temperatures_K=(700.0,), test_walkers=1, test_equil_steps=10, test_interval=5, test_frames_per_run=3,
            test_rattled_per_structure=1, n_initial_per_structure=4,
        )

    def stage0_key(self) -> dict:
        names = [
            "campaign_seed", "n_initial_per_structure", "rattle_A", "strain", "generator_members",
            "generator_steps", "generator_extra_per_structure", "generator_rattle_A", "pool_temperatures_K", "pool_walkers", "md_steps", "pool_frames_per_run",
            "pool_rattled_per_structure", "pool_rattle_A", "pool_strain", "test_temperatures_K",
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


def select_ours(candidates, k: int, policy) -> tuple[list[int], dict]:
    """The campaign's selection (``driver.selection.select``) with cap ``k``. When fewer than
    ``k`` frames are above the width threshold, ``select`` runs again with threshold 0 on the
    rest (the already chosen count against the cap and are checked for near-duplicates), so
    the highest widths below the threshold fill the budget. Returns ids and decision counts."""
    from driver.selection import select

    policy = dataclasses.replace(policy, max_per_round=k)
    decisions = select(candidates, policy)
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.decision] = counts.get(d.decision, 0) + 1
    chosen = [d.id for d in decisions if d.decision == "label"]
    filled = 0
    if len(chosen) < k:
        by_id = {c.id: c for c in candidates}
        rest = [c for c in candidates if c.id not in set(chosen)]
        more = select(rest, dataclasses.replace(policy, force_threshold=0.0),
                      already_chosen=[by_id[i] for i in chosen])
        extra = [d.id for d in more if d.decision == "label"]
        filled = len(extra)
        chosen += extra
    counts["filled_below_threshold"] = filled
    if len(chosen) < k:  # only frames above the trust bound are left: the lowest of them
        rest = sorted((c for c in candidates if c.id not in set(chosen) and c.force_width is not None),
                      key=lambda c: (c.force_width, c.id))
        extra = [c.id for c in rest[: k - len(chosen)]]
        counts["filled_above_upper"] = len(extra)
        chosen += extra
    return chosen, counts


def select_random(unlabeled: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` ids uniformly, without replacement, from the unlabeled pool."""
    unlabeled = list(unlabeled)
    if len(unlabeled) <= k:
        return unlabeled
    return sorted(int(i) for i in rng.choice(unlabeled, size=k, replace=False))


def select_dpgen(
    unlabeled: Sequence[int], deviation: Sequence[float], k: int, lo: float, hi: float, rng: np.random.Generator
) -> tuple[list[int], dict]:
    """DP-GEN's trust window: candidates have ``lo <= max_devi_f < hi``; up to ``k`` of them
    uniformly at random (``fp_task_max``). Fewer candidates than ``k``: the highest deviations
    below ``lo`` fill the budget (DP-GEN itself would label fewer). ``deviation`` is aligned
    with ``unlabeled``."""
    ids = np.asarray(list(unlabeled), dtype=int)
    dev = np.asarray(deviation, dtype=float)
    window = ids[(dev >= lo) & (dev < hi)]
    info = {"candidates": int(len(window)), "accurate": int(np.sum(dev < lo)), "failed": int(np.sum(dev >= hi))}
    if len(window) >= k:
        chosen = [int(i) for i in rng.choice(window, size=k, replace=False)]
        info["filled_below_lo"] = 0
        return sorted(chosen), info
    chosen = [int(i) for i in window]
    below = np.where(dev < lo)[0]
    below = below[np.argsort(-dev[below], kind="stable")]
    extra = [int(ids[j]) for j in below[: k - len(chosen)]]
    info["filled_below_lo"] = len(extra)
    chosen += extra
    return sorted(chosen), info


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
    """Langevin MD driven by CHGNet; labeled frames (extxyz) after the equilibration steps."""
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
        _FRAMES.update(dir=d, test=from_extxyz((Path(d) / "test.extxyz").read_text()),
                       pool=from_extxyz((Path(d) / "pool.extxyz").read_text()))
    return evaluate(job["model_paths"], _FRAMES["test"], _FRAMES["pool"])


def test_errors(model_paths, test) -> dict:
    """Per test frame: group (temperature or 'rattled'), squared force errors summed and
    their count, max |force error| component, energy error per atom (ensemble mean)."""
    from deepmd.infer import DeepPot

    from remote_al.dynamics import predict_ensemble

    energies, forces = predict_ensemble([DeepPot(p) for p in model_paths], list(test))
    natoms = np.array([len(a) for a in test])
    e_err = energies.mean(axis=0) / natoms - np.array([a.get_potential_energy() for a in test]) / natoms
    d = [forces[i].mean(axis=0) - test[i].get_forces() for i in range(len(test))]
    return {
        "group": np.array([_group(a) for a in test]),
        "f_sq": np.array([float(np.sum(x**2)) for x in d]),
        "f_n": np.array([x.size for x in d]),
        "f_maxabs": np.array([float(np.abs(x).max()) for x in d]),
        "e_err": e_err,
    }


def _group(a) -> str:
    return "rattled" if a.info.get("source") == "rattled" else f"{a.info['temperature_K']:g} K"


def _test_errors_job(job: dict) -> dict:
    from remote_al.structures import from_extxyz

    return test_errors(job["model_paths"], from_extxyz((Path(job["stage0"]) / "test.extxyz").read_text()))


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


def _train_many(reqs, workers: int, launcher: str):
    from remote_al.records import TrainResult

    pool = WorkerSlots(workers)
    try:
        futs = [pool.submit(_train, {"request": r.to_dict(), "launcher": launcher}) for r in reqs]
        return [TrainResult.from_dict(f.result()) for f in futs]
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
        for j, (name, t, w) in enumerate((n, t, w) for n, _, _ in STRUCTURES for t in s.test_temperatures_K
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
def evaluate(model_paths, test, pool):
    """Test RMSE of the ensemble mean, and per pool frame the energy/force CI widths and
    DP-GEN's max force deviation."""
    from deepmd.infer import DeepPot

    from remote_al.dynamics import predict_ensemble
    from remote_al.uq import frame_uncertainty

    models = [DeepPot(p) for p in model_paths]
    frames = list(test) + list(pool)
    energies, forces = predict_ensemble(models, frames)
    natoms = np.array([len(a) for a in frames])
    nt = len(test)
    e_ref = np.array([a.get_potential_energy() for a in test]) / natoms[:nt]
    e_mean = energies[:, :nt].mean(axis=0) / natoms[:nt]
    df = np.concatenate([(forces[i].mean(axis=0) - test[i].get_forces()).reshape(-1) for i in range(nt)])
    e_w, f_w = frame_uncertainty(energies[:, nt:], forces[nt:], natoms[nt:])
    return {
        "energy_rmse_meV_atom": float(np.sqrt(np.mean((e_mean - e_ref) ** 2)) * 1000.0),
        "force_rmse_eV_A": float(np.sqrt(np.mean(df**2))),
        "pool_energy_width": e_w,
        "pool_force_width": f_w,
        "pool_max_devi_f": max_force_deviation(forces[nt:]),
    }


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
        self._fps = None
        self._evals: dict = {}  # model paths -> future of evaluate(): test RMSE and pool widths
        temps = {float(t) for t in s.test_temperatures_K}
        self.allowed = [i for i, a in enumerate(self.pool)
                        if s.pool == "all" or (a.info["source"] == "md" and float(a.info["temperature_K"]) in temps)]

    def tag(self, strategy: str) -> str:
        return strategy if self.s.pool == "all" else f"{self.s.pool}-pool/{strategy}"

    # -- helpers
    def fingerprints(self):
        from driver.selection import fingerprint

        if self._fps is None:
            self._fps = [fingerprint(a) for a in self.pool]
        return self._fps

    def member_seed(self, seed: int, rnd: int, m: int) -> int:
        # the same seeds for every strategy: differences come from the data only
        return 100000 * (seed + 1) + 1000 * rnd + 10 * m

    def train(self, tag: str, seed: int, rnd: int, pool_ids: Sequence[int], init: Sequence[str] | None):
        from remote_al.deepmd_data import write_systems
        from remote_al.records import TrainRequest

        s = self.s
        base = self.workdir / "runs" / tag
        if base.exists():
            shutil.rmtree(base)
        frames = list(self.initial) + [self.pool[i] for i in pool_ids]
        systems = write_systems(frames, base / "data", TYPE_MAP)
        reqs = [
            TrainRequest(
                task_key=f"{tag}/m{m}", workdir=str(base / f"m{m}"), systems=tuple(systems), type_map=TYPE_MAP,
                member=m, seed=self.member_seed(seed, rnd, m), subset_fraction=s.subset_fraction,
                numb_steps=s.steps_initial if init is None else s.steps_continue, deepmd={"loss": LOSS},
                init_model=None if init is None else init[m], device="cpu",
            )
            for m in range(s.members)
        ]
        from remote_al.records import TrainResult

        futs = [self.train_pool.submit(_train, {"request": r.to_dict(), "launcher": s.launcher}) for r in reqs]
        return [TrainResult.from_dict(f.result()) for f in futs]

    def evaluate(self, model_paths):
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

    def record(self, seed, strategy, rnd, pool_ids, trained, ev, t_train, selection=None) -> dict:
        return {
            "seed": seed, "strategy": strategy, "round": rnd,
            "n_labels": len(self.initial) + len(pool_ids), "n_selected": len(pool_ids),
            "energy_rmse_meV_atom": ev["energy_rmse_meV_atom"], "force_rmse_eV_A": ev["force_rmse_eV_A"],
            "round_train_wall_s": t_train,
            "pool_ids": [int(i) for i in pool_ids],
            "model_paths": [t.model_path for t in trained], "checkpoints": [t.checkpoint_path for t in trained],
            "pool_force_width_median": float(np.median(ev["pool_force_width"])),
            "pool_max_devi_f_median": float(np.median(ev["pool_max_devi_f"])),
            "selection": selection or {},
        }

    # -- round 0, shared by the strategies of one seed
    def round0(self, seed: int) -> dict:
        path = self.workdir / "runs" / f"s{seed}" / "r0.json"
        if path.exists():
            return json.loads(path.read_text())
        t0 = time.time()
        trained = self.train(f"s{seed}/r0", seed, 0, [], None)
        t_train = time.time() - t0
        ev = self.evaluate([t.model_path for t in trained])
        rec = self.record(seed, "initial", 0, [], trained, ev, t_train)
        lo, hi = (float(np.quantile(ev["pool_max_devi_f"], q)) for q in self.s.dpgen_quantiles)
        rec["dpgen_trust_lo"], rec["dpgen_trust_hi"] = lo, hi
        rec["pool_force_width_quantiles"] = {f"q{round(q * 100)}": float(np.quantile(ev["pool_force_width"], q))
                                             for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
        rec["pool_share_above_threshold"] = float(np.mean(ev["pool_force_width"] > self.s.force_threshold))
        path.write_text(json.dumps(rec, indent=2))
        self.say(f"seed {seed} round 0: {rec['n_labels']} labels, force RMSE {rec['force_rmse_eV_A']:.3f} eV/A, "
                 f"energy RMSE {rec['energy_rmse_meV_atom']:.1f} meV/atom; DP-GEN trust window "
                 f"[{lo:.3f}, {hi:.3f}) eV/A; {rec['pool_share_above_threshold']:.0%} of the pool above "
                 f"the 0.10 eV/A width threshold ({t_train:.0f} s training)")
        return rec

    # -- one strategy, one seed
    def pipeline(self, seed: int, strategy: str, r0: dict) -> list[dict]:
        from driver.selection import Candidate, SelectionPolicy

        s = self.s
        recs = [dict(r0, strategy=strategy)]
        prev = r0
        policy = SelectionPolicy(s.force_threshold, s.force_upper, 0.0, s.k, s.dedup_tolerance_A)
        for rnd in range(1, s.rounds + 1):
            path = self.workdir / "runs" / f"s{seed}" / self.tag(strategy) / f"r{rnd}.json"
            if path.exists():
                prev = json.loads(path.read_text())
                recs.append(prev)
                continue
            labeled = set(prev["pool_ids"])
            unlabeled = [i for i in self.allowed if i not in labeled]
            rng = np.random.default_rng([seed, STRATEGIES.index(strategy), rnd])
            if strategy == "ours_window" and s.pool != "all":
                raise SystemExit("ours_window is defined on the full pool only")
            ev_prev = self.evaluate(prev["model_paths"])  # the ensemble that selects this round (cached)
            fw, ew, dev = ev_prev["pool_force_width"], ev_prev["pool_energy_width"], ev_prev["pool_max_devi_f"]
            if strategy in ("ours", "ours_window"):
                fps = self.fingerprints()
                cands = [Candidate(i, float(ew[i]), float(fw[i]), True, "", fps[i]) for i in unlabeled]
                pol = policy
                if strategy == "ours_window":
                    lo_q, hi_q = (f"q{round(q * 100)}" for q in s.dpgen_quantiles)
                    q = r0["pool_force_width_quantiles"]
                    pol = dataclasses.replace(policy, force_threshold=q[lo_q], force_upper=q[hi_q])
                picked, info = select_ours(cands, s.k, pol)
            elif strategy == "random":
                picked, info = select_random(unlabeled, s.k, rng), {}
            else:
                lo, hi = r0["dpgen_trust_lo"], r0["dpgen_trust_hi"]
                if s.pool != "all":  # the same quantiles, of the candidates this variant has
                    lo, hi = (float(np.quantile(self.evaluate(r0["model_paths"])["pool_max_devi_f"][self.allowed], q))
                              for q in s.dpgen_quantiles)
                picked, info = select_dpgen(unlabeled, dev[unlabeled], s.k, lo, hi, rng)
                info.update(trust_lo=lo, trust_hi=hi)
            info = dict(info)
            info["picked"] = [int(i) for i in picked]
            info["force_width_mean"] = float(np.mean(fw[picked])) if picked else None
            info["sources"] = _source_counts([self.pool[i] for i in picked])
            t0 = time.time()
            trained = self.train(f"s{seed}/{self.tag(strategy)}/r{rnd}", seed, rnd, sorted(labeled | set(picked)),
                                 prev["checkpoints"])
            t_train = time.time() - t0
            ev = self.evaluate([t.model_path for t in trained])
            rec = self.record(seed, strategy, rnd, sorted(labeled | set(picked)), trained, ev, t_train, info)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec, indent=2))
            self.say(f"seed {seed} {strategy:6s} round {rnd}: {rec['n_labels']} labels, force RMSE "
                     f"{rec['force_rmse_eV_A']:.3f} eV/A, energy RMSE {rec['energy_rmse_meV_atom']:.1f} meV/atom; "
                     f"picked {info['sources']} ({t_train:.0f} s training)")
            recs.append(rec)
            prev = rec
        return recs

    def run(self) -> list[dict]:
        s = self.s
        r0s = {}
        with ThreadPoolExecutor(max_workers=s.seeds) as ex:
            for seed, rec in zip(range(s.seeds), ex.map(self.round0, range(s.seeds))):
                r0s[seed] = rec
        jobs = [(seed, st) for seed in range(s.seeds) for st in s.strategies]
        with ThreadPoolExecutor(max_workers=len(jobs)) as ex:
            futs = [ex.submit(self.pipeline, seed, st, r0s[seed]) for seed, st in jobs]
            out = [r for f in futs for r in f.result()]
        self.final_errors = self.breakdown(out)
        self.train_pool.shutdown()
        return out

    def breakdown(self, records) -> dict:
        """Test errors of round 0 and of each strategy's last ensemble, by test-frame group
        (300 K, 700 K, rattled): force RMSE and max |force error|, mean and std over seeds."""
        last = max(r["round"] for r in records)
        todo = [r for r in records if r["round"] == last or (r["round"] == 0 and r["strategy"] == self.s.strategies[0])]
        futs = []
        for r in todo:
            cache = Path(r["model_paths"][0]).parents[1] / "test_errors.npz"  # per ensemble, shared by variants
            if cache.exists():
                with np.load(cache) as z:
                    futs.append((r, cache, {k: z[k] for k in z.files}))
            else:
                job = {"model_paths": r["model_paths"], "stage0": str(self.workdir / "stage0")}
                futs.append((r, cache, self.train_pool.submit(_test_errors_job, job)))
        per: dict[str, dict[str, list]] = {}
        for r, cache, f in futs:
            te = f if isinstance(f, dict) else f.result()
            if not cache.exists():
                np.savez(cache, **te)
            name = "initial (round 0)" if r["round"] == 0 else r["strategy"]
            out = per.setdefault(name, {})
            groups = sorted(set(te["group"].tolist()))
            for g in groups + ["all"]:
                m = np.ones(len(te["group"]), bool) if g == "all" else te["group"] == g
                out.setdefault(f"force_rmse_eV_A {g}", []).append(float(np.sqrt(te["f_sq"][m].sum() / te["f_n"][m].sum())))
                out.setdefault(f"max_force_error_eV_A {g}", []).append(float(te["f_maxabs"][m].max()))
                out.setdefault(f"energy_rmse_meV_atom {g}", []).append(float(np.sqrt(np.mean(te["e_err"][m] ** 2)) * 1000))
        return {name: {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                       for k, v in sorted(vals.items())} for name, vals in per.items()}


def _source_counts(frames) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in frames:
        key = "rattled" if a.info["source"] == "rattled" else f"{a.info['temperature_K']:g}K"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# ========================================================================== summary
def summarize(records: list[dict], s: Settings) -> dict:
    curves = {}
    for st in s.strategies:
        rows = [r for r in records if r["strategy"] == st]
        rounds = sorted({r["round"] for r in rows})
        n = [float(np.mean([r["n_labels"] for r in rows if r["round"] == k])) for k in rounds]
        c = {"n_labels": n, "n_seeds": len({r["seed"] for r in rows})}
        for key in ("force_rmse_eV_A", "energy_rmse_meV_atom"):
            vals = [[r[key] for r in rows if r["round"] == k] for k in rounds]
            c[key + "_mean"] = [float(np.mean(v)) for v in vals]
            c[key + "_std"] = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
        curves[st] = c
    n0 = int(len(records) and min(r["n_labels"] for r in records))
    picked: dict[str, dict[str, int]] = {}
    for r in records:
        for src, n in r.get("selection", {}).get("sources", {}).items():
            picked.setdefault(r["strategy"], {})
            picked[r["strategy"]][src] = picked[r["strategy"]].get(src, 0) + n
    out = {"curves": curves, "n_initial_labels": n0, "picked_sources_all_seeds_rounds": picked, "targets": {}}
    for key in ("force_rmse_eV_A", "energy_rmse_meV_atom"):
        rnd = curves["random"]
        full = rnd["n_labels"][-1]
        target = rnd[key + "_mean"][-1]
        t = {"random_full_budget_labels": full, "target": target, "per_strategy": {}}
        for st in s.strategies:
            c = curves[st]
            need = labels_to_reach(c["n_labels"], c[key + "_mean"], target)
            per_seed = []
            for seed in sorted({r["seed"] for r in records}):
                rr = sorted((r for r in records if r["strategy"] == "random" and r["seed"] == seed),
                            key=lambda r: r["round"])
                mine = sorted((r for r in records if r["strategy"] == st and r["seed"] == seed),
                              key=lambda r: r["round"])
                ns = labels_to_reach([r["n_labels"] for r in mine], [r[key] for r in mine], rr[-1][key])
                per_seed.append(ns)
            t["per_strategy"][st] = {
                "final_mean": c[key + "_mean"][-1], "final_std": c[key + "_std"][-1],
                "labels_needed": need,
                "ratio_vs_random_full": None if need is None else need / full,
                "selected_needed": None if need is None else need - n0,
                "selected_ratio_vs_random_full": None if need is None else (need - n0) / (full - n0),
                "labels_needed_per_seed": per_seed,
            }
        out["targets"][key] = t
    return out


def write_outputs(out_dir: Path, payload: dict, records: list[dict], stem: str = "al_efficiency") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    cols = ["strategy", "seed", "round", "n_labels", "n_selected", "energy_rmse_meV_atom", "force_rmse_eV_A",
            "pool_force_width_median", "pool_max_devi_f_median", "round_train_wall_s", "picked_sources"]
    with open(out_dir / f"{stem}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in sorted(records, key=lambda r: (STRATEGIES.index(r["strategy"]), r["seed"], r["round"])):  # noqa
            src = r.get("selection", {}).get("sources", {})
            w.writerow([r["strategy"], r["seed"], r["round"], r["n_labels"], r["n_selected"],
                        f"{r['energy_rmse_meV_atom']:.3f}", f"{r['force_rmse_eV_A']:.4f}",
                        f"{r['pool_force_width_median']:.4f}", f"{r['pool_max_devi_f_median']:.4f}",
                        f"{r['round_train_wall_s']:.1f}", " ".join(f"{k}:{v}" for k, v in src.items())])
    plot(out_dir / f"{stem}.png", payload["summary"], payload["settings"])


def plot(path: Path, summary: dict, settings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"ours": "Student-t width (ours)", "random": "random", "dpgen": "DP-GEN trust window",
             "ours_window": "Student-t width, round-0 q50/q95 window (variant)"}
    colors = {"ours": "tab:blue", "random": "tab:gray", "dpgen": "tab:orange", "ours_window": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, unit in ((axes[0], "force_rmse_eV_A", "force RMSE (eV/Å)"),
                          (axes[1], "energy_rmse_meV_atom", "energy RMSE (meV/atom)")):
        for st in settings["strategies"]:
            c = summary["curves"][st]
            n, m, sd = np.array(c["n_labels"]), np.array(c[key + "_mean"]), np.array(c[key + "_std"])
            ax.plot(n, m, "s--" if st == "ours_window" else "o-", color=colors[st], label=names[st])
            ax.fill_between(n, m - sd, m + sd, color=colors[st], alpha=0.18)
        t = summary["targets"][key]
        ax.axhline(t["target"], color="k", ls="--", lw=0.8, label="random, full budget")
        ax.set_xlabel("labels (CHGNet calls, incl. the initial set)")
        ax.set_ylabel(f"test {unit}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    pool = "" if settings.get("pool", "all") == "all" else ", pool: campaign's conditions only"
    fig.suptitle(f"LiNiO2 / Li0.75NiO2, {settings['members']}-member DeePMD ensembles{pool}, "
                 f"k = {settings['k']} labels a round, mean ± std over {settings['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_summary(summary: dict, say) -> None:
    for key, unit in (("force_rmse_eV_A", "eV/A"), ("energy_rmse_meV_atom", "meV/atom")):
        t = summary["targets"][key]
        say(f"{key}: target = random at {t['random_full_budget_labels']:g} labels = {t['target']:.4g} {unit}")
        for st, v in t["per_strategy"].items():
            need = "not reached" if v["labels_needed"] is None else (
                f"{v['labels_needed']:.1f} labels (ratio {v['ratio_vs_random_full']:.2f})")
            say(f"  {st:6s}: final {v['final_mean']:.4g} ± {v['final_std']:.2g} {unit}; to target: {need}; "
                f"per seed {[None if x is None else round(x, 1) for x in v['labels_needed_per_seed']]}")


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
    ap.add_argument("--workers", type=int, help="parallel DeePMD trainings / labeling processes (default 2)")
    ap.add_argument("--launcher", choices=("in-process", "subprocess"),
                    help="how train_member runs dp: inside persistent workers (default) or as subprocesses")
    ap.add_argument("--workdir", help="cache (default runs/al_efficiency[_quick], git-ignored)")
    ap.add_argument("--out-dir", help="results (default benchmarks/results; --quick: the workdir)")
    ap.add_argument("--fresh", action="store_true", help="delete the workdir first")
    ap.add_argument("--stage0-only", action="store_true", help="build (or show) the cached data and stop")
    ap.add_argument("--pool", choices=("all", "campaign"), default="all",
                    help="candidates: every pool frame (default) or only the MD frames at the campaign's "
                         "temperatures (results then in al_efficiency_campaign_pool.*)")
    ap.add_argument("--strategies", help=f"comma-separated subset of {','.join(STRATEGIES)}")
    args = ap.parse_args(argv)

    s = Settings.quick() if args.quick else Settings()
    for name in ("seeds", "rounds", "k", "members", "steps_initial", "steps_continue", "workers", "launcher"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    s.pool = args.pool
    if args.strategies:
        names = tuple(x.strip() for x in args.strategies.split(",") if x.strip())
        bad = [x for x in names if x not in STRATEGIES]
        if bad or "random" not in names:
            ap.error(f"--strategies: unknown {bad} (choose from {', '.join(STRATEGIES)}; random is the reference "
                     "and must be included)")
        s.strategies = names
    elif s.pool != "all":
        s.strategies = tuple(x for x in STRATEGIES if x != "ours_window")
    workdir = Path(args.workdir or (ROOT / "runs" / ("al_efficiency_quick" if args.quick else "al_efficiency")))
    out_dir = Path(args.out_dir) if args.out_dir else (workdir if args.quick else ROOT / "benchmarks" / "results")
    workdir = workdir.resolve()
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_key = {k: v for k, v in dataclasses.asdict(s).items() if k not in ("workers", "launcher", "pool", "strategies")}
    key_path = workdir / "run_settings.json"
    if key_path.exists() and json.loads(key_path.read_text()) != json.loads(json.dumps(run_key)):
        if (workdir / "runs").exists():
            shutil.rmtree(workdir / "runs")  # other training settings: cached rounds are void
    key_path.write_text(json.dumps(run_key, indent=2))

    say = Log()
    say(f"al_efficiency (pool: {s.pool}): {s.seeds} seeds x {len(s.strategies)} strategies x {s.rounds} rounds of k={s.k}, "
        f"{s.members} members, {s.steps_initial}/{s.steps_continue} steps, {s.workers} workers; workdir {workdir}")
    t0 = time.time()
    stage0 = build_stage0(s, workdir, say)
    t_stage0 = time.time() - t0
    if args.stage0_only:
        print(json.dumps({k: v for k, v in stage0.items() if k != "settings"}, indent=1))
        return stage0
    bench = Bench(s, workdir, say)
    records = bench.run()
    wall = time.time() - t0
    summary = summarize(records, s)
    payload = {
        "benchmark": "al_efficiency",
        "settings": {**dataclasses.asdict(s), "strategies": list(s.strategies), "loss": LOSS,
                     "structures": [n for n, _, _ in STRUCTURES], "cell": "(2, 2, 1), 16/15 atoms",
                     "labeler": "CHGNet (stand-in for DFT)", "training": "round 0 from scratch, later rounds "
                     "continue each member from its previous checkpoint (init_model)"},
        "stage0": stage0,
        "ours_window_trust_levels": {str(r["seed"]): [r["pool_force_width_quantiles"][f"q{round(q * 100)}"]
                                                      for q in s.dpgen_quantiles]
                                     for r in records if r["round"] == 0 and "pool_force_width_quantiles" in r
                                     and r["strategy"] == "ours"},
        "dpgen_trust_window": {str(r["seed"]): [r["dpgen_trust_lo"], r["dpgen_trust_hi"]]
                               for r in records if r["round"] == 0 and "dpgen_trust_lo" in r},
        "summary": summary,
        "test_breakdown_last_round": getattr(bench, "final_errors", {}),
        "records": [{k: v for k, v in r.items() if k not in ("model_paths", "checkpoints")} for r in records],
        "wall_s_this_invocation": wall,
        "wall_s_stage0_this_invocation": t_stage0,
        "wall_s_stage0_when_built": stage0.get("wall_s"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    write_outputs(out_dir, payload, records, "al_efficiency" if s.pool == "all" else f"al_efficiency_{s.pool}_pool")
    print_summary(summary, say)
    for name, d in payload["test_breakdown_last_round"].items():
        say(f"  {name}: " + ", ".join(f"{k.split(' ', 1)[1]} {v['mean']:.3f}" for k, v in d.items()
                                      if k.startswith("force_rmse")) + " eV/A force RMSE by test group")
    say(f"done in {wall / 60:.1f} min; wrote {out_dir}/al_efficiency.{{json,csv,png}}")
    return payload


if __name__ == "__main__":
    main()
