"""Offline lever for issue #20: what the near-equilibrium held-out frames look like.

    python benchmarks/calibration_heldout.py WORKDIR [NAME] [--seeds 123 7 99]   # e.g. runs/calib-a9 linio2
    python benchmarks/calibration_heldout.py runs/calib-delith2 delithiation --n-per 8 --add

The demo's held-out initial frames (``test.n_initial_per_structure``) are rattled *and
strained* copies of the relaxed structures, and they are about half of each generation's
calibration frames, while the frames the bound is used on (the labeler's MD at the
campaign's conditions, NVT in the demo) have no strain. This replaces them, generation by
generation, with the same number of copies drawn with other (rattle, strain), labels them
with CHGNet, evaluates them with that generation's members through the project's own
``evaluate_uncertainty``, refits the conformal factors with the campaign's other
calibration pairs (explored held-out and out-of-bag frames, unchanged) and scores them on
the independent test set that ``benchmarks/calibration.py`` saved
(``WORKDIR/NAME-gN-pairs.npz``). ``--n-per N`` draws N copies per structure instead of as many
as the campaign held out, and ``--add`` adds them to the campaign's held-out initial frames
instead of replacing them (more calibration pairs near the minimum). Prints JSON per seed of
the frame draws; the numbers of 2026-12-06 are ``attempts["12_offline_unstrained_held_out"]`` in
benchmarks/results/calibration.json.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from ase.calculators.singlepoint import SinglePointCalculator
from calibration import pairs_of

from driver.campaign import open_campaign_state
from remote_al.calibration import conformal_scale
from remote_al.functions import evaluate_uncertainty
from remote_al.labelers import get_labeler
from remote_al.structures import from_extxyz, initial_perturbations, to_extxyz

VARIANTS = {"campaign (rattle 0.08, strain 0.03)": None, "rattle 0.08, strain 0": (0.08, 0.0),
            "rattle 0.05, strain 0": (0.05, 0.0), "rattle 0.08, strain 0.01": (0.08, 0.01)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("name", nargs="?", default="linio2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[123, 7, 99])
    ap.add_argument("--n-per", type=int, help="frames per structure (default: as many as the campaign held out)")
    ap.add_argument("--add", action="store_true",
                    help="add the new frames to the campaign's held-out initial frames instead of replacing them")
    a = ap.parse_args()
    work = Path(a.workdir)
    st = open_campaign_state(work / a.name)
    init_ids = {r[0] for r in st.db.execute("SELECT id FROM structures WHERE origin='initial' AND split='test'")}
    relaxed = {t["key"].split(":", 1)[1]: from_extxyz(json.loads(t["result"])["relaxed_extxyz"])[0]
               for t in st.tasks(function="relax_label")}
    n_per = a.n_per or len(init_ids) // max(1, len(relaxed))  # held-out initial frames per structure
    labeler = get_labeler("chgnet", {})
    gens = sorted({m["generation"] for m in st.models()} - {0})
    results = {}
    for seed in a.seeds:
        made = {}
        for name, v in VARIANTS.items():
            if v is None:
                continue
            rng, frames = np.random.default_rng(seed), []
            for _, base in sorted(relaxed.items()):
                base = base.copy()
                base.calc = None
                frames += initial_perturbations(base, n_per, v[0], v[1], rng)
            labels = labeler.label(frames, list(range(len(frames))), Path(tempfile.mkdtemp()))
            for f, lab in zip(frames, labels):
                f.calc = SinglePointCalculator(f, energy=lab.energy, forces=np.array(lab.forces))
            made[name] = frames
        for g in gens:
            ev = st.task(f"eval:g{g}")
            req, res = json.loads(ev["request"]), json.loads(ev["result"])
            is_init = [f.info["structure_id"] in init_ids for f in from_extxyz(req["frames_extxyz"])]
            explored, initial = pairs_of(res, [not x for x in is_init]), pairs_of(res, is_init)
            oob = st.task(f"oob:g{g}")
            others = [explored] + ([pairs_of(json.loads(oob["result"]))] if oob is not None and oob["result"] else [])
            z = np.load(work / f"{a.name}-g{g}-pairs.npz", allow_pickle=True)
            test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
            for name, v in VARIANTS.items():
                part = initial if v is None else pairs_of(evaluate_uncertainty(
                    {**req, "frames_extxyz": to_extxyz(made[name]), "workdir": tempfile.mkdtemp(), "oob_members": None}))
                others_here = [initial, *others] if a.add and v is not None else others
                cal = {k: np.concatenate([p[k] for p in [part, *others_here]]) for k in part}
                qf, qe = conformal_scale(cal["aw"], cal["ae"], 0.95), conformal_scale(cal["ew"], cal["ee"], 0.95)
                row = {"q_force": round(qf, 3), "q_energy": round(qe, 3), "calibration_frames": len(cal["ew"])}
                for c in sorted(set(test["acomp"])) + ["all"]:
                    am = test["acomp"] == c if c != "all" else np.ones(len(test["aw"]), bool)
                    em = test["ecomp"] == c if c != "all" else np.ones(len(test["ew"]), bool)
                    row[c] = {"forces": round(float(np.mean(np.abs(test["ae"][am]) <= qf * test["aw"][am])), 3),
                              "energies": round(float(np.mean(np.abs(test["ee"][em]) <= qe * test["ew"][em])), 3)}
                results.setdefault(str(seed), {}).setdefault(str(g), {})[name] = row
        print(json.dumps({str(seed): results[str(seed)]}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
