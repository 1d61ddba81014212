"""One driver per campaign: an exclusive lock on the campaign directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from driver.errors import CampaignLocked


class CampaignLock:
    """An exclusive ``flock`` on ``driver.lock`` in the campaign directory, released by
    the OS if the driver dies. The file names its holder while held and is removed on
    release, so a stale file never suggests a driver that is not running."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / "driver.lock"
        self._fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise CampaignLocked(
                    f"campaign {self.path.parent} is being run by {holder}; "
                    "wait for it to finish or stop it first (one driver per campaign)"
                ) from None
            # the holder before us may have removed the file between our open and our
            # lock: then we hold a lock on a file nobody else will see; open it again
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"driver pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh:
            self.path.unlink(missing_ok=True)  # while still held: nobody can take a file about to vanish
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
