"""Where the time of ensemble UQ goes on one CPU thread, and what each lever buys.

    python benchmarks/uq_levers.py [--models m0.pth m1.pth ...] [--frames 64] [--repeats 3]
                                   [--no-compress] [--no-profile]
                                   [--out benchmarks/results/uq_levers.json]

Same setting as ``benchmarks/uq_throughput.py`` (four members - two tiny models trained
on CHGNet labels, cached under ``--workdir``, each used twice - on rattled 32-atom
LiNiO2 cells, model loading included in every run, one thread), ``--frames`` frames.

1. Profile (``--no-profile`` skips it): one member, the parts of one ``DeepPot.eval``
   call of 1 frame and of 32 frames, in ms per frame, best of several; and the first
   calls after loading a model, with PyTorch's default (profiling) TorchScript
   executor and with the plain interpreter (``torch.jit.optimized_execution(False)``).
2. Levers, alternating ``--repeats`` times, best of each:

   - ``baseline_one_at_a_time``: ``dynamics.predict_ensemble_deeppot(batch_size=1)``, a plain
     per-frame ``DeepPot.eval`` loop (what an ASE calculator does): the reference.
   - ``baseline_batched``: the same with ``batch_size=64``.
   - ``plain_*``: both again inside ``torch.jit.optimized_execution(False)`` (lever c:
     no TorchScript warm-up), to separate batching from the warm-up.
   - ``fast_batched`` / ``fast_one_at_a_time``: ``remote_al.fast_uq.predict_ensemble``
     (plain interpreter, one vectorised neighbour list per chunk shared by the members,
     the model's ``forward_common_lower`` called directly: levers b and c).
   - ``compressed_*``: the same members after ``dp --pt compress`` (lever a; cached
     next to each model as ``model-compress.pth``; ``--no-compress`` skips them).

   Each result is compared with the reference of its own models (max abs difference of
   energies and forces); compression error is the compressed reference against the
   uncompressed one.

Run time on the 2-core development machine, one thread: ~5.5 min with the defaults
(64 frames, 3 repeats, profile) once the models exist, ~5 min for ``--frames 128
--repeats 2 --no-profile``; training the two tiny models adds ~1.5 min and compressing
them ~25 s, both once (``compression_s`` in the result is this run's compress step,
~0 when cached).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def compress(model: str) -> str | None:
    """``dp --pt compress`` of a frozen model, cached as model-compress.pth beside it."""
    from remote_al.torch_env import deepmd_env
    from remote_al.training import _dp_command

    src = Path(model).resolve()
    out = src.with_name(src.stem + "-compress.pth")
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return str(out)
    cmd = [*_dp_command(), "--pt", "compress", "-i", src.name, "-o", out.name]
    if (src.parent / "input.json").exists():  # trained with --skip-neighbor-stat: data gives min distance
        cmd += ["-t", "input.json"]
    env = deepmd_env("cpu")
    proc = subprocess.run(cmd, cwd=src.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        print(f"compression of {src} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return str(out)


def max_diff(a, b) -> float:
    (ea, fa), (eb, fb) = a, b
    return max(float(np.abs(ea - eb).max()), max(float(np.abs(x - y).max()) for x, y in zip(fa, fb)))


def best_time(fn, repeats: int) -> float:
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def profile_model(path: str, frames) -> dict:
    """ms per frame of the parts of one DeepPot.eval call (plain interpreter, warm)."""
    import torch
    from deepmd.infer import DeepPot

    from remote_al.fast_uq import neighbor_data

    out: dict = {}
    symbols = frames[0].get_chemical_symbols()
    coords = np.array([a.get_positions() for a in frames])
    cells = np.array([np.asarray(a.get_cell()) for a in frames])
    # first calls after loading: default (profiling) executor, then plain interpreter
    for label, ctx in (("default_executor", contextlib.nullcontext), ("plain_interpreter", lambda: torch.jit.optimized_execution(False))):
        with ctx():
            t0 = time.perf_counter()
            dp = DeepPot(path)
            t_load = time.perf_counter() - t0
            at = np.array([dp.get_type_map().index(s) for s in symbols])
            calls = []
            for i in range(5):
                t0 = time.perf_counter()
                dp.eval(coords[i : i + 1].reshape(1, -1), cells[i : i + 1].reshape(1, -1), at)
                calls.append(1000 * (time.perf_counter() - t0))
        out[f"first_calls_ms_{label}"] = calls
        out["model_load_s"] = t_load
    de = dp.deep_eval
    out["deeppot_nlist_builder"] = type(de._nlist_builder).__name__ if getattr(de, "_nlist_builder", None) else "native (inside the model)"
    inner = de.dp.model["Default"]
    am = inner.atomic_model
    rcut, sel = float(inner.get_rcut()), list(inner.get_sel())
    with torch.jit.optimized_execution(False):
        for nf, rounds in ((1, 20), (32, 4)):
            c = torch.tensor(coords[:nf])
            b = torch.tensor(cells[:nf])
            t = torch.tensor(np.tile(at, (nf, 1)), dtype=torch.long)
            try:
                from deepmd.pt_expt.utils.vesin_neighbor_list import VesinNeighborList

                nlist_name, build = "nlist_vesin", lambda: VesinNeighborList().build(c, t, b, rcut, sel)
                ec, ea, nl, mp = build()
            except ImportError:
                from deepmd.pt.utils.nlist import extend_input_and_build_neighbor_list

                nlist_name = "nlist_native"
                build = lambda: extend_input_and_build_neighbor_list(c, t, rcut, sel, mixed_types=False, box=b)
                ec, ea, mp, nl = build()
            fnl = inner.format_nlist(ec.view(nf, -1, 3), ea, nl, False)

            def desc():
                x = ec.view(nf, -1, 3).clone().requires_grad_(True)
                return x, am.descriptor(x, ea, fnl, mp)

            def fit():
                x, (d, *_rest) = desc()
                return x, am.fitting_net(d, ea[:, : len(symbols)])

            def grad():
                x, o = fit()
                return torch.autograd.grad([o["energy"].sum()], [x])

            parts = {
                "deeppot_eval": lambda: dp.eval(coords[:nf].reshape(nf, -1), cells[:nf].reshape(nf, -1), at),
                nlist_name: build,
                "nlist_fast_uq": lambda: neighbor_data(coords[:nf], cells[:nf], rcut),
                "forward_common_lower": lambda: inner.forward_common_lower(ec, ea, nl, mp),
                "format_nlist": lambda: inner.format_nlist(ec.view(nf, -1, 3), ea, nl, False),
                "descriptor_forward": desc,
                "descriptor_and_fitting_forward": fit,
                "descriptor_and_fitting_forward_and_force_backward": grad,
            }
            times: dict[str, list[float]] = {k: [] for k in parts}
            for fn in parts.values():
                fn()
                fn()
            for _ in range(rounds):  # interleaved, so that load on a shared machine hits all parts alike
                for k, fn in parts.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            r = {k: min(v) for k, v in times.items()}
            derived = {
                "fitting_forward": r["descriptor_and_fitting_forward"] - r["descriptor_forward"],
                "force_backward": r["descriptor_and_fitting_forward_and_force_backward"] - r["descriptor_and_fitting_forward"],
                "lower_rest (virial, output, masks)": r["forward_common_lower"]
                - r["descriptor_and_fitting_forward_and_force_backward"]
                - r["format_nlist"],
                "deeppot_python_overhead": r["deeppot_eval"] - r[nlist_name] - r["forward_common_lower"],
            }
            out[f"ms_per_frame_{nf}_frame_call"] = {
                "best": {k: round(1000 * v / nf, 3) for k, v in r.items()},
                "median": {k: round(1000 * float(np.median(v)) / nf, 3) for k, v in times.items()},
                "derived_from_best": {k: round(1000 * v / nf, 3) for k, v in derived.items()},
            }
    return out


def main(argv=None) -> dict:
    from uq_throughput import add_setting_args, setting, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setting_args(ap, frames=64)
    ap.add_argument("--no-compress", action="store_true", help="skip the compressed-model levers")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-part profile")
    ap.add_argument("--out", default="benchmarks/results/uq_levers.json")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch

    from remote_al import fast_uq
    from remote_al.torch_env import device_name as _device_name
    from remote_al.ensemble import predict_ensemble_deeppot as predict_ensemble
    from remote_al.structures import perturb

    models, members, base, frames = setting(args)
    cmembers = None
    if not args.no_compress:
        t0 = time.perf_counter()
        cmodels = [compress(m) for m in models]
        t_compress = time.perf_counter() - t0
        if all(cmodels):
            cmembers = (cmodels * 4)[:4]

    def plain(fn):
        def run():
            with torch.jit.optimized_execution(False):
                return fn()

        return run

    configs = {
        "baseline_one_at_a_time": lambda: predict_ensemble(members, frames, batch_size=1),
        "baseline_batched": lambda: predict_ensemble(members, frames, batch_size=64),
        "plain_one_at_a_time": plain(lambda: predict_ensemble(members, frames, batch_size=1)),
        "plain_batched": plain(lambda: predict_ensemble(members, frames, batch_size=64)),
        "fast_one_at_a_time": lambda: fast_uq.predict_ensemble(members, frames, batch_size=1),
        "fast_batched": lambda: fast_uq.predict_ensemble(members, frames, batch_size=64),
    }
    if cmembers:
        configs.update(
            {
                "compressed_baseline_one_at_a_time": lambda: predict_ensemble(cmembers, frames, batch_size=1),
                "compressed_plain_one_at_a_time": plain(lambda: predict_ensemble(cmembers, frames, batch_size=1)),
                "compressed_fast_batched": lambda: fast_uq.predict_ensemble(cmembers, frames, batch_size=64),
            }
        )

    predict_ensemble(members[:1], frames[:2])  # warm-up: torch, TorchScript, imports
    fast_uq.predict_ensemble(members[:1], frames[:2])
    profile = {}
    if not args.no_profile:
        prng = np.random.default_rng(2)
        pframes = [perturb(base, 0.08, 0.02, prng) for _ in range(32)]
        profile["model"] = profile_model(members[0], pframes)
        if cmembers:
            profile["compressed_model"] = profile_model(cmembers[0], pframes)

    runs: dict[str, list[float]] = {k: [] for k in configs}
    results: dict = {}
    for _ in range(args.repeats):  # interleaved: a shared machine drifts less between them
        for name, fn in configs.items():
            t0 = time.perf_counter()
            res = fn()
            runs[name].append(time.perf_counter() - t0)
            results.setdefault(name, res)
    best = {k: min(v) for k, v in runs.items()}
    n_eval = len(members) * len(frames)
    ref = results["baseline_one_at_a_time"]
    levers = {}
    for name in configs:
        own_ref = results["compressed_baseline_one_at_a_time"] if name.startswith("compressed") else ref
        levers[name] = {
            "best_s": best[name],
            "runs_s": runs[name],
            "ms_per_member_frame": 1000 * best[name] / n_eval,
            "speedup_vs_baseline_one_at_a_time": best["baseline_one_at_a_time"] / best[name],
            "max_abs_difference_vs_own_reference": max_diff(results[name], own_ref),
        }
    ratios = {
        "baseline: batched vs one at a time (as in uq_throughput)": best["baseline_one_at_a_time"] / best["baseline_batched"],
        "fast_uq batched vs baseline one at a time (the target)": best["baseline_one_at_a_time"] / best["fast_batched"],
        "plain interpreter: batched vs one at a time (batching alone, same settings)": best["plain_one_at_a_time"] / best["plain_batched"],
        "fast_uq batched vs plain one at a time (no warm-up in either)": best["plain_one_at_a_time"] / best["fast_batched"],
        "fast_uq: batched vs one at a time (same code)": best["fast_one_at_a_time"] / best["fast_batched"],
    }
    if cmembers:
        ratios.update(
            {
                "compressed: fast_uq batched vs baseline one at a time": best["compressed_baseline_one_at_a_time"] / best["compressed_fast_batched"],
                "compressed: fast_uq batched vs plain one at a time": best["compressed_plain_one_at_a_time"] / best["compressed_fast_batched"],
                "compressed fast_uq batched vs uncompressed baseline one at a time": best["baseline_one_at_a_time"] / best["compressed_fast_batched"],
            }
        )
    result = {
        "members": len(members),
        "distinct_models": len(set(members)),
        "frames": len(frames),
        "atoms_per_frame": len(base),
        "repeats": args.repeats,
        "levers": levers,
        "ratios": ratios,
        "profile": profile,
        "device": _device_name(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if cmembers:
        result["compression_max_abs_difference"] = max_diff(results["compressed_baseline_one_at_a_time"], ref)
        result["compression_s"] = t_compress
    result["script_wall_s"] = time.perf_counter() - t_start
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
