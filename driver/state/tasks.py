"""The tasks table: every remote call, written before it is submitted, with a unique key."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Iterable, Sequence


class TaskTable:
    """Task rows: ``pending`` -> ``submitted`` -> ``done`` (or back to ``pending`` for a
    retry, or ``quarantined``)."""

    db: sqlite3.Connection

    def add_task(self, key: str, function: str, pool: str, round_: int, generation: int, request: dict,
                 kind: str = "", context: dict | None = None, stage: list | None = None) -> bool:
        """Insert a pending task; returns False if a task with this key exists already."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO tasks(key, function, kind, pool, round, generation, status, request, "
                "context, stage, created) VALUES(?,?,?,?,?,?,'pending',?,?,?,?)",
                (key, function, kind or function, pool, round_, generation, json.dumps(request),
                 json.dumps(context or {}), json.dumps(stage or []), time.time()),
            )
            return cur.rowcount == 1

    def task(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tasks WHERE key=?", (key,)).fetchone()

    def tasks(self, status: str | Iterable[str] | None = None, function: str | None = None,
              kind: str | Iterable[str] | None = None, round_: int | None = None) -> list[sqlite3.Row]:
        q, args = "SELECT * FROM tasks WHERE 1=1", []
        for col, value in (("status", status), ("kind", kind)):
            if value is not None:
                vals = [value] if isinstance(value, str) else list(value)
                q += f" AND {col} IN ({','.join('?' * len(vals))})"
                args += vals
        if function is not None:
            q += " AND function=?"
            args.append(function)
        if round_ is not None:
            q += " AND round=?"
            args.append(round_)
        return self.db.execute(q + " ORDER BY id", args).fetchall()

    def pools_of(self, keys: list[str]) -> list[str]:
        """The pool of each task in ``keys`` (in one query per 500 keys)."""
        out: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            out += [r[0] for r in self.db.execute(
                f"SELECT pool FROM tasks WHERE key IN ({','.join('?' * len(chunk))})", chunk)]
        return out

    def task_totals(self) -> tuple[int, int]:
        """(tasks, tasks done): how the engine tells that a tick changed something."""
        n = self.db.execute("SELECT COUNT(*), COALESCE(SUM(status='done'), 0) FROM tasks").fetchone()
        return int(n[0]), int(n[1])

    def mark_submitted(self, key: str, backend_id: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE tasks SET status='submitted', backend_id=?, submitted=?, attempts=attempts+1 WHERE key=?",
                (backend_id, time.time(), key),
            )

    def count_attempt(self, key: str) -> None:
        """An attempt that failed before submission (staging) counts as one."""
        with self.transaction():
            self.db.execute("UPDATE tasks SET attempts=attempts+1 WHERE key=?", (key,))

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

    def requeue_quarantined(self) -> tuple[list[str], list[str]]:
        """Quarantined tasks back to ``pending`` with their attempts reset (the last error is
        kept until the next outcome): (requeued keys, keys left quarantined). Label tasks
        stay: their structures are recorded as failed labels with the reason, and the
        rounds after them were decided without those labels."""
        with self.transaction():
            rows = self.db.execute("SELECT key, function FROM tasks WHERE status='quarantined' ORDER BY id").fetchall()
            again = [r[0] for r in rows if r[1] != "label"]
            self.db.executemany("UPDATE tasks SET status='pending', attempts=0, backend_id=NULL, not_before=0, "
                                "finished=NULL WHERE key=?", [(k,) for k in again])
        return again, [r[0] for r in rows if r[1] == "label"]

    def has_function(self, *functions: str) -> bool:
        """Whether any task of these functions exists."""
        return self.db.execute(f"SELECT 1 FROM tasks WHERE function IN ({','.join('?' * len(functions))}) LIMIT 1",
                               functions).fetchone() is not None

    def submitted_work(self, functions: Sequence[str], limit: int | None = None) -> list[sqlite3.Row]:
        """(key, function, request, submitted) of submitted tasks of these functions: the
        first function's before the next one's, each in task order; at most ``limit``."""
        order = " ".join(f"WHEN ? THEN {i}" for i in range(len(functions)))
        marks = ",".join("?" * len(functions))
        return self.db.execute(
            f"SELECT key, function, request, submitted FROM tasks WHERE status='submitted' AND function IN ({marks}) "
            f"ORDER BY CASE function {order} END, id LIMIT ?", (*functions, *functions, -1 if limit is None else limit),
        ).fetchall()

    def task_counts(self) -> dict[tuple[str, str], int]:
        rows = self.db.execute("SELECT function, status, COUNT(*) FROM tasks GROUP BY function, status")
        return {(r[0], r[1]): r[2] for r in rows}
