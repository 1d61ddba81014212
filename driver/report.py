"""``remote-al report``: an HTML page with a campaign's settings, provenance, tables and plots.

This module writes the page; ``driver.report_data`` gathers what it shows and
``driver.report_calibration`` is the calibration section.

``write_report(campaign_dir)`` writes ``campaign_dir/report/index.html`` with its PNGs
next to it, referenced by relative path (the folder is self-contained: copy or zip it
whole). It reads the campaign state (``state.sqlite``), the copied ``campaign.toml``
and the members' ``lcurve.out`` files; nothing in the campaign is changed.

Parity and per-component calibration need predictions the state does not keep (it stores
summary numbers only). Where deepmd-kit is importable and the final generation's model
files are on this machine, the report evaluates that ensemble on the held-out labeled
frames with ``remote_al.ensemble.predict_ensemble`` and caches the arrays in
``report/parity.npz`` (reused while the models and held-out frames are unchanged).
Otherwise it falls back to what the stored evaluation results hold (energy per frame,
force width and max force error per frame) and says why in the report.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Any, Callable

import numpy as np

from driver import plots
from driver.metrics import calibration_table, parity_metrics
from driver.report_calibration import calibration_html, gather_calibration
from driver.report_data import (
    PARITY_CACHE,
    ParityData,
    campaign_settings,
    dist_version,
    labels_by_round,
    learning_curves,
    provenance_counts,
    remote_al_version,
    report_parity,
    selection_used,
    volume_rows,
    widths_by_round,
)
from driver.state import State
from remote_al.calibration import latest_calibration

REPORT_DIR = "report"
# What write_report does, in order (its on_stage callback gets each name as it starts).
STAGES = ("provenance and tables", "learning curves", "exploration plots", "held-out parity (evaluating the models)",
          "calibration", "volume", "writing the page")

ROUND_COLUMNS = (
    ("n_explored", "explored", ".0f"), ("confident_share", "confident share", ".2f"),
    ("n_selected", "selected", ".0f"), ("n_confident", "confident", ".0f"),
    ("n_unphysical", "unphysical", ".0f"), ("n_filtered", "filtered", ".0f"),
    ("n_duplicate", "duplicate", ".0f"), ("n_skipped", "skipped", ".0f"), ("n_test", "held out", ".0f"),
    ("force_width_median", "F width median (eV/Å)", ".3f"), ("force_width_p90", "F width p90 (eV/Å)", ".3f"),
    ("force_width_max", "F width max (eV/Å)", ".3f"), ("n_above_upper", "above trust bound", ".0f"),
)
EVAL_COLUMNS = (
    ("n_test", "n frames", ".0f"), ("energy_rmse_meV_atom", "E RMSE (meV/atom)", ".2f"),
    ("force_rmse_eV_A", "F RMSE (eV/Å)", ".3f"), ("force_inside_ci", "F inside CI", ".2f"),
    ("force_width_mean", "mean F width (eV/Å)", ".3f"),
)


# ------------------------------------------------------------------------ HTML
def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return html.escape(str(v))


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    """An HTML table; ``header=None``: a table of names and values, without a header row."""
    if header is None:
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table class='fields'><tbody>{body}</tbody></table>"
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} table.fields td{text-align:left} table.fields td:first-child{color:#555}
.standin{background:#fff3cd;border:1px solid #e0b400;padding:0.6em 1em;margin:1em 0}
.note{color:#666;font-size:0.9em} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#555;font-size:0.9em} pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}
"""


# ------------------------------------------------------------------ the report
def write_report(
    campaign_dir: str | Path,
    *,
    compute_parity: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Write ``campaign_dir/report/index.html`` (PNGs next to it); return its path.

    ``compute_parity=False`` skips the local model evaluation (only stored results and
    an existing ``parity.npz`` of the same models and frames are used). ``on_stage`` is
    called with each of :data:`STAGES` as it starts (a progress display).
    """
    campaign_dir = Path(campaign_dir)
    state_path = campaign_dir / "state.sqlite"
    if not state_path.exists():
        raise FileNotFoundError(f"no campaign state at {state_path}")
    outdir = campaign_dir / REPORT_DIR
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.png"):
        old.unlink()
    state = State(state_path)
    try:
        return _write(state, campaign_dir, outdir, compute_parity, on_stage or (lambda stage: None))
    finally:
        state.close()


def _write(state: State, campaign_dir: Path, outdir: Path, compute_parity: bool,
           on_stage: Callable[[str], None]) -> Path:
    on_stage(STAGES[0])
    toml_text, settings = campaign_settings(campaign_dir)
    selection = selection_used(state, campaign_dir, settings)
    sel = {"confidence": selection.confidence, "force_threshold": selection.force_threshold,
           "force_upper": selection.force_upper}
    name = settings.get("campaign", {}).get("name") or campaign_dir.name
    sections: list[str] = []

    # --- provenance -------------------------------------------------------
    counts = provenance_counts(state)
    labelers, n_ok, n_failed = counts["labelers"], counts["n_ok"], counts["n_failed"]
    datasets, digests, last_ts = counts["datasets"], counts["digests"], counts["last_ts"]
    n_test = len(state.label_rows("ok", "test"))
    gens = sorted({m["generation"] for m in state.models()})
    members = {g: len(state.models(g)) for g in gens}
    started = float(state.get_meta("started", "0") or 0)
    stop = state.get_meta("stop_reason") or ""
    phase = state.get_meta("phase") or "not started"
    standin = any(lab[0] == "chgnet" or "stand-in" in (lab[1] or "").lower() for lab in labelers)
    if not labelers and settings.get("labeler", {}).get("kind", "chgnet") == "chgnet":
        standin = True
    if standin:
        from remote_al.records import STAND_IN_NOTE

        sections.append(
            f'<div class="standin"><b>Labels are not DFT.</b> {html.escape(STAND_IN_NOTE)}. Every error in '
            "this report is measured against CHGNet, which stands in for DFT so the loop runs in minutes.</div>"
        )
    prov = [
        ["remote-al version", html.escape(remote_al_version())],
        ["report written", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
        ["campaign directory", html.escape(str(campaign_dir.resolve()))],
        ["phase", html.escape(phase) + (f" (round {html.escape(state.get_meta('round', '0') or '0')})")],
        ["stop reason", html.escape(stop) if stop else "not stopped yet"],
        ["started", _dt.datetime.fromtimestamp(started, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
         if started else "–"],
        ["elapsed (to last event)", f"{(last_ts - started) / 60:.1f} min" if started and last_ts else "–"],
        ["labeler", "<br>".join(f"{html.escape(lab[0])}: {html.escape(lab[1] or '(no note)')} ({lab[2]} labels)"
                                for lab in labelers) or "no labels yet"],
        ["labels", f"{n_ok} ok ({n_test} held out, never trained on), {n_failed} failed"],
        ["generations", ", ".join(f"{g} ({members[g]} members)" for g in gens) or "none yet"],
        ["dataset sizes (training frames)", ", ".join(f"g{g}: {n}" for g, n in sorted(datasets.items())) or "–"],
        *([["dataset digests", ", ".join(f"g{g}: <code>{html.escape(str(d)[:12])}</code>"
                                         for g, d in sorted(digests.items()))]] if digests else []),
        ["deepmd-kit on this machine", html.escape(dist_version("deepmd-kit"))],
    ]
    sections.append("<h2>Provenance</h2>" + _table(None, prov))
    counts = state.task_counts()
    funcs = sorted({f for f, _ in counts})
    statuses = [s for s in ("pending", "submitted", "done", "failed", "quarantined") if any(k[1] == s for k in counts)]
    sections.append(
        "<h3>Tasks</h3>"
        + _table(["function", *statuses], [[html.escape(f), *[str(counts.get((f, s), 0)) for s in statuses]]
                                           for f in funcs])
    )
    quarantined = state.tasks(status="quarantined")
    if quarantined:
        items = "".join(
            f"<li><code>{html.escape(q['key'])}</code>: "
            f"{html.escape(((q['error'] or '').strip().splitlines() or [''])[-1])}</li>" for q in quarantined
        )
        sections.append(f"<p>Quarantined tasks:</p><ul>{items}</ul>")

    # --- tables -------------------------------------------------------------
    rounds = state.metrics("round")
    if rounds:
        rows = [[str(r), *[_fmt(m.get(k), spec) for k, _, spec in ROUND_COLUMNS]] for r, m in sorted(rounds.items())]
        sections.append("<h2>Rounds</h2>" + _table(["round", *[h for _, h, _ in ROUND_COLUMNS]], rows))
    else:
        sections.append("<h2>Rounds</h2><p class='note'>No exploration round finished yet.</p>")
    gm, fm = state.metrics("generation"), state.metrics("final")
    all_g = sorted(set(gens) | set(gm) | set(fm))
    if all_g:
        header = ["generation", "train frames", *[f"{h}" for _, h, _ in EVAL_COLUMNS],
                  *[f"final: {h}" for _, h, _ in EVAL_COLUMNS]]
        rows = [[str(g), _fmt(datasets.get(g), "d"),
                 *[_fmt(gm.get(g, {}).get(k), spec) for k, _, spec in EVAL_COLUMNS],
                 *[_fmt(fm.get(g, {}).get(k), spec) for k, _, spec in EVAL_COLUMNS]] for g in all_g]
        sections.append(
            "<h2>Generations on held-out frames</h2><p class='note'>Left: each generation on the held-out "
            "frames known when it was trained; right (final): every generation on the full held-out set.</p>"
            + _table(header, rows)
        )

    # --- plots ----------------------------------------------------------------
    on_stage(STAGES[1])
    figs: list[str] = ["<h2>Learning curves</h2>"]
    for g, curves, note in learning_curves(state):
        if not curves:
            figs.append(f"<p class='note'>Generation {g}: {html.escape(note or 'no learning curves')}</p>")
            continue
        fname = f"lcurve-g{g:03d}.png"
        plots.plot_learning_curves(curves, outdir / fname, title=f"generation {g}: learning curves "
                                   "(solid: train, dashed: validation)")
        figs.append(_figure(fname, f"Generation {g}: energy and force RMSE per member against training step."
                            + (f" {note}" if note else "")))
    if len(figs) == 1:
        figs.append("<p class='note'>No trained members yet.</p>")

    on_stage(STAGES[2])
    figs.append("<h2>Exploration</h2>")
    plots.plot_rounds(labels_by_round(state), {r: m.get("confident_share") for r, m in rounds.items()},
                      outdir / "rounds.png")
    figs.append(_figure("rounds.png", "Labels per round (training, held-out, failed) and the share of explored "
                        f"frames at or below the force threshold {sel['force_threshold']:g} eV/Å."))
    plots.plot_uncertainty_histograms(widths_by_round(state), outdir / "uncertainty.png",
                                      sel["force_threshold"], sel["force_upper"])
    figs.append(_figure("uncertainty.png", "Force CI width of every explored frame per round; red: selection "
                        "threshold, dashed: trust bound (above it frames count as unphysical)."))

    on_stage(STAGES[3])
    figs.append("<h2>Held-out accuracy and calibration</h2>")
    parity, why, stored = report_parity(state, outdir, sel["confidence"], compute_parity)
    if stored:
        if why:
            figs.append(f"<p class='note'>Force parity and per-component calibration not shown: "
                        f"{html.escape(why)}. Energies and per-frame force summaries below come from the "
                        "stored evaluation results.</p>")
    if parity is None:
        figs.append("<p class='note'>No evaluated held-out frames yet.</p>")
    else:
        figs.extend(_accuracy_figures(parity, outdir, sel["confidence"], latest_calibration(campaign_dir)))
    sections.extend(figs)
    on_stage(STAGES[4])
    sections.extend(calibration_html(gather_calibration(state, campaign_dir, selection), outdir, _table, _figure))
    on_stage(STAGES[5])
    sections.extend(_volume_section(state, campaign_dir, outdir))
    on_stage(STAGES[6])

    if toml_text:
        sections.append("<h2>Campaign settings (campaign.toml)</h2><pre>" + html.escape(toml_text) + "</pre>")
    else:
        sections.append("<h2>Campaign settings</h2><p class='note'>No campaign.toml in the campaign directory.</p>")

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>remote-al report: {html.escape(name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Campaign {html.escape(name)}</h1>"
        f"<p class='note'>remote-al {html.escape(remote_al_version())} · {html.escape(phase)}"
        f"{' · ' + html.escape(stop) if stop else ''}</p>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    index = outdir / "index.html"
    tmp = outdir / "index.html.tmp"
    tmp.write_text(page)
    tmp.replace(index)
    return index


def _accuracy_figures(p: ParityData, outdir: Path, confidence: float, cal) -> list[str]:
    out = [f"<p class='note'>Generation {p.generation} ({p.n_members} members), {len(p.energy_pred)} held-out "
           f"frames; source: {html.escape(p.source)}.</p>"]
    e_bound = cal.energy_bound(p.energy_width) if cal is not None else None
    f_bound = cal.force_bound(p.force_width) if cal is not None and p.force_width is not None else None
    plots.plot_parity(p.energy_pred, p.energy_ref, outdir / "parity.png", p.force_pred, p.force_ref,
                      title=f"generation {p.generation}: ensemble mean against labels on held-out frames",
                      note="force parity needs a local\nevaluation of the models\n(see the note above)",
                      energy_bound=e_bound, force_bound=f_bound)
    bars = (f" Error bars: the calibrated 95 % bounds of generation {cal.generation} ({cal.force_scale:.2f} x "
            f"the force width, {cal.energy_scale:.2f} x the energy width)." if cal is not None else "")
    out.append(_figure("parity.png", "Parity of the ensemble-mean energy per atom and force components against "
                       "the labels of the held-out frames, with RMSE, MAE and max |error|." + bars))
    rows = [["energy per atom (meV/atom)", *_metric_cells(parity_metrics(p.energy_pred, p.energy_ref), 1000.0)]]
    if p.force_pred is not None:
        rows.append(["force components (eV/Å)", *_metric_cells(parity_metrics(p.force_pred, p.force_ref), 1.0)])
    out.append(_table(["quantity", "RMSE", "MAE", "max |error|", "n"], rows))

    if p.force_width is not None:
        widths, errors, what = p.force_width, p.force_pred - p.force_ref, "force component"
    else:
        widths, errors, what = p.frame_force_width, p.frame_force_error, "frame max force"
    ok = np.isfinite(widths) & np.isfinite(errors)
    if ok.any():
        table = calibration_table(widths[ok], errors[ok], confidence, n_bins=min(8, max(1, int(ok.sum()) // 10)))
        plots.plot_calibration(widths[ok], errors[ok], table, outdir / "calibration.png", what=what)
        out.append(_figure("calibration.png", f"Calibration ({what}): CI width against true error, and the share "
                           f"of errors inside the {confidence:.0%} interval per width bin (nominal "
                           f"{confidence:.0%}; below: the ensemble is overconfident)."))
        out.append(_table(
            ["width bin (eV/Å)", "n", "inside CI", "median |error| (eV/Å)"],
            [[f"{r['width_lo']:.3g} – {r['width_hi']:.3g}", str(r["n"]), f"{r['inside_share']:.2f}",
              f"{r['error_median']:.3g}"] for r in table.rows()],
        ))
    return out


def _volume_section(state: State, campaign_dir: Path, outdir: Path) -> list[str]:
    """The volume-change curve and table (driver.volume), when the campaign computed it."""
    rows, error = volume_rows(state, campaign_dir)
    if rows is None and error is None:
        return []
    out = ["<h2>Volume change with Li content</h2>"]
    if error is not None:
        return out + [f"<p class='note'>the campaign's stored settings could not be read "
                      f"({html.escape(type(error).__name__)}: {html.escape(str(error))}).</p>"]
    plots.plot_volume_curve(rows, outdir / "volume.png")
    out.append(_figure("volume.png", "Relaxed volume per formula unit and hexagonal lattice parameters a, c "
                       "against Li content: mean over the final ensemble's members, band: 95 % Student-t "
                       "interval over members; crosses: the labeler's own relaxation."))
    body = []
    for r in rows:
        if "volume_fu" not in r:
            body.append([html.escape(r["name"]), _fmt(r["x"], ".2f"), html.escape(r["status"]), "", "", "", ""])
            continue
        lab = _fmt(r.get("labeler_volume_fu"), ".2f") if "labeler_volume_fu" in r else "–"
        diff = f"{100 * r['volume_diff']:+.2f} %" if "volume_diff" in r else "–"
        body.append([
            html.escape(r["name"]), _fmt(r["x"], ".2f"),
            f"{r['volume_fu']:.2f} ± {r['volume_fu_band']:.2f}", f"{r['a']:.3f} ± {r['a_band']:.3f}",
            f"{r['c']:.2f} ± {r['c_band']:.2f}", lab, diff,
        ])
    out.append(_table(["structure", "x", "V/f.u. (Å³)", "a (Å)", "c (Å)", "labeler V/f.u. (Å³)",
                       "ensemble − labeler"], body))
    return out


def _metric_cells(m: dict, scale: float) -> list[str]:
    return [f"{m['rmse'] * scale:.4g}", f"{m['mae'] * scale:.4g}", f"{m['max'] * scale:.4g}", str(m["n"])]


__all__ = ["PARITY_CACHE", "STAGES", "write_report"]
