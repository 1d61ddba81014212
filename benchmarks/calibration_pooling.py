"""Offline lever for issue #20: pool the previous generation's calibration pairs into a fit.

    python benchmarks/calibration_pooling.py runs/calib-a18:linio2 runs/calib-delith5:delithiation

For each WORKDIR:NAME (a campaign run and scored by ``benchmarks/calibration.py``), fits
generation g's factors on its own calibration pairs, and on them together with generation
g-1's (each pair with the width and error of its own ensemble: scores |e|/w pooled, twice
the frames), with all frames and with the thermal band (labeler minima), and scores both
on generation g's saved test pairs. If the factor's spread between runs came from too few
frames, pooling would move the coverage toward 0.95; the numbers are in
docs/uncertainty.md (attempt 19, "Pooling generations").
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


def one(work: Path, name: str) -> dict:
    st, formula, temps, minima = campaign_context(work, name)
    data = {}  # per generation: calibration pairs, atoms per frame, band weights, test pairs
    for g, rows, test, cal in generations_with_pairs(st, work, name, formula):
        nat = np.array([len(r["atoms"]) for r in rows])
        data[g] = cal, nat, window(excess_energies([r["atoms"] for r in rows], minima), nat, temps), test
    gens = sorted(data)
    out = {}
    print(f"== {work}:{name}")
    for weights in ("all frames", "band"):
        for pool in ("generation g", "g and g-1"):
            cells, rows = [0, 0, 0], {}
            for g in [g for g in gens if g >= 1]:
                use = [g] if pool == "generation g" else [g, g - 1]
                cat = {k: np.concatenate([data[u][0][k] for u in use]) for k in ("aw", "ae", "ew", "ee")}
                nat = np.concatenate([data[u][1] for u in use])
                fw = np.concatenate([data[u][2] if weights == "band" else np.ones(len(data[u][1])) for u in use])
                qf = weighted_conformal_scale(cat["aw"], cat["ae"], np.repeat(fw, nat))
                qe = weighted_conformal_scale(cat["ew"], cat["ee"], fw)
                s = scored(qf, qe, data[g][3])
                rows[str(g)] = {"frames": int(fw.sum()), "q_force": round(qf, 3), "q_energy": round(qe, 3), "coverage": s}
                count_cells(cells, s)
                print(f"  {weights:10s} {pool:12s} g{g}: frames {int(fw.sum()):4d}, factors {qf:.2f} / {qe:.2f}, "
                      f"all F {s['all']['forces']:.3f} E {s['all']['energies']:.3f}")
            print(f"  {weights:10s} {pool:12s} cells of generations 1-2 inside / above / below {cells}")
            out[f"{weights}, {pool}"] = {"generations": rows, "cells_g1_2_inside_above_below": cells}
    return out


def main(argv=None) -> dict:
    return over_runs(one, __doc__, argv)


if __name__ == "__main__":
    main()
