"""``remote-al run --retry-quarantined``: quarantined tasks back in the queue once their
cause is fixed, and a campaign stopped by a failed task taken up where it stopped."""

from __future__ import annotations

from driver.campaign.plan import Phase, StopKind
from driver.state import State


def retry_quarantined_tasks(state: State) -> str:
    """Requeue the quarantined tasks (not labels: their structures are failed labels with
    the reason, and later rounds were decided without them); when the campaign stopped
    because a task failed, lift that stop and go back to the phase it stopped in. Returns
    what was done, for the driver to say. Called by the engine under the campaign lock."""
    reason = state.get_meta("stop_reason", "") or ""
    failed = (state.get_meta("stop_kind", "") or "") == StopKind.FAILED.value
    if reason and not failed:
        return f"retry: nothing queued again: the campaign stopped ({reason}), not because a task failed"
    again, kept = state.requeue_quarantined()
    for key in again:
        state.event("retry", f"{key}: quarantined, queued again (--retry-quarantined)")
    if again and failed:  # take the campaign up where the failure stopped it
        phase = state.get_meta("stopped_in_phase") or Phase.ASYNC.value
        with state.transaction():
            state.set_meta("phase", phase)
            state.set_meta("stop_reason", "")
            state.set_meta("stop_kind", "")
        state.event("retry", f"the failed stop is lifted: back to phase {phase}")
    return (f"retry: {len(again)} quarantined task(s) queued again" + (f" ({', '.join(again)})" if again else "")
            + (f"; {len(kept)} label task(s) stay quarantined: their structures are kept as failed labels "
               "with the reason" if kept else ""))
