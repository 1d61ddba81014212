"""The progress line the driver prints while it runs."""

from __future__ import annotations

from driver.campaign.view import CampaignView


def hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(view: CampaignView, counts: dict[tuple[str, str], int], running: dict[str, int],
                  slots: dict[str, int], now: float) -> str:
    """One line: elapsed time, round and phase, tasks running per pool and queued, labels,
    and the current round's force-width median and 90th percentile."""
    pending = sum(v for (_, st), v in counts.items() if st == "pending")
    budget = view.cfg.campaign.max_label_calls
    rm = view.metrics("round").get(view.round, {})
    unc = ""
    if rm.get("force_width_median") is not None:
        unc = f" | force CI width median {rm['force_width_median']:.3f} p90 {rm['force_width_p90']:.3f} eV/A"
    elapsed = now - (view.started or now)
    return (
        f"[{hms(elapsed)}] round {view.shown_round} {view.phase.value} | running gpu {running['gpu']}/{slots['gpu']} "
        f"cpu {running['cpu']}/{slots['cpu']}, queued {pending} | labels {view.label_count('ok')}"
        f"{'/' + str(budget) if budget else ''} ok, {view.label_count('failed')} failed of "
        f"{view.labels_asked()} asked{unc}"
    )
