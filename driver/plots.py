"""Report figures: each function takes plain arrays/dicts and writes one PNG (Agg, no pyplot).

No state, no campaign files: ``driver.report`` gathers the data and calls these. Every
function returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from driver.metrics import CalibrationTable, parity_metrics, running_mean

LCURVE_SMOOTHING = 10  # a learning curve's running mean spans a tenth of its points


def _figure(nrows: int, ncols: int, figsize, **kw):
    """A figure and its axes, without pyplot: no global figure registry, no GUI backend;
    ``savefig`` renders with Agg."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kw)


def _log_axis(ax, which: str) -> None:
    """Log scale labelled 0.1, 0.2, 0.5, 1, 2, 5, ... in plain numbers (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    wide = lo > 0 and hi / lo > 1e3
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _colours() -> list[str]:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- learning curves
def plot_learning_curves(curves: Mapping[str, Mapping[str, np.ndarray]], path, title: str = "") -> Path:
    """Energy and force RMSE against training step, one colour per member, log y.

    ``curves`` maps a member label to ``remote_al.deepmd_data.parse_lcurve`` columns.
    Training columns (``rmse_e_trn``, ``rmse_f_trn``) are solid lines, validation
    columns (``rmse_e_val``, ``rmse_f_val``) dashed when present. Each curve is drawn
    faint as recorded, with its running mean (:func:`driver.metrics.running_mean`,
    over a tenth of its points) on top; the legend sits to the right of the panels.
    """
    fig, axes = _figure(1, 2, (10, 3.8))
    panels = (("e", "energy RMSE (eV/atom)"), ("f", "force RMSE (eV/Å)"))
    colours = _colours()
    for ax, (q, ylabel) in zip(axes, panels):
        drawn = False
        for i, (label, cols) in enumerate(curves.items()):
            step = np.asarray(cols.get("step", []), dtype=float)
            c = colours[i % len(colours)]
            for split, style in (("trn", "-"), ("val", "--")):
                y = np.asarray(cols.get(f"rmse_{q}_{split}", []), dtype=float)
                ok = np.isfinite(y) & (y > 0)
                if y.size and y.size == step.size and ok.any():
                    ax.plot(step[ok], y[ok], style, color=c, lw=0.7, alpha=0.25)
                    ax.plot(step[ok], running_mean(y[ok], max(1, int(ok.sum()) // LCURVE_SMOOTHING)), style,
                            color=c, lw=1.5, label=f"{label} {'train' if split == 'trn' else 'validation'}")
                    drawn = True
        if drawn:
            _log_axis(ax, "y")
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        else:
            _no_data(ax, "no learning-curve data")
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper", ncol=1 + len(handles) // 16,
                   title="running mean\n(faint: as recorded)", title_fontsize=7)
    fig.suptitle(title or "learning curves (solid: train, dashed: validation)")
    return _save(fig, path)


# ------------------------------------------------------------------------ parity
def _parity_panel(ax, pred, ref, quantity: str, unit: str, bound=None) -> None:
    pred = np.asarray(pred, dtype=float).ravel()
    ref = np.asarray(ref, dtype=float).ravel()
    m = parity_metrics(pred, ref)
    if bound is not None:  # calibrated 95 % error bars
        ax.errorbar(ref, pred, yerr=np.asarray(bound, dtype=float).ravel(), fmt="none", ecolor="0.6",
                    elinewidth=0.6, alpha=0.5, zorder=1)
    ax.scatter(ref, pred, s=6 if pred.size > 200 else 14, alpha=0.6, edgecolors="none", zorder=2)
    finite = np.concatenate([pred[np.isfinite(pred)], ref[np.isfinite(ref)]])
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"label {quantity} ({unit})")
    ax.set_ylabel(f"ensemble mean {quantity} ({unit})")
    scale = 1000.0 if unit == "eV/atom" else 1.0
    shown = "meV/atom" if unit == "eV/atom" else unit
    ax.text(
        0.04, 0.96,
        f"RMSE {m['rmse'] * scale:.3g} {shown}\nMAE {m['mae'] * scale:.3g} {shown}\n"
        f"max {m['max'] * scale:.3g} {shown}\nn = {m['n']}",
        transform=ax.transAxes, va="top", ha="left", fontsize=8,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8),
    )


def plot_parity(
    energy_pred, energy_ref, path, force_pred=None, force_ref=None, title: str = "", note: str = "",
    energy_bound=None, force_bound=None,
) -> Path:
    """Energy per atom (eV/atom) and force components (eV/Å) against the labels, with the
    calibrated 95 % bounds as error bars where given.

    RMSE, MAE, max |error| and the count are written on each panel. Without force data
    the force panel shows ``note`` instead.
    """
    fig, axes = _figure(1, 2, (9.5, 4.4))
    if energy_pred is not None and len(energy_pred):
        _parity_panel(axes[0], energy_pred, energy_ref, "energy", "eV/atom", energy_bound)
    else:
        _no_data(axes[0], note or "no energy predictions")
    if force_pred is not None and len(force_pred):
        _parity_panel(axes[1], force_pred, force_ref, "force component", "eV/Å", force_bound)
    else:
        _no_data(axes[1], note or "no force predictions")
    fig.suptitle(title or "parity on held-out frames")
    return _save(fig, path)


# ------------------------------------------------------------------- calibration
def plot_calibration(
    widths, errors, table: CalibrationTable, path, what: str = "force component", unit: str = "eV/Å"
) -> Path:
    """Left: CI width against true |error| (log-log) with the ``|error| = width / 2`` line
    (points below it lie inside the interval). Right: share of errors inside the interval
    per width bin against the nominal confidence."""
    w = np.asarray(widths, dtype=float).ravel()
    e = np.abs(np.asarray(errors, dtype=float).ravel())
    ok = np.isfinite(w) & np.isfinite(e) & (w > 0) & (e > 0)
    fig, axes = _figure(1, 2, (10, 4.2))
    ax = axes[0]
    if ok.any():
        ax.scatter(w[ok], e[ok], s=5 if ok.sum() > 300 else 12, alpha=0.5, edgecolors="none")
        xs = np.array([w[ok].min(), w[ok].max()])
        ax.plot(xs, xs / 2, "k--", lw=1, label="|error| = width / 2 (CI edge)")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        ax.legend(fontsize=8, loc="upper left")
    else:
        _no_data(ax, "no positive (width, error) pairs")
    ax.set_xlabel(f"{table.confidence:.0%} CI width, {what} ({unit})")
    ax.set_ylabel(f"true |error|, {what} ({unit})")
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    centres = np.array(table.width_median)
    ax.plot(centres, table.inside_share, "o-", label="observed, per width bin")
    ax.axhline(table.confidence, color="k", ls="--", lw=1, label=f"nominal {table.confidence:.0%}")
    for x, share, n in zip(centres, table.inside_share, table.n):
        ax.annotate(f"n={n}", (x, share), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    if centres.size and np.all(centres > 0):
        _log_axis(ax, "x")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"bin median CI width ({unit})")
    ax.set_ylabel("share of errors inside the interval")
    ax.set_title(f"overall {table.overall_inside:.1%} inside (n = {table.n_total})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("uncertainty calibration on held-out frames")
    return _save(fig, path)


def plot_reliability(curves: Mapping[str, Mapping[str, Mapping[float, float]]], path) -> Path:
    """Observed against nominal coverage of the calibrated bounds, one line per generation,
    forces and energies side by side (``curves[quantity][label] = {level: observed}``)."""
    fig, axes = _figure(1, 2, (9.5, 4.2))
    for ax, quantity in zip(axes, ("forces (per atom)", "energies (per frame)")):
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="ideal")
        for (label, rel), colour in zip(curves.get(quantity, {}).items(), _colours()):
            levels = sorted(rel)
            ax.plot(levels, [rel[x] for x in levels], "o-", color=colour, label=label, ms=4)
        ax.set_xlim(0.4, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("observed coverage")
        ax.set_title(quantity, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("reliability of the calibrated bounds (held-out frames, cross-validated by frame)")
    return _save(fig, path)


# --------------------------------------------------------------------- per round
def plot_uncertainty_histograms(
    widths_by_round: Mapping[int, Sequence[float]], path, threshold: float, upper: float | None = None
) -> Path:
    """One histogram of frame force widths per exploration round (log x), with the
    selection threshold (and the trust bound ``upper``) as vertical lines."""
    rounds = sorted(r for r, w in widths_by_round.items() if len(w))
    n = max(1, len(rounds))
    fig, axes = _figure(n, 1, (7, 1.9 * n + 0.6), sharex=True, squeeze=False)
    allw = np.concatenate([np.asarray(widths_by_round[r], dtype=float) for r in rounds]) if rounds else np.array([])
    allw = allw[np.isfinite(allw) & (allw > 0)]
    if not rounds or not allw.size:
        _no_data(axes[0, 0], "no explored frames with a force width yet")
        return _save(fig, path)
    lo = min(allw.min(), threshold if threshold > 0 else allw.min()) * 0.8  # a log axis: no 0
    hi = max(allw.max(), threshold, upper if upper and upper < 10 * allw.max() else 0) * 1.25
    edges = np.geomspace(lo, hi, 30)
    for ax, r in zip(axes[:, 0], rounds):
        w = np.asarray(widths_by_round[r], dtype=float)
        w = w[np.isfinite(w) & (w > 0)]
        ax.hist(np.clip(w, lo, hi), bins=edges, color="C0", alpha=0.8)
        if threshold > 0:
            ax.axvline(threshold, color="C3", lw=1.5, label=f"threshold {threshold:g} eV/Å")
        if upper is not None and upper <= hi:
            ax.axvline(upper, color="k", lw=1, ls="--", label=f"trust bound {upper:g} eV/Å")
        share = float(np.mean(w <= threshold)) if w.size else float("nan")
        ax.set_ylabel(f"round {r}\nframes", fontsize=8)
        ax.text(0.99, 0.9, f"{w.size} frames, {share:.0%} ≤ threshold", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7, loc="upper left")
    ax = axes[-1, 0]
    _log_axis(ax, "x")
    ax.set_xlabel("force CI width of a frame (max over atoms and components, eV/Å)")
    fig.suptitle("ensemble uncertainty of explored frames per round")
    return _save(fig, path)


def plot_rounds(
    labels_by_round: Mapping[int, Mapping[str, int]], confident_share: Mapping[int, float], path
) -> Path:
    """Left: labels per round, stacked by kind (e.g. ``train``, ``test``, ``failed``).
    Right: share of explored frames predicted confidently per round."""
    fig, axes = _figure(1, 2, (10, 3.6))
    ax = axes[0]
    rounds = sorted(labels_by_round)
    if rounds:
        kinds = sorted({k for v in labels_by_round.values() for k in v}, key=lambda k: (k != "train", k))
        bottom = np.zeros(len(rounds))
        for k in kinds:
            vals = np.array([labels_by_round[r].get(k, 0) for r in rounds], dtype=float)
            ax.bar(rounds, vals, bottom=bottom, label=k)
            bottom += vals
        ax.set_xticks(rounds)
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no labels yet")
    ax.set_xlabel("round")
    ax.set_ylabel("labeled structures")
    ax.set_title("labels per round", fontsize=10)
    ax = axes[1]
    rs = sorted(r for r, v in confident_share.items() if v is not None)
    if rs:
        ax.plot(rs, [confident_share[r] for r in rs], "o-")
        ax.set_xticks(rs)
        ax.set_ylim(-0.03, 1.05)
    else:
        _no_data(ax, "no exploration round finished yet")
    ax.set_xlabel("round")
    ax.set_ylabel("confident share of explored frames")
    ax.set_title("confident share per round", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------- sweep
def _pref_label(start, limit) -> str:
    return f"{start:g}→{limit:g}"


def plot_sweep_heatmap(rows: Sequence[Mapping], path) -> Path:
    """Energy and force RMSE of each prefactor point: rows are energy prefactors
    (start→limit), columns force prefactors; cells without a finished point are blank."""
    e_keys = sorted({(r["start_pref_e"], r["limit_pref_e"]) for r in rows})
    f_keys = sorted({(r["start_pref_f"], r["limit_pref_f"]) for r in rows})
    fig, axes = _figure(1, 2, (4 + 2.2 * max(1, len(f_keys)), 1.6 + 0.9 * max(1, len(e_keys))), squeeze=False)
    panels = (("energy_rmse_meV_atom", "energy RMSE (meV/atom)"), ("force_rmse_eV_A", "force RMSE (eV/Å)"))
    for ax, (key, title) in zip(axes[0], panels):
        grid = np.full((len(e_keys), len(f_keys)), np.nan)
        for r in rows:
            v = r.get(key)
            if v is not None:
                grid[e_keys.index((r["start_pref_e"], r["limit_pref_e"])),
                     f_keys.index((r["start_pref_f"], r["limit_pref_f"]))] = float(v)
        if not np.isfinite(grid).any():
            _no_data(ax, "no finished points")
            ax.set_title(title, fontsize=10)
            continue
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.85)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] > mid else "black")
        ax.set_xticks(range(len(f_keys)), [_pref_label(*k) for k in f_keys], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(e_keys)), [_pref_label(*k) for k in e_keys], fontsize=8)
        ax.set_xlabel("force prefactor start→limit")
        ax.set_ylabel("energy prefactor start→limit")
        ax.set_title(title, fontsize=10)
    fig.suptitle("prefactor sweep on held-out frames")
    return _save(fig, path)


__all__ = [
    "plot_calibration",
    "plot_reliability",
    "plot_learning_curves",
    "plot_parity",
    "plot_rounds",
    "plot_sweep_heatmap",
    "plot_uncertainty_histograms",
]


# ------------------------------------------------------------------ volume curve
def plot_volume_curve(rows: Sequence[Mapping], path) -> Path:
    """Relaxed volume per formula unit, a and c against Li content x, one curve per
    transition-metal family: the ensemble mean with its band, the labeler's checks as crosses."""
    fig, axes = _figure(1, 3, (13, 4.0))
    quantities = [("volume_fu", "labeler_volume_fu", "V per formula unit (Å³)"),
                  ("a", "labeler_a", "a (Å)"), ("c", "labeler_c", "c (Å)")]
    done = [r for r in rows if "volume_fu" in r]
    if not done:
        for ax in axes:
            _no_data(ax, "no relaxation results yet")
        return _save(fig, path)
    colours = _colours()
    families = sorted({r["family"] for r in done})
    for ax, (key, lab_key, label) in zip(axes, quantities):
        for i, fam in enumerate(families):
            pts = sorted((r for r in done if r["family"] == fam), key=lambda r: r["x"])
            x = np.array([r["x"] for r in pts])
            y = np.array([r[key] for r in pts])
            band = np.array([r[key + "_band"] for r in pts])
            col = colours[i % len(colours)]
            ax.plot(x, y, "o-", color=col, label=f"{fam} (ensemble)")
            ax.fill_between(x, y - band, y + band, color=col, alpha=0.25, linewidth=0)
            chk = [r for r in pts if lab_key in r]
            if chk:
                ax.plot([r["x"] for r in chk], [r[lab_key] for r in chk], "x", color=col, markersize=9,
                        markeredgewidth=2, label=f"{fam} ({chk[0].get('labeler', 'labeler')})")
        ax.set_xlabel("Li content x")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Relaxed lattice against Li content: ensemble mean with its 95 % band; crosses: labeler")
    return _save(fig, path)
