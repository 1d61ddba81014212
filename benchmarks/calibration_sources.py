"""Offline lever for issue #20: which calibration frames the factors are fitted on, by where
the frames came from.

    python benchmarks/calibration_sources.py runs/calib-d19:delithiation [--out FILE.json]

For each WORKDIR:NAME (a campaign run and scored by ``benchmarks/calibration.py``, whose
test pairs are in ``WORKDIR/NAME-gN-pairs.npz``), sorts each generation's calibration frames
by origin, read from the campaign's state:

- ``md``: held-out audit frames drawn at random from the campaign's own MD explorations
  (a random sample of the frames the threshold and the confident share judge);
- ``minimum``: held-out rattled, unstrained copies of each composition's labeler-relaxed
  structure (``test.n_relaxed_per_structure``);
- ``built``: held-out rattled and strained copies of the built structure
  (``test.n_initial_per_structure``);
- ``oob``: out-of-bag training frames (initial copies and selected exploration frames).

It refits the conformal factors on subsets of them (forces and energies chosen separately)
and scores them on the saved test pairs; a subset with fewer pairs than the level needs is
reported as such; ``calibration_weighting = md`` is the product's option fitted by the
product's ``fit_calibration`` (with ``calibration_min_frames`` = 10), its fallbacks to all
frames included. Prints the factors and coverages per generation and the count of
generation 1-2 cells inside / above / below 0.90-0.98; ``--out`` writes the same as JSON.
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibration_band_variants import campaign_context, count_cells, generations_with_pairs, over_runs  # noqa: E402
from calibration_thermal import scored  # noqa: E402

from remote_al.calibration import fit_calibration, min_pairs, weighted_conformal_scale  # noqa: E402

ORIGINS = ("md", "minimum", "built", "oob")
# (forces fitted on, energies fitted on)
VARIANTS = {
    "all (the product)": (ORIGINS, ORIGINS),
    "calibration_weighting = md": None,  # md only, each quantity on all frames where md frames are too few
    "held-out only": (("md", "minimum", "built"), ("md", "minimum", "built")),
    "md only": (("md",), ("md",)),
    "md + minimum": (("md", "minimum"), ("md", "minimum")),
    "forces md; energies all": (("md",), ORIGINS),
    "forces md; energies md + minimum": (("md",), ("md", "minimum")),
    "forces md + minimum; energies all": (("md", "minimum"), ORIGINS),
}


def origins(st):
    """A function from a held-out labeled frame to its origin (``md``, ``minimum`` or
    ``built``), matching the frame to its stored structure by positions and cell (a hash
    of rounded positions can differ after the labeler's round trip). The copies at the
    minimum are unstrained, so their cell is the labeler-relaxed structure's."""
    import json

    from remote_al.structures import from_extxyz

    relaxed = [a.cell.array for t in st.tasks(status="done", function="relax_label")
               for a in from_extxyz((json.loads(t["result"] or "null") or {}).get("relaxed_extxyz") or "")]
    stored = []
    for r in st.structures(split="test"):
        a = from_extxyz(r["extxyz"])[0]
        kind = "md" if r["origin"] == "md" else (
            "minimum" if any(np.allclose(a.cell.array, c, atol=1e-5) for c in relaxed) else "built")
        stored.append((a.get_chemical_formula(), a, kind))

    def kind_of(atoms) -> str:
        for formula, a, kind in stored:
            if (formula == atoms.get_chemical_formula() and np.allclose(a.cell.array, atoms.cell.array, atol=1e-4)
                    and np.allclose(a.positions, atoms.positions, atol=1e-3)):
                return kind
        raise LookupError(f"a held-out frame ({atoms.get_chemical_formula()}) matches no stored structure")

    return kind_of


def one(work: Path, name: str) -> dict:
    st, formula, _, _ = campaign_context(work, name)
    kind_of = origins(st)
    out = {"frames_by_origin": {}, "variants": {v: {} for v in VARIANTS},
           "cells_g1_2_inside_above_below": {v: [0, 0, 0] for v in VARIANTS}}
    print(f"== {work}:{name}")
    for g, rows, test, cal in generations_with_pairs(st, work, name, formula):
        kinds = np.array(["oob" if r["source"] == "oob:" else kind_of(r["atoms"]) for r in rows])
        nat = np.array([len(r["atoms"]) for r in rows])
        out["frames_by_origin"][str(g)] = {k: int(np.sum(kinds == k)) for k in ORIGINS}
        print(f"  g{g} frames by origin: {out['frames_by_origin'][str(g)]}")
        # the per-atom force factor each composition's test frames would need for 95 %
        need = {str(c): round(float(np.quantile(np.abs(test["ae"][test["acomp"] == c]) / test["aw"][test["acomp"] == c],
                                           0.95)), 3) for c in sorted(set(test["acomp"]))}
        out.setdefault("test_force_factor_needed", {})[str(g)] = need
        print(f"  g{g} force factor the test frames need (95th percentile of |e|/w): {need}")
        for v, on in VARIANTS.items():
            if on is None:  # the option as the product fits it, its fallbacks included
                md = (kinds == "md").astype(float)
                fit = fit_calibration(g, cal["aw"], cal["ae"], cal["ew"], cal["ee"], n_frames=len(rows), n_members=4,
                                      min_frames=10, frame_weights=md, atom_weights=np.repeat(md, nat),
                                      weighting="md")
                qf, qe = fit.force_scale, fit.energy_scale
                fm = md if "forces: unweighted" not in fit.note else np.ones(len(rows))
                em = md if "energies: unweighted" not in fit.note else np.ones(len(rows))
            else:
                fm, em = np.isin(kinds, on[0]).astype(float), np.isin(kinds, on[1]).astype(float)
                if em.sum() < min_pairs(0.95) or fm.sum() < 2:
                    out["variants"][v][str(g)] = {"note": f"too few frames: {int(fm.sum())} / {int(em.sum())}"}
                    print(f"  g{g} {v:34s} too few frames ({int(fm.sum())} / {int(em.sum())})")
                    continue
                qf = weighted_conformal_scale(cal["aw"], cal["ae"], np.repeat(fm, nat))
                qe = weighted_conformal_scale(cal["ew"], cal["ee"], em)
            s = scored(qf, qe, test)
            out["variants"][v][str(g)] = {"frames": [int(fm.sum()), int(em.sum())], "q_force": round(qf, 3),
                                          "q_energy": round(qe, 3), "coverage": s}
            if g >= 1:
                count_cells(out["cells_g1_2_inside_above_below"][v], s)
            print(f"  g{g} {v:34s} frames {int(fm.sum()):3d}/{int(em.sum()):3d}  factors {qf:.2f} / {qe:.2f}  "
                  f"all F {s['all']['forces']:.3f} E {s['all']['energies']:.3f}  "
                  + " ".join(f"{c}:{d['forces']:.3f}/{d['energies']:.3f}" for c, d in s.items() if c != "all"))
    for v, c in out["cells_g1_2_inside_above_below"].items():
        print(f"  generations 1-2, cells inside / above / below: {v:34s} {c}")
    return out


def main(argv=None) -> dict:
    return over_runs(one, __doc__, argv)


if __name__ == "__main__":
    main()
