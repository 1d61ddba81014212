"""Offline lever for issue #20: pool the previous generation's calibration pairs into a fit.

    python benchmarks/calibration_pooling.py runs/calib-a18:linio2 runs/calib-delith5:delithiation

For each WORKDIR:NAME (a campaign run and scored by ``benchmarks/calibration.py``), fits
generation g's factors on its own calibration pairs, and on them together with generation
g-1's (each pair with the width and error of its own ensemble: scores |e|/w pooled, twice
the frames), with all frames and with the thermal band (labeler minima), and scores both
on generation g's saved test pairs. If the factor's spread between runs came from too few
frames, pooling would move the coverage toward 0.95; the numbers are in
docs/uncertainty.md (attempt 19, "Pooling generations"). Two refits of the pooled band
(attempt 21): a factor per composition (where it has ``MIN_FRAMES`` frames in the band)
and held-out frames only; and, per quartile of the test frames' force widths, the 95th
percentile of |e|/w on the test and on the pooled band (``width_quartiles``).
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibration_band_variants import campaign_context, count_cells, generations_with_pairs, over_runs, window  # noqa: E402
from calibration_thermal import scored  # noqa: E402

from driver.calibrate import excess_energies  # noqa: E402
from remote_al.calibration import weighted_conformal_scale  # noqa: E402

MIN_FRAMES = 10  # band frames a composition needs for a factor of its own
# (weights, generations pooled, variant)
FITS = [(w, p, "all") for w in ("all frames", "band") for p in ("generation g", "g and g-1")] + [
    ("band", "g and g-1", "per composition"), ("band", "g and g-1", "held-out frames only")]


def _fit(cat, nat, fw, comps, variant, comp):
    """Force and energy factors of one pooled fit: over all frames, or (``"per composition"``)
    over the frames of ``comp`` where at least ``MIN_FRAMES`` of them are in the band, else
    over all."""
    qf = weighted_conformal_scale(cat["aw"], cat["ae"], np.repeat(fw, nat))
    qe = weighted_conformal_scale(cat["ew"], cat["ee"], fw)
    mine = comps == comp
    if variant == "per composition" and fw[mine].sum() >= MIN_FRAMES:
        try:
            qf = weighted_conformal_scale(cat["aw"], cat["ae"], np.repeat(fw * mine, nat))
            qe = weighted_conformal_scale(cat["ew"], cat["ee"], fw * mine)
        except ValueError:  # too few pairs of this composition for the level: the pooled factors
            pass
    return qf, qe


def width_quartiles(cat, nat, fw, test) -> list[dict]:
    """Per quartile of the test frames' per-atom force widths: the 95th percentile of |e|/w
    of the test atoms and of the band's calibration atoms with widths in that quartile."""
    edges = np.quantile(test["aw"], [0, 0.25, 0.5, 0.75, 1.0])
    band = np.repeat(fw, nat) > 0
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        t = (test["aw"] >= lo) & (test["aw"] <= hi)
        c = (cat["aw"] >= lo) & (cat["aw"] <= hi) & band
        q = [float(np.quantile(np.abs(e[m]) / w[m], 0.95)) if m.sum() >= 20 else None
             for e, w, m in ((test["ae"], test["aw"], t), (cat["ae"], cat["aw"], c))]
        out.append({"width": [round(float(lo), 3), round(float(hi), 3)], "test_q95": q[0], "band_q95": q[1],
                    "band_atoms": int(c.sum())})
    return out


def one(work: Path, name: str) -> dict:
    st, formula, temps, minima = campaign_context(work, name)
    data = {}  # per generation: calibration rows, atoms per frame, band weights, test pairs
    for g, rows, test, cal in generations_with_pairs(st, work, name, formula):
        nat = np.array([len(r["atoms"]) for r in rows])
        data[g] = rows, nat, window(excess_energies([r["atoms"] for r in rows], minima), nat, temps), test
    gens = sorted(data)
    out = {}
    print(f"== {work}:{name}")
    for weights, pool, variant in FITS:
        cells, res = [0, 0, 0], {}
        for g in [g for g in gens if g >= 1]:
            use = [g] if pool == "generation g" else [g, g - 1]
            rows = [r for u in use for r in data[u][0]]
            nat = np.concatenate([data[u][1] for u in use])
            fw = np.concatenate([data[u][2] if weights == "band" else np.ones(len(data[u][1])) for u in use])
            if variant == "held-out frames only":
                fw = fw * np.array([r["source"] == "eval" for r in rows])
            cat = {k: np.concatenate([r["p"][k] for r in rows]) for k in ("aw", "ae", "ew", "ee")}
            comps = np.array([r["comp"] for r in rows])
            test = data[g][3]
            s = {}
            for comp in sorted(set(test["acomp"])) + ["all"]:
                qf, qe = _fit(cat, nat, fw, comps, variant, comp)
                s[comp] = scored(qf, qe, test)[comp]
            res[str(g)] = {"frames": int(fw.sum()), "coverage": s}
            if variant == "all":
                qf, qe = _fit(cat, nat, fw, comps, variant, "all")
                res[str(g)].update(q_force=round(qf, 3), q_energy=round(qe, 3))
                if weights == "band" and pool != "generation g":
                    res[str(g)]["width_quartiles"] = width_quartiles(cat, nat, fw, test)
            count_cells(cells, s)
            print(f"  {weights:10s} {pool:12s} {variant:20s} g{g}: frames {int(fw.sum()):4d}, "
                  f"all F {s['all']['forces']:.3f} E {s['all']['energies']:.3f}")
        print(f"  {weights:10s} {pool:12s} {variant:20s} cells of generations 1-2 inside / above / below {cells}")
        key = f"{weights}, {pool}" + ("" if variant == "all" else f", {variant}")
        out[key] = {"generations": res, "cells_g1_2_inside_above_below": cells}
    return out


def main(argv=None) -> dict:
    return over_runs(one, __doc__, argv)


if __name__ == "__main__":
    main()
