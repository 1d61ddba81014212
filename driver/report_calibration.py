"""The report's calibration section: each generation's calibrated bounds, how reliable they
are on the campaign's held-out frames, and the thresholds configured and used.

Gathering (``gather_calibration``) returns plain data; ``calibration_html`` renders it with
the report's table helper. Everything comes from the campaign folder: the calibration
files, the stored evaluation results and the metrics; nothing is re-evaluated.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from driver import plots
from remote_al.calibration import RELIABILITY_LEVELS, Calibration, read_calibration, reliability
from remote_al.calibration_file import WEIGHTED

TARGETS = (0.05, 0.1, 0.2, 0.3)  # eV/A, the width each would become with the latest calibration


@dataclass(frozen=True)
class CalibrationView:
    calibrations: dict[int, Calibration]
    used_thresholds: dict[int, float]  # round -> width threshold its selection used
    reliability: dict[str, dict[str, dict[float, float]]] = field(default_factory=dict)
    energy_by_composition: dict[str, dict[int, dict[str, dict[str, float]]]] = field(default_factory=dict)
    mode: str = "fixed"
    configured_threshold: float = 0.0
    target_force_error: float = 0.0


def _eval_result(state, g: int) -> dict | None:
    """The richest stored evaluation of generation g: the final one (every held-out frame)
    when there is one, else the one made when g became current."""
    for key in (f"final-eval:g{g}", f"eval:g{g}"):
        row = state.task(key)
        if row is not None and row["result"]:
            res = json.loads(row["result"])
            if res.get("atom_force_width") is not None:
                return res
    return None


def gather_calibration(state, campaign_dir: Path, selection) -> CalibrationView:
    gens = sorted({m["generation"] for m in state.models()})
    cals = {g: c for g in gens if (c := read_calibration(campaign_dir, g)) is not None}
    rounds = state.metrics("round")
    used = {r: m["force_threshold"] for r, m in rounds.items() if m.get("force_threshold") is not None}
    rel: dict[str, dict[str, dict[float, float]]] = {"forces (per atom)": {}, "energies (per frame)": {}}
    for g in cals:
        res = _eval_result(state, g)
        if res is None:
            continue
        frame_of_atom = np.repeat(np.arange(len(res["natoms"])), res["natoms"])
        rel["forces (per atom)"][f"g{g}"] = reliability(res["atom_force_width"], res["atom_force_error"],
                                                        frame_of_atom, RELIABILITY_LEVELS)
        rel["energies (per frame)"][f"g{g}"] = reliability(res["energy_width"], res["energy_error"],
                                                           np.arange(len(res["natoms"])), RELIABILITY_LEVELS)
    by_comp: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for scope in ("generation", "final"):
        for g, m in state.metrics(scope).items():
            for name, v in m.items():
                kind, _, comp = name.partition(":")
                if comp and kind in ("energy_bias_meV_atom", "energy_rmse_meV_atom"):
                    by_comp.setdefault(scope, {}).setdefault(g, {}).setdefault(comp, {})[kind] = v
    return CalibrationView(cals, used, rel, by_comp, selection.force_threshold_mode, selection.force_threshold,
                           selection.target_force_error)


def _ranges(c: Calibration) -> str:
    """What the fit's own finite frames let its coverage on new frames be (90 % range)."""
    def one(r):
        return f"{r[0]:.3f}–{r[1]:.3f}" if r else "–"
    return f"{one(c.force_coverage_range)}; {one(c.energy_coverage_range)}"


def calibration_html(view: CalibrationView, outdir: Path, table: Callable, figure: Callable) -> list[str]:
    out = ["<h2>Calibrated uncertainty</h2>"]
    if not view.calibrations:
        out.append("<p class='note'>No generation has a calibration yet (it is fitted when a generation is "
                   "evaluated on held-out frames).</p>")
        return out
    if view.mode == "calibrated":
        how = (f"threshold mode <b>calibrated</b>: target 95 % force error {view.target_force_error:g} eV/Å, "
               f"turned into a width threshold by each generation's calibration (until the first: "
               f"{view.configured_threshold:g} eV/Å)")
    else:
        how = f"threshold mode <b>fixed</b>: width threshold {view.configured_threshold:g} eV/Å as configured"
    out.append(f"<p class='note'>Bounds: split-conformal scale on the seed's Student-t width, fitted per "
               f"generation on held-out frames (docs/uncertainty.md). Configured: {how}.</p>")
    rows = []
    for g, c in sorted(view.calibrations.items()):
        becomes = c.force_width_threshold(view.target_force_error)
        rows.append([str(g), html.escape(c.method), f"{c.force_scale:.2f}", f"{c.frame_scale:.2f}", f"{c.energy_scale:.2f}",
                     str(c.n_frames) + (f" ({c.effective_frames:g} {WEIGHTED[c.weighting]})"
                                        if c.weighting in WEIGHTED and c.effective_frames is not None else "")
                     + (", generations " + " + ".join(map(str, [g, *c.pooled_generations])) + " pooled"
                        if c.pooled_generations else ""),
                     str(c.n_force_pairs),
                     "yes" if c.force_calibrated else "no (fallback)", "yes" if c.energy_calibrated else "no (fallback)",
                     _ranges(c), f"{becomes:.3g}", html.escape(c.note) or "–"])
    out.append(table(["generation", "method", "force bound / width (per atom)", "(per frame)", "energy bound / width",
                      "frames", "atoms",
                      "forces calibrated", "energies calibrated",
                      "coverage on new frames, 90 % range (forces; energies)",
                      f"width for {view.target_force_error:g} eV/Å", "note"], rows))
    if view.used_thresholds:
        out.append("<p class='note'>Width threshold each round's selection used (eV/Å): "
                   + ", ".join(f"round {r}: {v:.3g}" for r, v in sorted(view.used_thresholds.items())) + ".</p>")
    latest = view.calibrations[max(view.calibrations)]
    out.append("<h3>Targets in physical units</h3>" + table(
        ["95 % force error target (eV/Å)", f"width threshold with generation {latest.generation}'s calibration (eV/Å)"],
        [[f"{t:g}", f"{latest.force_width_threshold(t):.3g}"] for t in TARGETS]))
    for scope, gens in view.energy_by_composition.items():
        rows = [[str(g), html.escape(c), f"{v.get('energy_bias_meV_atom', float('nan')):+.1f}",
                 f"{v.get('energy_rmse_meV_atom', float('nan')):.1f}"]
                for g, comps in sorted(gens.items()) for c, v in sorted(comps.items())]
        what = "each generation's own held-out frames" if scope == "generation" else "the full held-out set (final)"
        out.append(f"<h3>Energy error per composition ({what})</h3>"
                   + table(["generation", "composition", "mean error (meV/atom)", "RMSE (meV/atom)"], rows))
    if any(view.reliability.values()):
        plots.plot_reliability(view.reliability, outdir / "reliability.png")
        out.append(figure("reliability.png", "Reliability: share of held-out errors inside the calibrated bound "
                          "at 50/68/90/95/99 % against the nominal level, each frame judged by a scale fitted on "
                          "the other frames. On the diagonal: calibrated; below: over-confident. Few frames make "
                          "these points coarse (Pernot 2024)."))
        rel_rows = [[q, label, *[("–" if not np.isfinite(v) else f"{v:.2f}") for v in curve.values()]]
                    for q, curves in view.reliability.items() for label, curve in curves.items()]
        out.append(table(["quantity", "generation", *[f"{x:.0%}" for x in RELIABILITY_LEVELS]], rel_rows))
    return out
