"""Calibration variants, offline, on a finished ``benchmarks/calibration.py`` run (issue #20).

    python benchmarks/calibration_variants.py WORKDIR [NAME]   # e.g. runs/calib-a9 linio2

Each variant is fitted on the campaign's own calibration pairs of a generation (its
held-out ``eval:gN`` and out-of-bag ``oob:gN`` frames, from the state) and scored on the
independent test set whose pairs ``benchmarks/calibration.py`` saved
(``WORKDIR/NAME-gN-pairs.npz``). Coverage of the 95 % bound per composition, forces per
atom (F) and energies per frame (E). Variants: A conformal on held-out + out-of-bag (the
campaign's method); B held-out frames only; C Mondrian, a quantile per composition; D
conformal per width tercile (energies: halves); E pairs pooled over generations 0..g;
H Mondrian per element (a force quantile per chemical species); F and G nonlinear recalibrations, still split-conformal: the score |e| / w^0.5 (bound
q sqrt(w)) and |e| / (w + b) with b the calibration frames' median width (bound q (w + b)).
For A, F and G also the median and 90th percentile of the per-atom force bound on the
test set (``sharpness``: a narrower bound at the same coverage is the better one).
Prints JSON; the numbers of 2026-12-06 are in benchmarks/results/calibration.json
(attempt 9b_offline_calibration_variants).
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from driver.campaign import open_campaign_state  # noqa: E402
from driver.config import parse_config  # noqa: E402
from driver.preflight import build_structure  # noqa: E402
from remote_al.calibration import conformal_scale  # noqa: E402

work = Path(sys.argv[1])
name = sys.argv[2] if len(sys.argv) > 2 else "linio2"
cdir = work / name
st = open_campaign_state(cdir)
cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=cdir)
formula = {build_structure(s).get_chemical_formula(): s.name for s in cfg.structures}
comp_of = lambda a: formula.get(a.get_chemical_formula(), "other")

def pairs_of(key):
    from remote_al.structures import from_extxyz
    t = st.task(key)
    out = {k: [] for k in ("aw", "ae", "acomp", "ael", "ew", "ee", "ecomp")}
    if t is None or t["result"] is None: return {k: np.array(v) for k, v in out.items()}
    req, res = json.loads(t["request"]), json.loads(t["result"])
    frames = from_extxyz(req["frames_extxyz"])
    comps = [comp_of(a) for a in frames]
    out["ael"] += [sym for a in frames for sym in a.get_chemical_symbols()]
    out["ew"] += res["energy_width"]; out["ee"] += res["energy_error"]; out["ecomp"] += comps
    out["aw"] += res["atom_force_width"]; out["ae"] += res["atom_force_error"]
    out["acomp"] += [c for c, n in zip(comps, res["natoms"]) for _ in range(n)]
    return {k: np.array(v) for k, v in out.items()}

def cat(*ps):
    return {k: np.concatenate([p[k] for p in ps]) for k in ps[0]}

def cov(w, e, q): return float(np.mean(np.abs(e) <= q * w)) if len(w) else None

def binned(cw, ce, tw, te, nb=3):
    edges = np.quantile(cw, np.linspace(0, 1, nb + 1))[1:-1]
    cb, tb = np.digitize(cw, edges), np.digitize(tw, edges)
    inside = np.zeros(len(tw), bool)
    for b in range(nb):
        m = cb == b
        q = conformal_scale(cw[m], ce[m], 0.95) if m.sum() >= 19 else conformal_scale(cw, ce, 0.95)
        inside[tb == b] = np.abs(te[tb == b]) <= q * tw[tb == b]
    return inside

def _test_elements():
    from remote_al.structures import from_extxyz
    cache = sorted(work.glob(f"{name}-test*.extxyz"))
    return np.array([sym for a in from_extxyz(cache[-1].read_text()) for sym in a.get_chemical_symbols()])

test_elements = _test_elements()
res = {}
gens = sorted({m["generation"] for m in st.models()})
energy_pool = []
for g in gens:
    npz = work / f"{name}-g{g}-pairs.npz"
    if not npz.exists(): continue
    z = np.load(npz, allow_pickle=True)
    T = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
    T["ael"] = test_elements
    ev, oob = pairs_of(f"eval:g{g}"), pairs_of(f"oob:g{g}")
    both = cat(ev, oob)
    energy_pool.append(both)
    comps = sorted(set(T["acomp"]))
    row = {"n_eval_frames": len(ev["ew"]), "n_oob_frames": len(oob["ew"])}
    def score(label, fq_fn, eq_fn):
        r = {}
        for c in comps + ["all"]:
            am = T["acomp"] == c if c != "all" else np.ones(len(T["aw"]), bool)
            em = T["ecomp"] == c if c != "all" else np.ones(len(T["ew"]), bool)
            fa, ea = fq_fn(c), eq_fn(c)
            r[c] = {"F": round(cov(T["aw"][am], T["ae"][am], fa), 3) if np.isscalar(fa) else None,
                    "E": round(cov(T["ew"][em], T["ee"][em], ea), 3) if np.isscalar(ea) else None}
        row[label] = r
    q = lambda p, k: conformal_scale(p[k + "w"], p[k + "e"], 0.95)
    score("A_eval+oob", lambda c: q(both, "a"), lambda c: q(both, "e"))
    try: score("B_eval_only", lambda c: q(ev, "a"), lambda c: q(ev, "e"))
    except ValueError as e: row["B_eval_only"] = str(e)
    def mond(p, k, c):
        m = p[k + "comp"] == c
        return conformal_scale(p[k + "w"][m], p[k + "e"][m], 0.95) if c != "all" and m.sum() >= 19 else q(p, k)
    score("C_mondrian_comp", lambda c: mond(both, "a", c), lambda c: mond(both, "e", c))
    pool = cat(*energy_pool)
    score("E_pooled_gens", lambda c: q(pool, "a"), lambda c: q(pool, "e"))
    # D binned by width
    d = {}
    for c in comps + ["all"]:
        am = T["acomp"] == c if c != "all" else np.ones(len(T["aw"]), bool)
        em = T["ecomp"] == c if c != "all" else np.ones(len(T["ew"]), bool)
        fi = binned(both["aw"], both["ae"], T["aw"], T["ae"])[am]
        ei = binned(both["ew"], both["ee"], T["ew"], T["ee"], nb=2)[em]
        d[c] = {"F": round(float(fi.mean()), 3), "E": round(float(ei.mean()), 3)}
    row["D_width_bins"] = d
    shapes = {"A_eval+oob": lambda w, b: w, "F_power_0.5": lambda w, b: np.sqrt(w),
              "G_affine_median": lambda w, b: w + b}
    for label, shape in shapes.items():  # forces only: the per-atom bound's coverage and width
        b = float(np.median(both["aw"]))
        qf = conformal_scale(shape(both["aw"], b), both["ae"], 0.95)
        bound = qf * shape(T["aw"], b)
        inside = np.abs(T["ae"]) <= bound
        row.setdefault(label, {})
        row[label]["forces_all"] = round(float(inside.mean()), 3)
        row[label]["forces_per_composition"] = {c: round(float(inside[T["acomp"] == c].mean()), 3) for c in comps}
        row[label]["sharpness"] = {"bound_median": round(float(np.median(bound)), 3),
                                   "bound_p90": round(float(np.percentile(bound, 90)), 3)}
    # H Mondrian per element: a force quantile per chemical species (Li, Ni, O, ...)
    h_inside = np.zeros(len(T["aw"]), bool)
    for el in set(T["ael"]):
        cm, tm = both["ael"] == el, T["ael"] == el
        qe = conformal_scale(both["aw"][cm], both["ae"][cm], 0.95) if cm.sum() >= 19 else q(both, "a")
        h_inside[tm] = np.abs(T["ae"][tm]) <= qe * T["aw"][tm]
    row["H_mondrian_element"] = {
        "forces_all": round(float(h_inside.mean()), 3),
        "forces_per_composition": {c: round(float(h_inside[T["acomp"] == c].mean()), 3) for c in comps},
        "forces_per_element": {el: round(float(h_inside[T["ael"] == el].mean()), 3) for el in sorted(set(T["ael"]))},
        "A_per_element": {el: round(cov(T["aw"][T["ael"] == el], T["ae"][T["ael"] == el], q(both, "a")), 3)
                          for el in sorted(set(T["ael"]))}}
    res[g] = row
print(json.dumps(res, indent=1))
