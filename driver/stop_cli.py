"""``remote-al stop``: end a campaign's local engine service.

With ``backend.engine_lifetime = "campaign"`` (the default of the local backend) the
engines run in a process of their own that outlives the driver, so a killed or
interrupted driver loses no work; it ends by itself when the campaign is done, or after
15 minutes with no task and no driver. ``remote-al stop`` ends it now, for example to
free the machine or to change ``gpu_slots``: the tasks it was running are abandoned and
the next ``remote-al run`` submits them again (a training resumes from its checkpoint,
a label batch from its journal).
"""

from __future__ import annotations

import sys

import click


def cmd_stop(campaign: str) -> int:
    from driver.backends.local_service import ServiceDir
    from driver.campaign.lock import CampaignLock
    from driver.config import campaign_directory
    from driver.errors import CampaignLocked

    directory = campaign_directory(campaign)
    if not (directory / "state.sqlite").exists():
        print(f"no campaign at {directory}", file=sys.stderr)
        return 2
    lock = CampaignLock(directory)
    try:
        lock.acquire()
    except CampaignLocked as exc:
        print(f"{exc}.\nA running driver starts the engine again: stop the driver first (Ctrl-C in its "
              "terminal, or kill it), then `remote-al stop` again.", file=sys.stderr)
        return 1
    try:
        sdir = ServiceDir(directory / "engine")
        if not sdir.alive():
            print(f"no local engine service is running for {directory}")
            return 0
        counts = sdir.counts()
        pid = (sdir.info() or {}).get("pid")
        if not sdir.stop():
            print(f"the local engine service (pid {pid}) did not end within 30 s; kill it with "
                  f"`kill -9 {pid}`", file=sys.stderr)
            return 1
        busy = counts["running"] + counts["inbox"]
        print(f"stopped the local engine service (pid {pid})"
              + (f"; {busy} tasks it had were abandoned: the next `remote-al run` submits them again"
                 if busy else "") + (f"; {counts['results']} finished results are kept" if counts["results"] else ""))
        return 0
    finally:
        lock.release()


@click.command("stop", short_help="End a campaign's local engine service.")
@click.argument("campaign")
def stop_command(campaign: str) -> int:
    """End the local engine service of CAMPAIGN (a campaign TOML or directory).

    The service runs the local backend's tasks and outlives the driver; it ends by itself
    when the campaign is done. Refused while a driver runs the campaign.
    """
    return cmd_stop(campaign)
