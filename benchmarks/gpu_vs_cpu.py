"""The GPU-side functions (training, MD, ensemble UQ) on CUDA against the CPU, same inputs.

    python benchmarks/gpu_vs_cpu.py DATA_DIR OUT_JSON [--steps 1000] [--md-steps 500]

DATA_DIR holds deepmd/npy systems (``*/type.raw``) and ``frames.extxyz`` (frames to
evaluate). Each stage runs once with ``device="cpu"`` (one thread, as remote-al runs
members) and once with ``device="cuda"`` when a GPU is visible; walls are written to
OUT_JSON. MD and UQ use the models trained in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _child(stage: str, device: str, args) -> dict:
    """Run one stage in a fresh process, so CUDA_VISIBLE_DEVICES takes effect."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, __file__, "--stage", stage, "--device", device, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage(name: str, device: str, data: Path, work: Path, steps: int, md_steps: int) -> dict:
    import glob

    import numpy as np

    from remote_al.dynamics import run_md
    from remote_al.ensemble import predict_ensemble
    from remote_al.records import MDRequest, TrainRequest
    from remote_al.structures import cathode_cell, from_extxyz, to_extxyz
    from remote_al.training import train_member

    systems = tuple(sorted(str(Path(p).parent) for p in glob.glob(str(data / "*" / "type.raw"))))
    type_map = tuple((Path(systems[0]) / "type_map.raw").read_text().split())
    if name == "train":
        t0 = time.time()
        r = train_member(TrainRequest(f"bench-{device}", str(work / f"train-{device}"), systems, type_map,
                                      member=0, seed=5, numb_steps=steps, device=device))
        log = (Path(r.model_path).parent / "train.log").read_text()
        import re

        walls = re.findall(r"Batch +(\d+): total wall time = ([\d.]+) s", log)
        train_s = sum(float(w) for _, w in walls)
        return {"wall_s": time.time() - t0, "train_loop_s": train_s, "steps": steps,
                "rmse_f_trn": r.lcurve_last.get("rmse_f_trn"), "model": r.model_path, "device_used": r.device}
    models = sorted(str(p) for p in work.glob("train-*/model.pth"))
    if name == "md":
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from deepmd.calculator import DP

        out = {}
        for label, cell in (("16_atoms", (2, 2, 1)), ("432_atoms", (6, 6, 3))):
            atoms = cathode_cell(1.0, supercell=cell)
            t0 = time.time()
            atoms.calc = DP(model=models[0])
            atoms.get_forces()  # first call: model load, CUDA context, compilation
            setup = time.time() - t0
            MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
            dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=300.0, friction=0.02 / units.fs,
                           rng=np.random.default_rng(1))
            t0 = time.time()
            dyn.run(md_steps)
            run = time.time() - t0
            out[label] = {"setup_s": setup, "run_s": run, "steps": md_steps, "steps_per_s": md_steps / run}
        return out
    if name == "uq":
        from deepmd.infer import DeepPot

        frames = from_extxyz((data / "frames.extxyz").read_text())
        frames = (frames * (1 + 200 // max(1, len(frames))))[:200]
        t0 = time.time()
        dps = [DeepPot(p) for p in (models * 4)[:4]]
        load = time.time() - t0
        predict_ensemble(dps, frames[:8])  # warm-up
        t0 = time.time()
        predict_ensemble(dps, frames, batch_size=64)
        batched = time.time() - t0
        t0 = time.time()
        predict_ensemble(dps, frames[:50], batch_size=1)
        single = (time.time() - t0) * len(frames) / 50
        return {"frames": len(frames), "members": 4, "natoms": len(frames[0]), "load_s": load,
                "batched_s": batched, "one_at_a_time_s_extrapolated": single,
                "frames_per_s_batched": len(frames) / batched, "frames_per_s_single": len(frames) / single}
    raise ValueError(name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", nargs="?")
    p.add_argument("out", nargs="?")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--md-steps", type=int, default=500)
    p.add_argument("--work", default="/tmp/remote-al-gpu-bench")
    p.add_argument("--stage")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.stage:
        res = stage(a.stage, a.device, Path(a.data), Path(a.work), a.steps, a.md_steps)
        print(json.dumps(res))
        return
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    fwd = [a.data, a.out, "--steps", str(a.steps), "--md-steps", str(a.md_steps), "--work", a.work]
    results = {"machine": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "stages": {}}
    for st in ("train", "md", "uq"):
        for dev in devices:
            t0 = time.time()
            results["stages"][f"{st}/{dev}"] = _child(st, dev, fwd)
            print(f"{st}/{dev}: {time.time() - t0:.1f} s", flush=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
