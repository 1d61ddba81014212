"""What decides whether the ensemble's relaxed volume matches the labeler's: a lever study.

    python benchmarks/volume_levers.py [--config examples/delithiation.toml]
                                       [--levers baseline long both ...] [--workdir DIR]
                                       [--out benchmarks/results/volume_levers.json]

The volume-change curve (docs/composition.md) is each member of the final ensemble
relaxing positions and cell of every structure; the labeler relaxes a few as the check.
This study isolates the round-0 data and the training from the rest of the loop: for the
structures of ``--config``, it labels the initial frames with the campaign's labeler
(CHGNet here), relaxes every structure with the labeler, and then for each lever trains
an ensemble (``remote_al.functions.train_member``, the campaign's own registered
function) and relaxes every structure with every member
(``remote_al.functions.relax_structure``, the volume phase's). Reported per lever and
structure: each member's and the member mean's relative volume difference from the
labeler, a and c.

Levers (``--levers``; all by default):

- ``baseline``: the campaign file's round-0 data and training (frames rattled and strained
  around the built structure, ``numb_steps``).
- ``long``: the same data, ``--long-steps`` training steps.
- ``relaxed``: frames around the labeler's relaxed structure instead, long training.
- ``both``: frames around the built and around the relaxed structure (twice the labels),
  long training. The campaign has no such option: ``[initial] relax`` takes one centre.

Each lever's members relax from the built structure (``start = built``); levers with
frames around the relaxed structure also relax from the labeler's relaxed structure
(``start = relaxed``), which tests the local minimum near the labeler's.

Labels, labeler relaxations and trained members are cached under ``--workdir``, so a rerun
only redoes what is missing. Members train in parallel processes (``--jobs``, default 2),
one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEVERS = ("baseline", "long", "relaxed", "both")


def _label(frames, labeler_kind, settings, workdir: Path):
    """The frames the labeler labeled (``remote_al.functions.label_structures``), read back
    from its ``labeled.extxyz`` with energy, forces and stress; failures are said and dropped."""
    from ase.io import read

    from remote_al.functions import label_structures
    from remote_al.structures import to_extxyz

    res = label_structures(dict(task_key="label:round0", workdir=str(workdir), labeler=labeler_kind,
                                structure_ids=tuple(range(len(frames))), structures_extxyz=to_extxyz(frames),
                                settings=settings))
    for lab in res["labels"]:
        if lab["status"] != "ok":
            print(f"  label {lab['structure_id']} {lab['status']}: {lab['reason']}", flush=True)
    return [a for a in read(res["output_path"], index=":") if a.info.get("label_status") == "ok"]


def _cached_frames(path: Path, make):
    from ase.io import read, write

    if path.exists():
        return read(path, index=":")
    frames = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return frames


def _train(args):
    """``remote_al.functions.train_member``, skipped when the member's model is cached."""
    from remote_al.functions import train_member

    model = Path(args["workdir"]) / "model.pth"
    return str(model) if model.exists() else train_member(args)["model_path"]


def main(argv=None) -> int:
    from driver.config import load_config
    from driver.preflight import build_structure
    from remote_al.deepmd_data import parse_lcurve, write_systems
    from remote_al.functions import relax_structure
    from remote_al.structures import check_structure, from_extxyz, initial_perturbations, to_extxyz

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "delithiation.toml"))
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    p.add_argument("--long-steps", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/remote-al-volume-levers")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "volume_levers.json"))
    a = p.parse_args(argv)

    cfg = load_config(a.config)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    specs = [s for s in cfg.structures if s.generator == "layered" and s.ordering == 0]
    built = {s.name: build_structure(s) for s in specs}
    n_fu = {s.name: int(np.prod(s.supercell)) for s in specs}
    lab_kind, lab_set = cfg.labeler.kind, dict(cfg.labeler.settings)
    t_start = time.time()

    # labeler relaxations (the reference and the centre of the "relaxed" frames)
    print("labeler relaxations ...", flush=True)
    relaxed, ref = {}, {}
    with ProcessPoolExecutor(a.jobs) as pool:
        futs = {}
        for name, atoms in built.items():
            cache = work / "labeler-relax" / f"{name}.json"
            if cache.exists():
                ref[name] = json.loads(cache.read_text())
                continue
            req = dict(task_key=f"relax-label:{name}", workdir=str(work / "labeler-relax" / name),
                       structure_extxyz=to_extxyz(atoms), labeler=lab_kind, labeler_settings=lab_set,
                       fmax=cfg.volume.fmax, max_steps=cfg.volume.max_steps)
            futs[name] = pool.submit(relax_structure, req)
        for name, f in futs.items():
            ref[name] = f.result()
            (work / "labeler-relax" / f"{name}.json").write_text(json.dumps(ref[name]))
    for name in built:
        relaxed[name] = from_extxyz(ref[name]["relaxed_extxyz"])[0]
        relaxed[name].calc = None
        print(f"  {name}: V/f.u. {ref[name]['volumes_A3'][0] / n_fu[name]:.3f}, "
              f"{ref[name]['steps'][0]} steps, converged {ref[name]['converged'][0]}", flush=True)

    # round-0 frames, labeled
    ini = cfg.initial
    data = {}
    for centre, starts in (("built", built), ("relaxed", relaxed)):
        rng = np.random.default_rng(cfg.campaign.seed)
        frames = []
        for name, atoms in starts.items():  # the campaign's round-0 recipe and filter
            frames += [f for f in initial_perturbations(atoms, ini.n_per_structure, ini.rattle_A, ini.strain, rng)
                       if check_structure(f, min_dist_A=cfg.selection.min_distance_A).ok]
        t0 = time.time()
        data[centre] = _cached_frames(work / "frames" / f"{centre}.extxyz",
                                      lambda: _label(frames, lab_kind, lab_set, work / "label"))
        print(f"{len(data[centre])} labeled frames around the {centre} structures ({time.time() - t0:.0f} s)", flush=True)

    lever_setup = {
        "baseline": (["built"], cfg.training.numb_steps),
        "long": (["built"], a.long_steps),
        "relaxed": (["relaxed"], a.long_steps),
        "both": (["built", "relaxed"], a.long_steps),
    }
    results = {"config": str(a.config), "labeler": lab_kind, "machine": platform.node(),
               "ensemble_size": cfg.training.ensemble_size, "loss": dict(cfg.training.deepmd.get("loss", {})),
               "labeler_volume_fu": {n: ref[n]["volumes_A3"][0] / n_fu[n] for n in built},
               "levers": {}}
    out = Path(a.out)
    if out.exists():
        old = json.loads(out.read_text())
        results["levers"].update({k: v for k, v in old.get("levers", {}).items() if k not in a.levers})
    from driver.volume import _lattice

    for lever in a.levers:
        centres, steps = lever_setup[lever]
        ldir = work / lever
        frames = [f for c in centres for f in data[c]]
        systems = write_systems(frames, ldir / "data", cfg.campaign.type_map) if not (ldir / "data").exists() \
            else sorted(str(d) for d in (ldir / "data").iterdir())
        t0 = time.time()
        reqs = [dict(task_key=f"train:{lever}:m{m}", workdir=str(ldir / f"m{m}"), systems=tuple(systems),
                     type_map=tuple(cfg.campaign.type_map), member=m, seed=cfg.campaign.seed * 1000 + 17 * m,
                     subset_fraction=cfg.training.subset_fraction, numb_steps=steps,
                     deepmd=dict(cfg.training.deepmd), device="cpu")
                for m in range(cfg.training.ensemble_size)]
        print(f"[{lever}] training {len(reqs)} members, {steps} steps, {len(frames)} frames ...", flush=True)
        with ProcessPoolExecutor(a.jobs) as pool:
            models = list(pool.map(_train, reqs))
        train_s = time.time() - t0
        starts = {"built": built} | ({"relaxed": relaxed} if "relaxed" in centres else {})
        t0 = time.time()
        jobs = []
        for start, structs in starts.items():
            for name, atoms in structs.items():
                for m, model in enumerate(models):  # one member per task: both cores busy
                    jobs.append((start, name, m, dict(
                        task_key=f"relax:{lever}:{start}:{name}:m{m}", workdir=str(ldir / "relax" / start / name),
                        structure_extxyz=to_extxyz(atoms), model_paths=(model,), fmax=cfg.volume.fmax,
                        max_steps=cfg.volume.max_steps, device="cpu")))
        with ProcessPoolExecutor(a.jobs) as pool:
            res = list(pool.map(relax_structure, [j[3] for j in jobs]))
        relax_s = time.time() - t0
        rows = {}
        for (start, name, m, _), r in zip(jobs, res):
            spec = next(s for s in specs if s.name == name)
            row = rows.setdefault(start, {}).setdefault(name, {"members_diff": [], "a": [], "c": [], "converged": []})
            v = r["volumes_A3"][0] / n_fu[name]
            row["members_diff"].append(v / results["labeler_volume_fu"][name] - 1.0)
            aa, cc = _lattice(r["cells"][0], spec.supercell)
            row["a"].append(aa)
            row["c"].append(cc)
            row["converged"].append(bool(r["converged"][0]))
        for start in rows:
            for name, row in rows[start].items():
                row["mean_diff"] = float(np.mean(row["members_diff"]))
        lcurves = []
        for m in models:  # each member's last validation errors (its left-out 10 %)
            lc = parse_lcurve(Path(m).parent / "lcurve.out")
            lcurves.append({k: float(v[-1]) for k, v in lc.items() if len(v)})
        results["levers"][lever] = {"frames": len(frames), "numb_steps": steps, "centres": centres,
                                    "train_s": train_s, "relax_s": relax_s, "lcurve_last": lcurves,
                                    "by_start": rows}
        for start in rows:
            diffs = " ".join(f"{n}:{100 * r['mean_diff']:+.1f}%" for n, r in rows[start].items())
            print(f"[{lever}] start={start}: mean diff {diffs} (train {train_s:.0f} s, relax {relax_s:.0f} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    results["total_s"] = time.time() - t_start
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
