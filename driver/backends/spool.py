"""Finished results on disk until the driver has recorded them.

A backend writes each result to ``<dir>/<task_key>.json`` (atomic rename) the moment it
arrives, so a driver killed before recording it collects it on restart (``reattach``)
instead of running the task again; the engine calls ``forget`` once the result is in the
campaign state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger(__name__)


class ResultSpool:
    """One JSON file per finished task, named by the driver's task key."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, task_key: str) -> Path:
        return self.directory / f"{task_key.replace('/', '_')}.json"

    def write(self, task_key: str, value) -> None:
        """Keep ``value``; a failure to write is logged, not raised: the result is still good,
        only the restart shortcut is lost."""
        path = self.path(task_key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("could not spool the result of %s: %s", task_key, exc)

    def collect(self, task_key: str) -> Future | None:
        """A resolved future of the spooled result, or None if there is none."""
        path = self.path(task_key)
        if not path.exists():
            return None
        fut: Future = Future()
        fut.set_result(json.loads(path.read_text()))
        return fut

    def forget(self, task_key: str) -> None:
        try:
            self.path(task_key).unlink()
        except FileNotFoundError:
            pass

    def clean(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
