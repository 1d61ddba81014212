"""The volume curve of every generation of a finished campaign, not only the final one.

    python benchmarks/volume_by_generation.py CAMPAIGN_DIR [--generations 0 1 2] [--jobs 2]
                                              [--out CAMPAIGN_DIR/volume_by_generation.json]

The campaign's volume phase relaxes every structure on the curve with each member of the
final ensemble. This relaxes them in the same way (``remote_al.functions.relax_structure``,
the built structure, ``[volume]``'s ``fmax`` and ``max_steps``) with the members of
earlier generations too, and compares each with the labeler's relaxations the campaign
already holds (tasks ``relax-label:<name>``), so one can see what each round of labels did
to the curve. Prints and writes the member-mean relative volume difference per structure
and generation, and each member's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _model_path(campaign: Path, stored: str) -> str:
    """A model's path under this campaign directory: the state stores absolute paths, so a
    campaign directory that was moved or copied is read from where it is now."""
    q = Path(stored)
    if campaign.resolve() in q.parents:
        return str(q)
    parts = q.parts
    k = len(parts) - 1 - parts[::-1].index("work")
    return str(campaign / Path(*parts[k:]))


def main(argv=None) -> int:
    from driver.config import parse_config
    from driver.campaign import open_campaign_state
    from driver.preflight import build_structure
    from driver.volume import volume_specs
    from remote_al.functions import relax_structure
    from remote_al.structures import to_extxyz

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("campaign")
    p.add_argument("--generations", type=int, nargs="+")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args(argv)

    state = open_campaign_state(a.campaign)
    cfg = parse_config(json.loads(state.get_meta("config_json")), base_dir=Path(a.campaign))
    gens = a.generations if a.generations is not None else sorted({m["generation"] for m in state.models()})
    specs = volume_specs(cfg)
    ref = {}
    for spec in specs:
        row = state.task(f"relax-label:{spec.name}")
        if row is not None and row["status"] == "done":
            ref[spec.name] = json.loads(row["result"])["volumes_A3"][0] / int(np.prod(spec.supercell))
    if not ref:
        raise SystemExit(f"{a.campaign}: no labeler relaxations to compare with (tasks relax-label:*)")
    work = Path(a.campaign) / "work" / "volume-by-generation"
    jobs = []
    for g in gens:
        for spec in specs:
            if spec.name not in ref:
                continue
            for k, m in enumerate(state.models(g)):  # one member per task: every core busy
                jobs.append((g, spec, k, dict(
                    task_key=f"relax:g{g}:{spec.name}:m{k}", workdir=str(work / f"g{g}" / spec.name),
                    structure_extxyz=to_extxyz(build_structure(spec)), model_paths=(_model_path(Path(a.campaign), m["path"]),),
                    fmax=cfg.volume.fmax, max_steps=cfg.volume.max_steps, device="cpu")))
    print(f"{len(jobs)} relaxations: generations {gens}, {len(ref)} structures with a labeler value", flush=True)
    with ProcessPoolExecutor(a.jobs) as pool:
        res = list(pool.map(relax_structure, [j[3] for j in jobs]))
    out: dict = {"campaign": str(a.campaign), "labeler_volume_fu": ref, "generations": {}}
    for (g, spec, k, _), r in zip(jobs, res):
        v = r["volumes_A3"][0] / int(np.prod(spec.supercell))
        row = out["generations"].setdefault(str(g), {}).setdefault(spec.name, {"members_diff": []})
        row["members_diff"].append(v / ref[spec.name] - 1.0)
    for g, rows in out["generations"].items():
        for name, row in rows.items():
            row["mean_diff"] = float(np.mean(row["members_diff"]))
        print(f"generation {g}: " + "  ".join(
            f"{n} {100 * r['mean_diff']:+.1f}% [{' '.join(f'{100 * x:+.1f}' for x in r['members_diff'])}]"
            for n, r in rows.items()))
    path = Path(a.out) if a.out else Path(a.campaign) / "volume_by_generation.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
