"""Is the code this driver runs still the code on disk?

A driver imports some of its modules only when it first needs them (the calibration at a
generation's first evaluation, the volume curve at the end). When remote-al is upgraded or
edited while a driver runs, such a late import reads the new files into a process that runs
the old ones, and a result can be recorded by two versions at once: in one campaign an
evaluation's calibration could not be recorded that way, and was quarantined.

:class:`CodeWatch` takes the size and modification time of every ``.py`` file of the
``driver`` and ``remote_al`` packages when the driver starts and compares them before the
driver records anything. On a change the campaign stops with :class:`CodeChanged` before
it records anything more: what ran keeps running (the backend is shut down, not finished),
results not yet recorded stay with the backend and are reattached by the next driver,
nothing is lost. ``remote-al run`` then waits until the files have been still for a while
(an upgrade writes them one by one) and starts itself again on the new code
(``--on-code-change stop`` ends instead, with exit status 75). The engine's workers and a
remote endpoint are not watched: they import what their own processes started with.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from remote_al.errors import RemoteALError

QUIET_S = float(os.environ.get("REMOTE_AL_CODE_QUIET_S", "10"))  # still this long before a restart
WAIT_S = 600.0  # give up waiting for still files after this long (then exit: start it by hand)
EXIT_CODE_CHANGED = 75  # EX_TEMPFAIL: stopped to be started again


class CodeChanged(RemoteALError):
    """The files of the running code changed on disk; the driver stopped before it recorded
    anything with two versions. ``files``: what changed, relative to the packages' folder."""

    def __init__(self, files: list[str]):
        self.files = files
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        super().__init__(f"remote-al's code changed on disk while this driver ran ({shown}): the driver stopped "
                         "before recording anything with mixed versions; what runs goes on and nothing is lost "
                         "(fix: start the same `remote-al run` again; it resumes on the new code)")


def package_roots() -> list[Path]:
    """The folders of the ``driver`` and ``remote_al`` packages this process imported."""
    import driver
    import remote_al

    return [Path(driver.__file__).resolve().parent, Path(remote_al.__file__).resolve().parent]


def snapshot(roots: Iterable[Path]) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every ``.py`` file under ``roots``, by path relative to their parent."""
    out = {}
    for root in roots:
        for path in Path(root).rglob("*.py"):
            try:
                st = path.stat()
            except OSError:  # removed while listed: missing from the snapshot
                continue
            out[str(path.relative_to(Path(root).parent))] = (st.st_mtime_ns, st.st_size)
    return out


def code_digest(roots: Iterable[Path] | None = None) -> str:
    """A short digest of :func:`snapshot`: two processes started on the same files agree (the
    local engine service records it, and a driver on newer code restarts an idle one)."""
    import hashlib

    snap = snapshot(package_roots() if roots is None else roots)
    return hashlib.sha256(json.dumps(sorted(snap.items())).encode()).hexdigest()[:16]


class CodeWatch:
    """Compares the watched folders' ``.py`` files (size, mtime) with a snapshot taken at
    construction; :meth:`changed` looks at most once every ``every_s`` seconds."""

    def __init__(self, roots: Iterable[Path] | None = None, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.roots = [Path(r) for r in (package_roots() if roots is None else roots)]
        self.every_s = every_s
        self.clock = clock
        self.start = self.snapshot()
        self._last = clock()
        self._changed: list[str] = []

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return snapshot(self.roots)

    def changed(self, force: bool = False) -> list[str]:
        """The files added, removed or rewritten since the start (sorted); [] while none."""
        if self._changed:
            return self._changed
        now = self.clock()
        if not force and now - self._last < self.every_s:
            return []
        self._last = now
        snap = self.snapshot()
        self._changed = sorted(k for k in snap.keys() | self.start.keys() if snap.get(k) != self.start.get(k))
        return self._changed

    def check(self) -> None:
        """Raise :class:`CodeChanged` when a file changed."""
        files = self.changed()
        if files:
            raise CodeChanged(files)

    def wait_still(self, quiet_s: float = QUIET_S, timeout_s: float = WAIT_S,
                   sleep: Callable[[float], None] = time.sleep) -> bool:
        """Wait until no file has changed for ``quiet_s`` seconds; False after ``timeout_s``."""
        t0 = last_change = self.clock()
        snap = self.snapshot()
        while self.clock() - last_change < quiet_s:
            if self.clock() - t0 > timeout_s:
                return False
            sleep(min(1.0, quiet_s))
            now = self.snapshot()
            if now != snap:
                snap, last_change = now, self.clock()
        return True


def restart_on_new_code(argv: list[str], say: Callable[[str], None]) -> int:
    """After :class:`CodeChanged`: wait until the files are still, then replace this process
    with ``python -m driver.cli ARGV`` (same interpreter, environment and folder). Returns
    an exit status only when it does not restart (the files kept changing)."""
    watch = CodeWatch()
    say(f"waiting until remote-al's files have not changed for {QUIET_S:.0f} s, then starting again on the new code")
    if not watch.wait_still():
        say(f"remote-al's files were still changing after {WAIT_S:.0f} s: not restarted "
            "(start the same `remote-al run` again once the upgrade is done)")
        return EXIT_CODE_CHANGED
    say("restarting the driver on the new code: " + " ".join(["remote-al", *argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "driver.cli", *argv])
    return EXIT_CODE_CHANGED  # not reached
