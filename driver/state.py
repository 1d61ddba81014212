"""The durable campaign state: one SQLite file per campaign (WAL, one transaction per change).

Tables: ``meta`` (key/value), ``tasks`` (every remote call, written *before* submission
with a unique key), ``structures`` (every explored or generated structure with its status),
``labels`` (one row per labeled structure; failed labels kept with their reason, never
exported), ``models`` (per generation and member), ``datasets`` (the frames each
generation trained on), ``decisions`` (selection records with reasons), ``metrics`` and
``events``. A ``kill -9`` at any moment loses nothing committed and duplicates no row.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    pool TEXT NOT NULL,
    round INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending | submitted | done | failed | quarantined
    backend_id TEXT,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    submitted REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS structures (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,          -- initial | md
    split TEXT NOT NULL,           -- train | test
    round INTEGER NOT NULL,
    generation INTEGER NOT NULL,   -- the ensemble that explored it (-1: initial)
    spec TEXT NOT NULL,            -- structure spec name
    composition TEXT NOT NULL,
    natoms INTEGER NOT NULL,
    extxyz TEXT NOT NULL,
    status TEXT NOT NULL,          -- candidate | selected | labeled | label_failed | confident |
                                   -- unphysical | filtered | duplicate | skipped
    source_task TEXT,
    energy_width REAL,
    force_width REAL,
    reason TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS structures_status ON structures(status, round);
CREATE TABLE IF NOT EXISTS labels (
    structure_id INTEGER PRIMARY KEY REFERENCES structures(id),
    task_key TEXT NOT NULL,
    labeler TEXT NOT NULL,
    labeler_note TEXT NOT NULL,
    status TEXT NOT NULL,          -- ok | failed
    reason TEXT,
    energy REAL,
    extxyz TEXT,                   -- the labeled frame (energy, forces, stress)
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    generation INTEGER NOT NULL,
    member INTEGER NOT NULL,
    task_key TEXT NOT NULL,
    path TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    lcurve_path TEXT NOT NULL,
    lcurve_last TEXT NOT NULL,
    n_train_frames INTEGER NOT NULL,
    wall_s REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (generation, member)
);
CREATE TABLE IF NOT EXISTS datasets (
    generation INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    systems TEXT NOT NULL,
    structure_ids TEXT NOT NULL,
    n_frames INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    structure_id INTEGER NOT NULL,
    decision TEXT NOT NULL,        -- label | test | confident | unphysical | filtered | duplicate | skipped
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (round, structure_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    scope TEXT NOT NULL,           -- e.g. "round", "generation"
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (scope, idx, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


class State:
    """Thin wrapper over the campaign's SQLite file. Use ``with state.transaction():``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self._depth = 0
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))

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

    # ----------------------------------------------------------------- tasks
    def add_task(self, key: str, function: str, pool: str, round_: int, generation: int, request: dict) -> bool:
        """Insert a pending task; returns False if a task with this key exists already."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO tasks(key, function, pool, round, generation, status, request, created) "
                "VALUES(?,?,?,?,?,'pending',?,?)",
                (key, function, pool, round_, generation, json.dumps(request), time.time()),
            )
            return cur.rowcount == 1

    def task(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tasks WHERE key=?", (key,)).fetchone()

    def tasks(self, status: str | Iterable[str] | None = None, function: str | None = None) -> list[sqlite3.Row]:
        q, args = "SELECT * FROM tasks WHERE 1=1", []
        if status is not None:
            sts = [status] if isinstance(status, str) else list(status)
            q += f" AND status IN ({','.join('?' * len(sts))})"
            args += sts
        if function is not None:
            q += " AND function=?"
            args.append(function)
        return self.db.execute(q + " ORDER BY id", args).fetchall()

    def mark_submitted(self, key: str, backend_id: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE tasks SET status='submitted', backend_id=?, submitted=?, attempts=attempts+1 WHERE key=?",
                (backend_id, time.time(), key),
            )

    def mark_done(self, key: str, result: dict) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE tasks SET status='done', result=?, error=NULL, finished=? WHERE key=?",
                (json.dumps(result), time.time(), key),
            )

    def set_request(self, key: str, request: dict) -> None:
        """Rewrite a task's request; only while it is pending (never submitted with it)."""
        with self.transaction():
            self.db.execute("UPDATE tasks SET request=? WHERE key=? AND status='pending'", (json.dumps(request), key))

    def mark_retry(self, key: str, error: str, not_before: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE tasks SET status='pending', backend_id=NULL, error=?, not_before=? WHERE key=?",
                (error, not_before, key),
            )

    def mark_quarantined(self, key: str, error: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE tasks SET status='quarantined', error=?, finished=? WHERE key=?",
                (error, time.time(), key),
            )

    def task_counts(self) -> dict[tuple[str, str], int]:
        rows = self.db.execute("SELECT function, status, COUNT(*) FROM tasks GROUP BY function, status")
        return {(r[0], r[1]): r[2] for r in rows}

    # ------------------------------------------------------------ structures
    def add_structure(self, **row: Any) -> int | None:
        """Insert a structure; returns its id, or None if its hash is already stored."""
        row.setdefault("created", time.time())
        cols = ",".join(row)
        with self.transaction():
            cur = self.db.execute(
                f"INSERT OR IGNORE INTO structures({cols}) VALUES({','.join('?' * len(row))})",
                tuple(row.values()),
            )
            return cur.lastrowid if cur.rowcount == 1 else None

    def structures(self, **where: Any) -> list[sqlite3.Row]:
        q, args = "SELECT * FROM structures WHERE 1=1", []
        for k, v in where.items():
            if isinstance(v, (list, tuple, set)):
                q += f" AND {k} IN ({','.join('?' * len(v))})"
                args += list(v)
            else:
                q += f" AND {k}=?"
                args.append(v)
        return self.db.execute(q + " ORDER BY id", args).fetchall()

    def update_structure(self, sid: int, **values: Any) -> None:
        sets = ",".join(f"{k}=?" for k in values)
        with self.transaction():
            self.db.execute(f"UPDATE structures SET {sets} WHERE id=?", (*values.values(), sid))

    def decide(self, round_: int, sid: int, decision: str, reason: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO decisions(round, structure_id, decision, reason, created) VALUES(?,?,?,?,?)",
                (round_, sid, decision, reason, time.time()),
            )

    def label_rows(self, status: str | None = "ok", split: str | None = None) -> list[sqlite3.Row]:
        q = (
            "SELECT l.*, s.split, s.round, s.spec, s.composition, s.origin FROM labels l "
            "JOIN structures s ON s.id = l.structure_id WHERE 1=1"
        )
        args: list = []
        if status:
            q += " AND l.status=?"
            args.append(status)
        if split:
            q += " AND s.split=?"
            args.append(split)
        return self.db.execute(q + " ORDER BY l.structure_id", args).fetchall()

    def add_model(self, generation: int, member: int, task_key: str, path: str, checkpoint: str = "",
                  lcurve_path: str = "", lcurve_last: dict | None = None, n_train_frames: int = 0,
                  wall_s: float = 0.0) -> None:
        """Record (or replace) member ``member`` of generation ``generation``."""
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO models(generation, member, task_key, path, checkpoint, lcurve_path, "
                "lcurve_last, n_train_frames, wall_s, created) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (generation, member, task_key, path, checkpoint, lcurve_path, json.dumps(lcurve_last or {}),
                 n_train_frames, wall_s, time.time()),
            )

    def models(self, generation: int | None = None) -> list[sqlite3.Row]:
        if generation is None:
            return self.db.execute("SELECT * FROM models ORDER BY generation, member").fetchall()
        return self.db.execute(
            "SELECT * FROM models WHERE generation=? ORDER BY member", (generation,)
        ).fetchall()


class StateMeta:
    """A dict-like view of the campaign state's meta table (for backends and transfers
    that persist ids)."""

    def __init__(self, state: State):
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
