"""``remote-al status``: a table of where a campaign is, or of all campaigns in a folder."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from driver.progress import label_progress, running_progress
from remote_al.calibration_file import Calibration
from driver.state import CONVERGED_MARK, State


def summary(directory: Path) -> dict:
    st = State(Path(directory) / "state.sqlite")
    try:
        counts = st.task_counts()
        out = {
            "campaign": Path(directory).name,
            "directory": str(directory),
            "phase": st.get_meta("phase"),
            "round": _shown_round(st),
            "stop_reason": st.get_meta("stop_reason"),
            "started": float(st.get_meta("started", "0") or 0),
            "tasks": {f"{f}/{s}": n for (f, s), n in counts.items()},
            "labels_ok": st.label_count("ok"),
            "labels_failed": st.label_count("failed"),
            "labels_asked": label_progress(st)[1],
            "running": [{"key": t.key, "function": t.function, "progress": t.progress and asdict(t.progress)}
                        for t in running_progress(st)],  # the first RUNNING_SHOWN of them
            "running_total": sum(n for (f, s), n in counts.items() if f in ("train", "md") and s == "submitted"),
            "labeler_note": next((row["labeler_note"] for row in st.labelers()), ""),
            "generations": sorted({m["generation"] for m in st.models()}),
            "rounds": st.metrics("round"),
            "converging": _converging(st),
            "generation_metrics": st.metrics("generation"),
            "final_metrics": st.metrics("final"),
            "quarantined": [
                {"key": r["key"], "error": (r["error"] or "").strip().splitlines()[-1:] }
                for r in st.tasks(status="quarantined")
            ],
            "volume": _volume_rows(st),
            "calibration": _calibration(st, Path(directory)),
            "engine_service": _engine_service(Path(directory)),
            "last_events": [
                {"ts": r["ts"], "kind": r["kind"], "message": r["message"]}
                for r in st.events(limit=8)
            ],
        }
        return out
    finally:
        st.close()


def _converging(st: State) -> str | None:
    """While a converged round's last generation trains (not yet stopped): what happens next."""
    if st.get_meta("stop_reason"):
        return None
    marked = [(r, m[CONVERGED_MARK]) for r, m in st.metrics("round").items() if m.get(CONVERGED_MARK) is not None]
    if not marked:
        return None
    r, share = max(marked)
    return (f"round {r} reached the converged share ({share:.1%} confident): generation {r} trains on its last "
            "selections, then the campaign stops")


def _engine_service(directory: Path) -> dict | None:
    from driver.backends.local_service import service_status

    return service_status(directory / "engine")


def _shown_round(st: State) -> int:
    """The round as the user counts it (never past the campaign's last; see
    driver.campaign.view.CampaignView.shown_round)."""
    r = int(st.get_meta("round", "0"))
    last = json.loads(st.get_meta("config_json") or "{}").get("campaign", {}).get("max_rounds")
    return min(r, last) if isinstance(last, int) else r


def _calibration(st: State, directory: Path) -> dict:
    """The threshold settings the campaign runs with and each generation's calibration."""
    from remote_al.calibration_file import read_calibration

    raw = json.loads(st.get_meta("config_json") or "{}").get("selection", {})
    gens = sorted({m["generation"] for m in st.models()})
    cals = {g: c.to_dict() for g in gens if (c := read_calibration(directory, g)) is not None}
    return {"mode": raw.get("force_threshold_mode", "fixed"), "force_threshold": raw.get("force_threshold"),
            "target_force_error": raw.get("target_force_error"), "generations": cals}


def _volume_rows(st: State) -> list[dict]:
    """The volume-change table (driver.volume) when the campaign has relaxation results."""
    if not st.has_function("relax", "relax_label"):
        return []
    raw = st.get_meta("config_json")
    if not raw:
        return []
    from driver import volume
    from driver.config import parse_config

    return volume.summarize(st, parse_config(json.loads(raw)))


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


# What happened to each explored frame of a round (the round metrics' decision counts);
# with "undecided" (explored, not decided yet) they add up to the frames explored.
ROUND_COUNTS = (("n_selected", "selected"), ("n_test", "held out"), ("n_confident", "confident"),
                ("n_unphysical", "unphysical"), ("n_filtered", "filtered"), ("n_duplicate", "duplicate"),
                ("n_skipped", "skipped"))
TASK_STATUSES = ("pending", "submitted", "done", "failed", "quarantined")


def round_counts(metrics: dict) -> dict[str, int]:
    """A round's explored frames split by decision, plus ``undecided`` for those not decided
    yet (async exploration, a round in progress): the values add up to ``explored``."""
    counts = {label: int(metrics.get(key) or 0) for key, label in ROUND_COUNTS}
    explored = int(metrics.get("n_explored") or 0)
    counts["undecided"] = max(0, explored - sum(counts.values()))
    return {"explored": max(explored, sum(counts.values())), **counts}


def task_table_rows(tasks: dict[str, int]) -> tuple[list[str], list[list[int]]]:
    """``{"function/status": n}`` as a function-by-status grid with a total column and a
    total row: ``(statuses, rows)``, each row ``[function, n per status..., total]``."""
    grid: dict[str, dict[str, int]] = {}
    for key, n in tasks.items():
        function, status = key.split("/", 1)
        grid.setdefault(function, {})[status] = n
    seen = {st for row in grid.values() for st in row}
    statuses = [st for st in TASK_STATUSES if st in seen] + sorted(seen - set(TASK_STATUSES))
    rows = [[f, *[grid[f].get(st, 0) for st in statuses], sum(grid[f].values())] for f in sorted(grid)]
    if rows:
        rows.append(["all", *[sum(r[i + 1] for r in rows) for i in range(len(statuses))], sum(tasks.values())])
    return statuses, rows


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def column_widths(header, rows, width: int) -> list[int] | None:
    """Widths that fit a table in ``width`` terminal columns without breaking a word
    (headers and cells wrap between words), or None when its natural widths already fit
    or when even a word per line does not (then rich folds what it must)."""
    columns = list(zip(header, *rows))
    room = width - 3 * len(header) - 1  # padding and a border per column, and the last border
    if sum(max(len(str(v)) for v in col) for col in columns) <= room:
        return None
    narrow = [max(_longest_word(str(v)) for v in col) for col in columns]
    if sum(narrow) > room:
        return None
    for i, col in enumerate(columns):  # the room left unwraps what it can, left to right
        natural = max(len(str(v)) for v in col)
        narrow[i] += min(natural - narrow[i], room - sum(narrow))
    return narrow


def _table(title: str, header, rows, width: int, first_left: bool = False, bold_first: str = ""):
    """A rich table that fits ``width`` terminal columns: headers and cells wrap between
    words where that is enough (:func:`column_widths`), else fold; nothing is cut."""
    from rich.table import Table

    widths = column_widths(header, rows, width) or [None] * len(header)
    t = Table(title=title, title_justify="left")
    for i, (col, w) in enumerate(zip(header, widths)):
        t.add_column(col, justify="left" if first_left and i == 0 else "right", overflow="fold", width=w)
    for row in rows:
        t.add_row(*map(str, row), style="bold" if bold_first and row[0] == bold_first else None)
    return t


def status_tables(s: dict, width: int = 80) -> list:
    """The rich tables (and notes) of :func:`print_status`, built from :func:`summary`'s
    dict. The rounds table has a column per round (a row per count), so it stays narrow."""
    tables = []
    rounds = sorted(s["rounds"].items())
    counts = [round_counts(m) for _, m in rounds]
    rows = [[key if key == "explored" else f"  {key}", *[c[key] for c in counts]]
            for key in ("explored", *[label for _, label in ROUND_COUNTS], "undecided")]
    rows += [[label, *[_fmt(m.get(key), spec) for _, m in rounds]]
             for key, label, spec in (("confident_share", "confident share", ".2f"),
                                      ("force_width_median", "F width median eV/A", ".3f"),
                                      ("force_width_p90", "F width p90 eV/A", ".3f"))]
    if rounds:
        tables.append(_table("rounds (explored = the rows under it)", ("round", *[str(r) for r, _ in rounds]), rows,
                             width, first_left=True, bold_first="explored"))
    else:
        tables.append("rounds: no exploration round finished yet")
    rows = []
    for g in s["generations"]:
        m = s["generation_metrics"].get(g, {})
        f = s["final_metrics"].get(g, {})
        rows.append([g, _fmt(m.get("n_test"), ".0f"), _fmt(m.get("energy_rmse_meV_atom"), ".2f"),
                     _fmt(m.get("force_rmse_eV_A")), _fmt(f.get("n_test"), ".0f"),
                     _fmt(f.get("energy_rmse_meV_atom"), ".2f"), _fmt(f.get("force_rmse_eV_A")),
                     _fmt(f.get("force_inside_ci"), ".2f")])
    tables.append(_table("generations on held-out frames (final: all generations on the full held-out set)",
                         ("generation", "n test", "E RMSE meV/atom", "F RMSE eV/A", "final n", "final E RMSE",
                          "final F RMSE", "inside 95% CI"), rows, width))
    c = s["calibration"]
    if c["generations"]:
        how = (f"calibrated: 95 % force error target {_fmt(c['target_force_error'], 'g')} eV/A"
               if c["mode"] == "calibrated" else f"fixed width threshold {_fmt(c['force_threshold'], 'g')} eV/A")
        target = c["target_force_error"]  # None with a fixed threshold and no target set
        rows = []
        for g, cal in sorted(c["generations"].items()):
            used = s["generation_metrics"].get(g, {}).get("force_threshold")
            frame = Calibration.from_dict(cal).frame_scale
            rows.append([g, f"{cal['force_scale']:.2f}", f"{frame:.2f}", f"{cal['energy_scale']:.2f}", cal["n_frames"],
                         f"{'yes' if cal['force_calibrated'] else 'no'}/{'yes' if cal['energy_calibrated'] else 'no'}",
                         _fmt(target / frame if target else None),
                         _fmt(used) if c["mode"] == "calibrated" else _fmt(c["force_threshold"], "g")])
        tables.append(_table(f"calibrated 95 % bounds per generation (threshold {how})",
                             ("generation", "F bound / width (atom)", "(frame)", "E bound / width", "frames",
                              "calibrated F/E",
                              f"width for {target:g} eV/A" if target else "width for a target", "threshold used"),
                             rows, width))
    statuses, rows = task_table_rows(s["tasks"])
    tables.append(_table("tasks", ("function", *statuses, "total"), rows, width,
                         first_left=True, bold_first="all"))
    if s["running"]:
        from driver.progress import PROGRESS_COLUMNS, Progress, TaskProgress, progress_rows

        tasks = [TaskProgress(r["key"], r["function"], r["progress"] and Progress(**r["progress"]))
                 for r in s["running"]]
        more = s.get("running_total", len(tasks)) - len(tasks)
        tables.append(_table("running: training members and MD (from their lcurve.out and trajectory)"
                             + (f"; the first {len(tasks)}, {more} more not shown" if more > 0 else ""),
                             PROGRESS_COLUMNS, progress_rows(tasks), width, first_left=True))
    return tables


def print_status(directory: Path, as_json: bool = False) -> None:
    s = summary(Path(directory))
    if as_json:
        print(json.dumps(s, indent=2, default=str))
        return
    from rich.console import Console

    con = Console()
    con.print(f"[bold]{s['campaign']}[/bold]  {s['directory']}", overflow="fold")
    state = (s["phase"] or "not started") + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    con.print(f"round {s['round']}, phase {state}; labels ok {s['labels_ok']}, failed {s['labels_failed']} "
              f"(of {s['labels_asked']} asked)")
    if s["converging"]:
        con.print(f"converging: {s['converging']}", markup=False, highlight=False)
    if s["labeler_note"]:
        con.print(f"labeler: {s['labeler_note']}")
    if s["engine_service"]:
        con.print(_engine_line(s["engine_service"]), markup=False, highlight=False)
    for t in status_tables(s, con.width):
        con.print(t)
    if s["volume"]:
        from driver.volume import format_table

        con.print("[bold]volume against Li content[/bold] (final ensemble: mean ± 95 % band over members)")
        for line in format_table(s["volume"]):
            con.print(line, markup=False, highlight=False, overflow="fold")
    for q in s["quarantined"]:
        con.print(f"[red]quarantined[/red] {q['key']}: {' '.join(q['error'])}")
    for e in reversed(s["last_events"]):
        con.print(f"{time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['kind']}: {e['message']}",
                  markup=False, highlight=False)


def _engine_line(e: dict) -> str:
    """One line on the local engine service (docs/steering.md)."""
    busy = f"{e['running']} running, {e['inbox']} queued, {e['results']} finished and not yet recorded"
    if e["alive"]:
        return f"local engine service: up (pid {e['pid']}): {busy}"
    left = e["running"] + e["inbox"]
    return ("local engine service: not running" + (f"; {left} tasks it had are submitted again by the next "
                                                  "`remote-al run`" if left else ""))


def list_campaigns(root: Path) -> None:
    from rich.console import Console

    root = Path(root)
    dirs = sorted(p.parent for p in root.glob("*/state.sqlite")) if root.exists() else []
    con = Console()
    if not dirs:
        con.print(f"no campaigns under {root}/ (each campaign directory holds a state.sqlite)")
        return
    rows = []
    for d in dirs:
        s = summary(d)
        rows.append([s["campaign"], s["round"], s["phase"] or "-", s["labels_ok"], len(s["generations"]),
                     s["stop_reason"] or ""])
    con.print(_table(f"campaigns in {root}", ("campaign", "round", "phase", "labels", "generations", "stop reason"),
                     rows, con.width, first_left=True))
