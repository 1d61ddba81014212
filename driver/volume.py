"""The volume-change result: relaxed volume and lattice parameters against Li content.

After the final evaluation, every member of the final ensemble relaxes (positions and
cell) the starting structure of each composition; the labeler relaxes a few of them as a
check. Per composition: the ensemble-mean volume per formula unit, hexagonal a and c, each
with the ensemble's band (the same Student-t interval over members as the selection uses),
and where checked the labeler's values and the relative difference.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from driver.config_models import CampaignConfig, StructureSpec
from remote_al.records import RelaxRequest


def volume_specs(cfg: CampaignConfig) -> list[StructureSpec]:
    """Structures on the curve: those named in [volume] (or by group), else every layered
    structure's lowest-Ewald ordering."""
    layered = [s for s in cfg.structures if s.generator == "layered"]
    names = set(cfg.volume.structures)
    if names:
        return [s for s in layered if s.name in names or s.group in names]
    return [s for s in layered if s.ordering == 0]


def check_specs(cfg: CampaignConfig) -> list[StructureSpec]:
    names = set(cfg.volume.check)
    return [s for s in volume_specs(cfg) if s.name in names or s.group in names]


def family(spec: StructureSpec) -> str:
    """A label for one curve: the transition-metal occupation, e.g. 'Li_x NiO2', 'Li_x (NMC811) O2'."""
    from driver.config import spec_metals

    if isinstance(spec.metals, str) and spec.metals:
        if spec.metals in ("Ni", "Co", "Mn"):
            return f"Li_x {spec.metals}O2"
        return f"Li_x ({spec.metals}) O2"
    metals = spec_metals(spec)
    if len(metals) == 1:
        return f"Li_x {next(iter(metals))}O2"
    return "Li_x (" + "".join(f"{el}{f:g}" for el, f in metals.items()) + ") O2"


def relax_requests(cfg: CampaignConfig, generation: int, model_paths, task_dir: Callable[[str], str]):
    """(key, function, request dict) for the ensemble relaxations and the labeler checks."""
    from driver.preflight import build_structure
    from remote_al.structures import to_extxyz

    v = cfg.volume
    out = []
    for spec in volume_specs(cfg):
        key = f"relax:g{generation}:{spec.name}"
        req = RelaxRequest(task_key=key, workdir=task_dir(key), structure_extxyz=to_extxyz(build_structure(spec)),
                           model_paths=tuple(model_paths), fmax=v.fmax, max_steps=v.max_steps)
        out.append((key, "relax", req.to_dict()))
    for spec in check_specs(cfg):
        out.append(labeler_relax_request(cfg, spec, task_dir))
    return out


def labeler_relax_request(cfg: CampaignConfig, spec: StructureSpec, task_dir: Callable[[str], str]):
    """(key, "relax_label", request dict): the labeler relaxes the built structure. One task
    per structure, run once and read twice: ``[initial] relax`` starts from its result and
    the volume check compares the ensemble with it."""
    from driver.preflight import build_structure
    from remote_al.structures import to_extxyz

    v = cfg.volume
    key = f"relax-label:{spec.name}"
    req = RelaxRequest(task_key=key, workdir=task_dir(key), structure_extxyz=to_extxyz(build_structure(spec)),
                       labeler=cfg.labeler.kind, labeler_settings=dict(cfg.labeler.settings),
                       fmax=v.fmax, max_steps=v.max_steps)
    return key, "relax_label", req.to_dict()


def _lattice(cell9, supercell) -> tuple[float, float]:
    """Hexagonal (a, c) of a relaxed cell; NaN when the relaxation left the layered
    lattice (a member that distorted the cell: its volume still counts)."""
    from ase import Atoms

    from remote_al.composition import CompositionError
    from remote_al.lattice import hexagonal_lattice

    try:
        return hexagonal_lattice(Atoms(cell=np.reshape(cell9, (3, 3)), pbc=True), tuple(supercell))
    except CompositionError:
        return float("nan"), float("nan")


def _band(values, confidence: float) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval over members (NaN members left out)."""
    from remote_al.uq import ensemble_ci_width

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    half = float(ensemble_ci_width(values, confidence, axis=0) / 2.0) if len(values) >= 2 else float("nan")
    return float(values.mean()), half


def summarize(state, cfg: CampaignConfig) -> list[dict]:
    """One row per structure on the curve, from the relaxation results in the state."""
    conf = cfg.selection.confidence
    rows = []
    for spec in volume_specs(cfg):
        n_fu = int(np.prod(spec.supercell))
        row = {"name": spec.name, "family": family(spec), "x": spec.li_content, "formula_units": n_fu,
               "status": "pending"}
        ens = sorted((t for t in state.tasks(function="relax")
                      if t["key"].startswith("relax:g") and t["key"].split(":", 2)[2] == spec.name),
                     key=lambda t: -t["generation"])
        if ens:
            t = ens[0]
            row["generation"] = t["generation"]
            row["status"] = t["status"]
            if t["status"] == "done":
                res = json.loads(t["result"])
                lat = [_lattice(c, spec.supercell) for c in res["cells"]]
                row["volume_fu"], row["volume_fu_band"] = _band(np.array(res["volumes_A3"]) / n_fu, conf)
                row["a"], row["a_band"] = _band([x[0] for x in lat], conf)
                row["c"], row["c_band"] = _band([x[1] for x in lat], conf)
                row["members_converged"] = f"{sum(res['converged'])}/{len(res['converged'])}"
                row["members_distorted"] = sum(1 for x in lat if not np.isfinite(x[0]))
                row["volumes_fu_members"] = [v / n_fu for v in res["volumes_A3"]]
            elif t["error"]:
                row["error"] = t["error"]
        lab = state.task(f"relax-label:{spec.name}")
        if lab is not None:
            row["labeler_status"] = lab["status"]
            if lab["status"] == "done":
                res = json.loads(lab["result"])
                row["labeler"] = res["method"]
                row["labeler_volume_fu"] = res["volumes_A3"][0] / n_fu
                row["labeler_a"], row["labeler_c"] = _lattice(res["cells"][0], spec.supercell)
                row["labeler_converged"] = bool(res["converged"][0])
                if "volume_fu" in row:
                    row["volume_diff"] = row["volume_fu"] / row["labeler_volume_fu"] - 1.0
                    row["within_tolerance"] = abs(row["volume_diff"]) <= cfg.volume.tolerance
            elif lab["error"]:
                row["labeler_error"] = lab["error"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> list[str]:
    """Plain-text lines of the volume table (for the terminal and the closing log)."""
    lines = [f"{'structure':<22} {'x':>5} {'V/f.u. (A^3)':>18} {'a (A)':>15} {'c (A)':>16} {'labeler V/f.u.':>15} {'diff':>7}"]
    for r in rows:
        if "volume_fu" not in r:
            lines.append(f"{r['name']:<22} {r['x']:>5.2f}  {r['status']}: {r.get('error', '')[:60]}")
            continue
        lab = f"{r['labeler_volume_fu']:.2f}" if "labeler_volume_fu" in r else "-"
        diff = f"{100 * r['volume_diff']:+.1f}%" if "volume_diff" in r else "-"
        lines.append(
            f"{r['name']:<22} {r['x']:>5.2f} {r['volume_fu']:>9.2f} ± {r['volume_fu_band']:<6.2f} "
            f"{r['a']:>7.3f} ± {r['a_band']:<5.3f} {r['c']:>7.2f} ± {r['c_band']:<6.2f} {lab:>15} {diff:>7}"
        )
    return lines
