"""Offline lever for issue #20: calibrate on the frames the campaign's MD can reach.

    python benchmarks/calibration_thermal.py WORKDIR [NAME]    # e.g. runs/calib-a18 linio2

The conformal factor is fitted on the campaign's held-out and out-of-bag frames. Attempts
9-12 showed that, for the same width, those frames have larger errors than the labeler's
MD at the campaign's conditions (where the bound is used and scored): strained and
rattled copies, and ensemble-driven exploration frames, lie further above the
composition's minimum than a thermal trajectory does. Every calibration frame carries
its labeler energy, so the campaign knows how far above the minimum each one is. This
keeps only the frames whose labeler energy per atom is within ``c k_B T_max`` of their
composition's minimum (``T_max``: the campaign's highest exploration temperature; the
minimum: the labeler's relaxed structure where the campaign relaxed, else the lowest
labeled frame of that composition), refits the conformal factors on them and scores
them on the independent test set that ``benchmarks/calibration.py`` saved
(``WORKDIR/NAME-gN-pairs.npz``). The harmonic mean excess at temperature T is
``3/2 k_B T`` per atom, so ``c = 3`` is twice the thermal mean. For reference it also
prints where the test frames themselves lie against the same windows (this uses the test
set's energies only to describe it, never to fit).

Two weighted variants: weighted split-conformal under covariate shift (Tibshirani et al.
2019), the shift taken in the excess energy alone, through the product's
``remote_al.calibration.weighted_conformal_scale``. ``band`` is the one
``selection.calibration_weighting = "thermal"`` puts in the product
(``driver.calibrate.thermal_frame_weights``): weight 1 for the frames inside the central
99.8 % of the harmonic canonical distribution at the campaign's temperatures, else 0.
``weighted`` is smooth: each calibration frame is weighted by
p(x)/q(x), x its excess energy per atom: p the harmonic canonical distribution at the
campaign's temperatures (per atom, a Gamma of shape 3N/2 and mean 3/2 k_B T, averaged over
the temperatures), q a Gaussian kernel density of the calibration frames' own excess (per
composition). The factor is the weighted 95 % quantile of the scores with the weight of
one more frame at infinity; the effective number of frames (sum w)^2 / sum w^2 is printed
with it. Atoms carry their frame's weight.

Prints JSON; the numbers are in benchmarks/results/calibration.json
(``attempts["18_offline_thermal_window"]``).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibration import frame_pairs_of  # noqa: E402

from driver.campaign import open_campaign_state  # noqa: E402
from driver.config import parse_config  # noqa: E402
from driver.preflight import build_structure  # noqa: E402
from driver.calibrate import labeler_minima, thermal_frame_weights  # noqa: E402
from remote_al.calibration import (K_B_EV, conformal_scale, effective_pairs, thermal_weights,  # noqa: E402
                                   weighted_conformal_scale)
from remote_al.structures import from_extxyz  # noqa: E402

K_B = K_B_EV  # eV/K


def frames_with_pairs(st, g, comp_of):
    """Calibration frames of generation g: per frame its composition, labeler energy per
    atom and the (width, error) pairs."""
    rows = []
    for key in (f"eval:g{g}", f"oob:g{g}"):
        t = st.task(key)
        if t is None or t["result"] is None:
            continue
        req, res = json.loads(t["request"]), json.loads(t["result"])
        if res.get("energy_error") is None:
            continue
        for a, p in zip(from_extxyz(req["frames_extxyz"]), frame_pairs_of(res)):
            rows.append({"comp": comp_of(a), "e": a.get_potential_energy() / len(a), "p": p, "source": key[:4],
                         "atoms": a})
    return rows


def minima(st, comp_of, rows_by_gen, empirical_name):
    """Each composition's reference minimum (eV/atom): the relaxed structure's label
    (``driver.calibrate.labeler_minima``), else the lowest labeled calibration frame."""
    out = {empirical_name.get(k, k): v for k, v in labeler_minima(st).items()}
    for rows in rows_by_gen.values():
        for r in rows:
            if r["comp"] not in out:
                out[r["comp"]] = min(x["e"] for rs in rows_by_gen.values() for x in rs if x["comp"] == r["comp"])
    return out


def density_ratio(rows, emin, temps) -> np.ndarray:
    """The smooth variant's weights: per frame p(x) / q(x) (see the module doc), each
    composition keeping its share of the frames."""
    from scipy import stats

    w = np.zeros(len(rows))
    for comp in {r["comp"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["comp"] == comp]
        x = np.array([rows[i]["e"] - emin[comp] for i in idx])
        n = len(rows[idx[0]]["atoms"])
        p = np.mean([stats.gamma.pdf(x, 1.5 * n, scale=K_B * t / n) for t in temps], axis=0)
        q = stats.gaussian_kde(x)(x) if len(x) > 2 and np.std(x) > 0 else np.ones(len(x))
        r = p / np.maximum(q, 1e-300)
        w[idx] = r * len(idx) / max(r.sum(), 1e-300)
    return w / w.mean() if w.sum() > 0 else w


def scored(qf, qe, test) -> dict:
    """Coverage of the bounds q x width on the test pairs, per composition and over all."""
    out = {}
    for comp in sorted(set(test["acomp"])) + ["all"]:
        am = test["acomp"] == comp if comp != "all" else np.ones(len(test["aw"]), bool)
        em = test["ecomp"] == comp if comp != "all" else np.ones(len(test["ew"]), bool)
        out[comp] = {"forces": round(float(np.mean(np.abs(test["ae"][am]) <= qf * test["aw"][am])), 4),
                     "energies": round(float(np.mean(np.abs(test["ee"][em]) <= qe * test["ew"][em])), 4)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("name", nargs="?", default="linio2")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.5, 3.0, 4.5, 6.0, float("inf")])
    a = ap.parse_args()
    work = Path(a.workdir)
    cdir = work / a.name
    st = open_campaign_state(cdir)
    cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=cdir)
    formula = {build_structure(s).get_chemical_formula(): s.name for s in cfg.structures}
    comp_of = lambda at: formula.get(at.get_chemical_formula(), "other")  # noqa: E731
    temps = sorted({*cfg.exploration.temperatures_K, *(t for s in cfg.structures for t in s.temperatures_K)})
    t_max = max(temps)
    gens = sorted({m["generation"] for m in st.models()})
    rows_by_gen = {g: frames_with_pairs(st, g, comp_of) for g in gens}
    empirical = {build_structure(s).get_chemical_formula(empirical=True): s.name for s in cfg.structures}
    emin = minima(st, comp_of, rows_by_gen, empirical)
    out = {"t_max_K": t_max, "minimum_eV_per_atom": {c: round(v, 4) for c, v in emin.items()}, "generations": {}}
    test_files = sorted(work.glob(f"{a.name}-test-*.extxyz"))
    if test_files:  # where the test frames lie (description only)
        test_frames = from_extxyz(test_files[0].read_text())
        exc = np.array([at.get_potential_energy() / len(at) - emin.get(comp_of(at), np.nan) for at in test_frames])
        out["test_excess_over_kTmax"] = {q: round(float(np.nanquantile(exc / (K_B * t_max), float(q))), 2)
                                         for q in ("0.01", "0.5", "0.9", "0.99", "1.0")}
        inside = thermal_weights(np.nan_to_num(exc, nan=-1.0), [len(at) for at in test_frames], temps)
        comps = np.array([comp_of(at) for at in test_frames])
        out["test_share_inside_band"] = {c: round(float(inside[comps == c].mean()), 3) for c in sorted(set(comps))}
    for g in gens:
        rows = rows_by_gen[g]
        npz = work / f"{a.name}-g{g}-pairs.npz"
        if not rows or not npz.exists():
            continue
        z = np.load(npz, allow_pickle=True)
        test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
        exc = np.array([(r["e"] - emin[r["comp"]]) / (K_B * t_max) for r in rows])
        gout = {"calibration_excess_over_kTmax": {q: round(float(np.quantile(exc, float(q))), 2)
                                                 for q in ("0.1", "0.5", "0.9", "1.0")}}
        for c in a.factors:
            keep = [r for r, x in zip(rows, exc) if x <= c]
            if len(keep) < 19:
                gout[f"c={c}"] = {"frames": len(keep), "note": "fewer than 19 frames"}
                continue
            cal = {k: np.concatenate([r["p"][k] for r in keep]) for k in ("aw", "ae", "ew", "ee")}
            qf, qe = conformal_scale(cal["aw"], cal["ae"], 0.95), conformal_scale(cal["ew"], cal["ee"], 0.95)
            row = {"frames": len(keep), "oob_frames": sum(r["source"] == "oob:" for r in keep),
                   "q_force": round(qf, 3), "q_energy": round(qe, 3)}
            gout[f"c={c}"] = row | scored(qf, qe, test)
        frames = [r["atoms"] for r in rows]
        nat = [len(f) for f in frames]
        cal = {k: np.concatenate([r["p"][k] for r in rows]) for k in ("aw", "ae", "ew", "ee")}
        band = thermal_frame_weights(frames, labeler_minima(st), temps)
        for label, fw in (("band", band), ("weighted", density_ratio(rows, emin, temps))):
            row = {"frames": len(rows), "effective_frames": round(effective_pairs(fw), 1)}
            try:
                qf = weighted_conformal_scale(cal["aw"], cal["ae"], np.repeat(fw, nat))
                qe = weighted_conformal_scale(cal["ew"], cal["ee"], fw)
            except ValueError as exc:
                gout[label] = row | {"note": str(exc)}
                continue
            gout[label] = row | {"q_force": round(qf, 3), "q_energy": round(qe, 3)} | scored(qf, qe, test)
        out["generations"][str(g)] = gout
        print(json.dumps({g: gout}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
