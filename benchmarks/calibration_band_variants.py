"""Offline lever for issue #20: variants of the thermal band, on campaigns already scored.

    python benchmarks/calibration_band_variants.py runs/calib-a18:linio2 runs/calib-delith5:delithiation \
        [--out FILE.json]

For each WORKDIR:NAME (a campaign run and scored by ``benchmarks/calibration.py``, whose
test pairs are in ``WORKDIR/NAME-gN-pairs.npz``), refits the conformal factors on the
campaign's own calibration frames with a family of 0/1 energy windows and scores them on
the saved test pairs. Each frame's excess is its labeler energy per atom above its
composition's minimum (``driver.calibrate.labeler_minima``, else the lowest calibration
frame, as the product does); the window is on the harmonic canonical distribution of the
frame's cell at the campaign's temperatures (``remote_al.calibration.thermal_weights``):

- ``all``: every frame (the unweighted fit);
- ``band``: the central 99.8 % (the product's ``calibration_weighting = "thermal"``);
- ``lower cut only``: drop only the frames colder than the band;
- ``band, upper at 1.5 T``: the upper edge taken at 1.5 times each temperature, room for
  anharmonic MD (the Li-poor cells' labeler MD is hotter than harmonic);
- ``band, tails 1e-4`` / ``band, tails 0.01``: a wider / narrower band.

Prints per generation the frames inside, the factors and the coverage per composition,
then the count of generation 1-2 cells inside / above / below 0.90-0.98; ``--out`` writes
the same as JSON. The numbers are in docs/uncertainty.md (attempt 18, "Three variants of
the band").
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibration_thermal import frames_with_pairs, scored  # noqa: E402

from driver.calibrate import excess_energies, labeler_minima  # noqa: E402
from driver.campaign import open_campaign_state  # noqa: E402
from driver.config import md_temperatures, parse_config  # noqa: E402
from driver.preflight import build_structure  # noqa: E402
from remote_al.calibration import K_B_EV, weighted_conformal_scale  # noqa: E402

VARIANTS = {"all": dict(lo=0.0, hi=2.0), "band": {}, "lower cut only": dict(hi=2.0),
            "band, upper at 1.5 T": dict(t_hi=1.5), "band, tails 1e-4": dict(lo=1e-4, hi=1 - 1e-4),
            "band, tails 0.01": dict(lo=0.01, hi=0.99)}


def window(excess, natoms, temps, lo=0.001, hi=0.999, t_hi=1.0) -> np.ndarray:
    """1 where the frame's excess lies between the ``lo`` quantile of the harmonic
    distribution at ``temps`` and the ``hi`` quantile at ``t_hi`` times them, else 0."""
    from scipy import stats

    x, n = np.asarray(excess, float), np.asarray(natoms, float)
    cdf = np.mean([stats.gamma.cdf(x, 1.5 * n, scale=K_B_EV * t / n) for t in temps], axis=0)
    cdf_hi = np.mean([stats.gamma.cdf(x, 1.5 * n, scale=K_B_EV * t * t_hi / n) for t in temps], axis=0)
    return ((cdf >= lo) & (cdf_hi <= hi)).astype(float)


def campaign_context(work: Path, name: str):
    """A scored campaign's state, its formula -> structure name map, its MD temperatures (as
    ``driver.config.md_temperatures``) and the labeler minima."""
    st = open_campaign_state(work / name)
    cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=work / name)
    formula = {build_structure(s).get_chemical_formula(): s.name for s in cfg.structures}
    return st, formula, md_temperatures(cfg), labeler_minima(st)


def generations_with_pairs(st, work: Path, name: str, formula):
    """Per generation scored by ``benchmarks/calibration.py`` (its ``NAME-gN-pairs.npz``):
    (g, its calibration frames as ``frames_with_pairs`` rows, the test pairs, the calibration
    pairs of all those frames together)."""
    for g in sorted({m["generation"] for m in st.models()}):
        npz = work / f"{name}-g{g}-pairs.npz"
        rows = frames_with_pairs(st, g, lambda a: formula.get(a.get_chemical_formula(), "other"))
        if not rows or not npz.exists():
            continue
        z = np.load(npz, allow_pickle=True)
        test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
        yield g, rows, test, {k: np.concatenate([r["p"][k] for r in rows]) for k in ("aw", "ae", "ew", "ee")}


def count_cells(cells: list, coverage: dict) -> None:
    """Add each composition's forces and energies coverage (``scored``) to ``cells``,
    [inside, above, below] the goal's 0.90-0.98."""
    for comp, d in coverage.items():
        for x in d.values() if comp != "all" else ():
            cells[0 if 0.9 <= x <= 0.98 else 1 if x > 0.98 else 2] += 1


def one(work: Path, name: str) -> dict:
    st, formula, temps, minima = campaign_context(work, name)
    out = {"temperatures_K": temps, "minima_eV_per_atom": {k: round(v, 4) for k, v in minima.items()},
           "variants": {v: {} for v in VARIANTS}, "cells_g1_2_inside_above_below": {v: [0, 0, 0] for v in VARIANTS}}
    print(f"== {work}:{name}, temperatures {temps} K")
    for g, rows, test, cal in generations_with_pairs(st, work, name, formula):
        frames = [r["atoms"] for r in rows]
        nat = [len(f) for f in frames]
        excess = excess_energies(frames, minima)
        for v, kw in VARIANTS.items():
            fw = window(excess, nat, temps, **kw)
            try:
                qf = weighted_conformal_scale(cal["aw"], cal["ae"], np.repeat(fw, nat))
                qe = weighted_conformal_scale(cal["ew"], cal["ee"], fw)
            except ValueError as exc:
                out["variants"][v][str(g)] = {"frames_inside": int(fw.sum()), "note": str(exc)}
                print(f"  g{g} {v:22s} {exc}")
                continue
            s = scored(qf, qe, test)
            out["variants"][v][str(g)] = {"frames_inside": int(fw.sum()), "q_force": round(qf, 3),
                                          "q_energy": round(qe, 3), "coverage": s}
            if g >= 1:
                count_cells(out["cells_g1_2_inside_above_below"][v], s)
            print(f"  g{g} {v:22s} frames {int(fw.sum()):3d}  factors {qf:.2f} / {qe:.2f}  all F {s['all']['forces']:.3f}"
                  f" E {s['all']['energies']:.3f}  " + " ".join(f"{c}:{d['forces']:.3f}/{d['energies']:.3f}"
                                                           for c, d in s.items() if c != "all"))
    for v, c in out["cells_g1_2_inside_above_below"].items():
        print(f"  generations 1-2, cells inside / above / below: {v:22s} {c}")
    return out


def over_runs(one, doc: str, argv=None) -> dict:
    """The command line of the offline calibration levers: ``one(workdir, name)`` for each
    WORKDIR:NAME given, the results printed by ``one`` and, with ``--out``, written as JSON."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="WORKDIR:NAME, e.g. runs/calib-a18:linio2")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    res = {spec: one(Path(spec.rpartition(":")[0]), spec.rpartition(":")[2]) for spec in a.runs}
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv=None) -> dict:
    return over_runs(one, __doc__, argv)


if __name__ == "__main__":
    main()
