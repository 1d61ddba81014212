"""The dataset store's tables (driver.dataset): labeled frames by content hash, how often
a frame came back again, and the frames each generation trained on."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Mapping, Sequence

_CHUNK = 500  # SQLite's limit on bound parameters, with room to spare


class FrameTable:
    db: sqlite3.Connection

    def insert_frame(self, row: Mapping[str, Any]) -> bool:
        """Store a labeled frame; False when its hash is stored already."""
        with self.transaction():
            cur = self.db.execute(
                f"INSERT OR IGNORE INTO frames({','.join(row)}) VALUES({','.join('?' * len(row))})",
                tuple(row.values()))
            return cur.rowcount == 1

    def count_duplicate(self, h: str, task_key: str, when: float) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO frame_duplicates(hash, count, last_task_key, last_seen) VALUES(?,1,?,?) "
                "ON CONFLICT(hash) DO UPDATE SET count=count+1, last_task_key=excluded.last_task_key, "
                "last_seen=excluded.last_seen", (h, task_key, when))

    def frame(self, h: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM frames WHERE hash=?", (h,)).fetchone()

    def duplicate_count(self, h: str) -> int:
        row = self.db.execute("SELECT count FROM frame_duplicates WHERE hash=?", (h,)).fetchone()
        return row[0] if row else 0

    def frame_hashes(self, split: str, max_round: int | None = None) -> list[str]:
        """Hashes of the frames of ``split`` (up to ``max_round``), in insertion order."""
        q, args = "SELECT hash FROM frames WHERE split=?", [split]
        if max_round is not None:
            q += " AND round<=?"
            args.append(max_round)
        return [r[0] for r in self.db.execute(q + " ORDER BY rowid", args)]

    def frames_of(self, hashes: Sequence[str]) -> list[sqlite3.Row]:
        rows: list = []
        for i in range(0, len(hashes), _CHUNK):
            chunk = list(hashes[i:i + _CHUNK])
            rows += self.db.execute(f"SELECT * FROM frames WHERE hash IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
        return rows

    def version_row(self, generation: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM dataset_versions WHERE generation=?", (generation,)).fetchone()

    def version_rows(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM dataset_versions ORDER BY generation").fetchall()

    def insert_version(self, generation: int, hashes: Sequence[str], digest: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO dataset_versions(generation, hashes_json, n_frames, digest, created) VALUES(?,?,?,?,?)",
                (generation, json.dumps(list(hashes)), len(hashes), digest, time.time()))
