"""Offline lever for issue #20: an energy-weighted last training against a leftover energy bias.

    python benchmarks/calibration_energy_weight.py WORKDIR [NAME] [--generation G] [--steps 1000]
    # e.g. runs/calib-delith2 delithiation --out benchmarks/results/calibration_delithiation.json

On a finished ``benchmarks/calibration.py`` run, every member of generation G (default: the
last) is continued for ``--steps`` more steps on exactly its own training frames (the same
request: systems, member, seed and ``subset_fraction``, so the same stable bag and the same
out-of-bag frames), from its own checkpoint, once per variant:

* ``control``: the campaign's continued-training loss as it is (``continue_prefactors =
  "limit"``: energy 2, forces 1, virial 1), to separate "more steps" from "more energy weight";
* ``energy_x10``: the energy prefactor 20 at start and limit, forces and virial as before.

Each variant's ensemble is then evaluated as the campaign evaluates a generation (the
project's ``evaluate_uncertainty`` on the stored ``eval:gG`` held-out frames and ``oob:gG``
out-of-bag frames, with their member masks), the conformal factors are refitted on those
pairs, and the bound is scored on the independent test set (``WORKDIR/NAME-test*.extxyz``,
the labeler's MD that ``benchmarks/calibration.py`` built), per composition: energy bias and
RMSE, force RMSE and the coverage of the 95 % bounds. The generation as the campaign
trained it is scored the same way (``as trained``). Trainings are cached under
``WORKDIR/energy_weight/<variant>-<steps>/m<i>`` (a rerun reuses finished members). Prints JSON;
``--out FILE`` also stores it under ``attempts["13_offline_energy_weighted_last_training"]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ATTEMPT = "13_offline_energy_weighted_last_training"
VARIANTS = {
    "control": {},
    "energy_x10": {"loss": {"start_pref_e": 20.0, "limit_pref_e": 20.0}},
}


def score(cal: dict, test: dict, level: float = 0.95) -> dict:
    """Refitted conformal factors and, per composition, the test-set errors and coverage."""
    from remote_al.calibration import conformal_scale

    qf, qe = conformal_scale(cal["aw"], cal["ae"], level), conformal_scale(cal["ew"], cal["ee"], level)
    row = {"q_force": round(float(qf), 3), "q_energy": round(float(qe), 3), "calibration_frames": len(cal["ew"])}
    for c in [*sorted(set(test["ecomp"])), "all"]:
        am = test["acomp"] == c if c != "all" else np.ones(test["aw"].size, bool)
        em = test["ecomp"] == c if c != "all" else np.ones(test["ew"].size, bool)
        ee = test["ee"][em]
        row[c] = {"energy_mean_meV_atom": round(1000 * float(ee.mean()), 1),
                  "energy_rmse_meV_atom": round(1000 * float(np.sqrt(np.mean(ee ** 2))), 1),
                  "force_rms_eV_A": round(float(np.sqrt(np.mean(test["ae"][am] ** 2))), 3),
                  "coverage_forces": round(float(np.mean(np.abs(test["ae"][am]) <= qf * test["aw"][am])), 3),
                  "coverage_energies": round(float(np.mean(np.abs(ee) <= qe * test["ew"][em])), 3)}
    return row


def continue_members(st, g: int, variant: str, overrides: dict, steps: int, root: Path) -> list[str]:
    """Generation g's members, each continued ``steps`` steps with ``overrides``; cached."""
    from remote_al.records import TrainRequest
    from remote_al.training import train_member

    paths = []
    for m in range(len(st.models(g))):
        task = st.task(f"train:g{g}:m{m}")
        req, res = json.loads(task["request"]), json.loads(task["result"])
        wd = root / f"{variant}-{steps}" / f"m{m}"
        model = wd / "model.pth"
        if not model.exists():
            t0 = time.time()
            known = set(TrainRequest.__dataclass_fields__)
            tr = TrainRequest(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in req.items() if k in known}
                              | {"task_key": f"{variant}:g{g}:m{m}", "workdir": str(wd), "numb_steps": steps,
                                 "init_model": res["checkpoint_path"], "continue_prefactors": "limit",
                                 "deepmd_continue": overrides, "save_freq": 0})
            out = train_member(tr)
            print(f"{variant} member {m}: {steps} steps in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            model = Path(out.model_path)
        paths.append(str(model))
    return paths


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("name", nargs="?", default="delithiation")
    ap.add_argument("--generation", type=int, help="default: the campaign's last")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", help="a calibration results file: store the result under attempts[...]")
    a = ap.parse_args(argv)

    import calibration as cb

    from driver.campaign import open_campaign_state
    from driver.config import parse_config
    from driver.preflight import build_structure
    from remote_al.functions import evaluate_uncertainty
    from remote_al.structures import from_extxyz

    work = Path(a.workdir)
    cdir = work / a.name
    st = open_campaign_state(cdir)
    cfg = parse_config(json.loads(st.get_meta("config_json")), base_dir=cdir)
    formula = {build_structure(s).get_chemical_formula(): s.name for s in cfg.structures}

    def comp_of(atoms):
        return formula.get(atoms.get_chemical_formula(), "other")

    g = a.generation if a.generation is not None else max(m["generation"] for m in st.models())
    tests = sorted(work.glob(f"{a.name}-test*.extxyz"))
    if len(tests) != 1:
        raise SystemExit(f"expected one {a.name}-test*.extxyz in {work} (benchmarks/calibration.py's test set), "
                         f"found {len(tests)}")
    frames = from_extxyz(tests[0].read_text())
    conf = cfg.selection.confidence
    result = {"generation": g, "steps": a.steps, "test_set": tests[0].name, "test_frames": len(frames),
              "variants": {"as trained": {}, **{k: {"deepmd_continue": v} for k, v in VARIANTS.items()}}}
    for variant in result["variants"]:
        t0 = time.time()
        if variant == "as trained":
            models = [m["path"] for m in st.models(g)]
        else:
            models = continue_members(st, g, variant, VARIANTS[variant], a.steps, work / "energy_weight")
        cal = cb.calibration_pairs(st, g, comp_of, evaluate=lambda req, models=models: evaluate_uncertainty(
            {**req, "model_paths": models, "workdir": tempfile.mkdtemp(), "features": ""}))
        row = score(cal, cb.ensemble_pairs(models, frames, conf))
        result["variants"][variant].update(row, wall_s=round(time.time() - t0, 1))
        print(json.dumps({variant: result["variants"][variant]}), flush=True)
    if a.out:
        path = Path(a.out)
        data = json.loads(path.read_text())
        data.setdefault("attempts", {})[ATTEMPT] = {
            "what": f"offline: generation {g}'s members continued {a.steps} steps on their own training frames, "
                    "as the campaign continues (control) and with the energy prefactor 20 (energy_x10); "
                    "conformal factors refitted on the generation's held-out and out-of-bag frames",
            "result": result}
        path.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
