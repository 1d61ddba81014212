"""``remote-al status``: a table of where a campaign is, or of all campaigns in a folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from driver.state import State


def summary(directory: Path) -> dict:
    st = State(Path(directory) / "state.sqlite")
    try:
        db = st.db
        out = {
            "campaign": Path(directory).name,
            "directory": str(directory),
            "phase": st.get_meta("phase"),
            "round": int(st.get_meta("round", "0")),
            "stop_reason": st.get_meta("stop_reason"),
            "started": float(st.get_meta("started", "0") or 0),
            "tasks": {f"{f}/{s}": n for (f, s), n in st.task_counts().items()},
            "labels_ok": db.execute("SELECT COUNT(*) FROM labels WHERE status='ok'").fetchone()[0],
            "labels_failed": db.execute("SELECT COUNT(*) FROM labels WHERE status='failed'").fetchone()[0],
            "labeler_note": (db.execute("SELECT labeler_note FROM labels WHERE status='ok' LIMIT 1").fetchone() or [""])[0],
            "generations": sorted({m["generation"] for m in st.models()}),
            "rounds": st.metrics("round"),
            "generation_metrics": st.metrics("generation"),
            "final_metrics": st.metrics("final"),
            "quarantined": [
                {"key": r["key"], "error": (r["error"] or "").strip().splitlines()[-1:] }
                for r in st.tasks(status="quarantined")
            ],
            "volume": _volume_rows(st),
            "calibration": _calibration(st, Path(directory)),
            "last_events": [
                {"ts": r["ts"], "kind": r["kind"], "message": r["message"]}
                for r in db.execute("SELECT * FROM events ORDER BY id DESC LIMIT 8")
            ],
        }
        return out
    finally:
        st.close()


def _calibration(st: State, directory: Path) -> dict:
    """The threshold settings the campaign runs with and each generation's calibration."""
    from remote_al.calibration import read_calibration

    raw = json.loads(st.get_meta("config_json") or "{}").get("selection", {})
    gens = sorted({m["generation"] for m in st.models()})
    cals = {g: c.to_dict() for g in gens if (c := read_calibration(directory, g)) is not None}
    return {"mode": raw.get("force_threshold_mode", "fixed"), "force_threshold": raw.get("force_threshold"),
            "target_force_error": raw.get("target_force_error"), "generations": cals}


def _volume_rows(st: State) -> list[dict]:
    """The volume-change table (driver.volume) when the campaign has relaxation results."""
    if not st.db.execute("SELECT 1 FROM tasks WHERE function IN ('relax', 'relax_label') LIMIT 1").fetchone():
        return []
    raw = st.get_meta("config_json")
    if not raw:
        return []
    from driver import volume
    from driver.config import parse_config

    return volume.summarize(st, parse_config(json.loads(raw)))


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def print_status(directory: Path, as_json: bool = False) -> None:
    s = summary(Path(directory))
    if as_json:
        print(json.dumps(s, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{s['campaign']}[/bold]  {s['directory']}")
    state = s["phase"] + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    con.print(f"round {s['round']}, phase {state}; labels ok {s['labels_ok']}, failed {s['labels_failed']}")
    if s["labeler_note"]:
        con.print(f"labeler: {s['labeler_note']}")
    t = Table(title="rounds")
    for col in ("round", "explored", "confident share", "selected", "unphysical", "filtered", "dup", "test", "F width median", "F width p90"):
        t.add_column(col, justify="right")
    for r, m in sorted(s["rounds"].items()):
        t.add_row(str(r), _fmt(m.get("n_explored"), ".0f"), _fmt(m.get("confident_share"), ".2f"),
                  _fmt(m.get("n_selected"), ".0f"), _fmt(m.get("n_unphysical"), ".0f"), _fmt(m.get("n_filtered"), ".0f"),
                  _fmt(m.get("n_duplicate"), ".0f"), _fmt(m.get("n_test"), ".0f"),
                  _fmt(m.get("force_width_median")), _fmt(m.get("force_width_p90")))
    con.print(t)
    t = Table(title="generations on held-out frames (final: all generations on the full held-out set)")
    for col in ("generation", "n test", "E RMSE meV/atom", "F RMSE eV/A", "final n", "final E RMSE", "final F RMSE", "inside 95% CI"):
        t.add_column(col, justify="right")
    for g in s["generations"]:
        m = s["generation_metrics"].get(g, {})
        f = s["final_metrics"].get(g, {})
        t.add_row(str(g), _fmt(m.get("n_test"), ".0f"), _fmt(m.get("energy_rmse_meV_atom"), ".2f"), _fmt(m.get("force_rmse_eV_A")),
                  _fmt(f.get("n_test"), ".0f"), _fmt(f.get("energy_rmse_meV_atom"), ".2f"), _fmt(f.get("force_rmse_eV_A")),
                  _fmt(f.get("force_inside_ci"), ".2f"))
    con.print(t)
    c = s["calibration"]
    if c["generations"]:
        how = (f"calibrated: 95 % force error target {c['target_force_error']:g} eV/A" if c["mode"] == "calibrated"
               else f"fixed width threshold {c['force_threshold']:g} eV/A")
        t = Table(title=f"calibrated 95 % bounds per generation (threshold {how})")
        for col in ("generation", "F bound / width", "E bound / width", "frames", "calibrated F/E",
                    f"width for {c['target_force_error']:g} eV/A", "threshold used"):
            t.add_column(col, justify="right")
        for g, cal in sorted(c["generations"].items()):
            used = s["generation_metrics"].get(g, {}).get("force_threshold")
            t.add_row(str(g), f"{cal['force_scale']:.2f}", f"{cal['energy_scale']:.2f}", str(cal["n_frames"]),
                      f"{'yes' if cal['force_calibrated'] else 'no'}/{'yes' if cal['energy_calibrated'] else 'no'}",
                      f"{c['target_force_error'] / cal['force_scale']:.3f}",
                      _fmt(used) if c["mode"] == "calibrated" else f"{c['force_threshold']:g}")
        con.print(t)
    t = Table(title="tasks")
    t.add_column("function/status")
    t.add_column("n", justify="right")
    for k, n in sorted(s["tasks"].items()):
        t.add_row(k, str(n))
    con.print(t)
    if s["volume"]:
        from driver.volume import format_table

        con.print("[bold]volume against Li content[/bold] (final ensemble: mean ± 95 % band over members)")
        for line in format_table(s["volume"]):
            con.print(line, markup=False, highlight=False)
    for q in s["quarantined"]:
        con.print(f"[red]quarantined[/red] {q['key']}: {' '.join(q['error'])}")
    for e in reversed(s["last_events"]):
        con.print(f"{time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['kind']}: {e['message']}")


def list_campaigns(root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    root = Path(root)
    dirs = sorted(p.parent for p in root.glob("*/state.sqlite")) if root.exists() else []
    con = Console()
    if not dirs:
        con.print(f"no campaigns under {root}/ (each campaign directory holds a state.sqlite)")
        return
    t = Table(title=f"campaigns in {root}")
    for col in ("campaign", "round", "phase", "labels", "generations", "stop reason"):
        t.add_column(col)
    for d in dirs:
        s = summary(d)
        t.add_row(s["campaign"], str(s["round"]), s["phase"] or "-", str(s["labels_ok"]),
                  str(len(s["generations"])), s["stop_reason"] or "")
    con.print(t)
