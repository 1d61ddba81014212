"""The state file itself: connection, transactions, meta, events and metrics."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from driver.state.schema import SCHEMA_VERSION, TABLES, migrate


class StateBase:
    """The SQLite connection (WAL, synchronous=FULL) and the small tables. Every change
    runs inside ``with state.transaction():``; nested uses join the outer one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self._depth = 0
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(TABLES)
        version = self.get_meta("schema_version")
        if version is None or int(version) != SCHEMA_VERSION:
            with self.transaction():
                migrate(self.db, int(version) if version is not None else SCHEMA_VERSION)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def event(self, kind: str, message: str) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO events(ts, kind, message) VALUES(?,?,?)", (time.time(), kind, message))

    def events(self, limit: int | None = None, kinds: tuple[str, ...] = ()) -> list[sqlite3.Row]:
        """Events, newest first."""
        q, args = "SELECT * FROM events", []
        if kinds:
            q += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        q += " ORDER BY id DESC"
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        return self.db.execute(q, args).fetchall()

    def last_event_time(self) -> float | None:
        return self.db.execute("SELECT MAX(ts) FROM events").fetchone()[0]

    # --------------------------------------------------------------- metrics
    def set_metric(self, scope: str, idx: int, name: str, value: float | None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO metrics(scope, idx, name, value) VALUES(?,?,?,?) "
                "ON CONFLICT(scope, idx, name) DO UPDATE SET value=excluded.value",
                (scope, idx, name, value),
            )

    def metrics(self, scope: str) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for r in self.db.execute("SELECT idx, name, value FROM metrics WHERE scope=? ORDER BY idx", (scope,)):
            out.setdefault(r["idx"], {})[r["name"]] = r["value"]
        return out

    def latest_metric(self, scope: str, name: str) -> float | None:
        """The value of ``name`` at the highest index of ``scope`` that has it."""
        row = self.db.execute(
            "SELECT value FROM metrics WHERE scope=? AND name=? AND value IS NOT NULL ORDER BY idx DESC LIMIT 1",
            (scope, name),
        ).fetchone()
        return None if row is None else float(row[0])


class StateMeta:
    """A dict-like view of the campaign state's meta table (for backends and transfers
    that persist ids)."""

    def __init__(self, state: StateBase):
        self.state = state

    def __getitem__(self, key):
        v = self.state.get_meta(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value):
        self.state.set_meta(key, str(value))

    def __contains__(self, key):
        return self.state.get_meta(key) is not None

    def get(self, key, default=None):
        return self.state.get_meta(key, default)
