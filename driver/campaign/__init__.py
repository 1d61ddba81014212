"""The campaign engine (``driver/campaign/``).

- ``engine``: ``Campaign``, the tick loop (reattach, submit, collect, retry and
  quarantine, staging, progress); the only code that changes the campaign's state, by
  applying operations (``apply``);
- ``plan``: the operations (decisions as data), the ``Phase`` and ``StopKind`` enums;
- ``view``: the read-only view phases and recorders read;
- ``phases_sync``, ``phases_async``, ``phases_end``: what each phase decides;
- ``recorders``: what each task kind's result changes;
- ``requests``: the tasks a campaign creates; ``tasks``: typed tasks (kind, context);
- ``rules``: stopping, budgets, selection policy, round numbers;
- ``lock``, ``hooks``, ``progress``.
"""

from __future__ import annotations

from pathlib import Path

from driver.campaign.engine import STATE_FILE, Campaign
from driver.campaign.hooks import Hooks
from driver.campaign.lock import CampaignLock
from driver.campaign.plan import Phase, StopKind
from driver.state import State


def open_campaign_state(directory: str | Path) -> State:
    """The state of the campaign in ``directory`` (FileNotFoundError if there is none)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no campaign state at {path}")
    return State(path)


__all__ = ["Campaign", "CampaignLock", "Hooks", "Phase", "StopKind", "open_campaign_state"]
