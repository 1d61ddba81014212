"""Structures, their decisions and labels; models and the datasets they trained on."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Iterable, Iterator, Sequence


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _rows_by_ids(db, sql: str, ids: Sequence[int], params: tuple = ()) -> Iterator:
    """Rows of ``sql`` (``{marks}`` in it stands for the ids' placeholders) over ``ids`` in
    chunks of 900, SQLite's limit on parameters; ``params`` come before the ids."""
    for k in range(0, len(ids), 900):
        chunk = tuple(ids[k:k + 900])
        yield from db.execute(sql.format(marks=_marks(len(chunk))), (*params, *chunk))


class StructureTable:
    """Every generated or explored structure, what was decided about it, and its label."""

    db: sqlite3.Connection

    def add_structure(self, **row: Any) -> int | None:
        """Insert a structure; returns its id, or None if its hash is already stored."""
        row.setdefault("created", time.time())
        cols = ",".join(row)
        with self.transaction():
            cur = self.db.execute(
                f"INSERT OR IGNORE INTO structures({cols}) VALUES({_marks(len(row))})", tuple(row.values()))
            return cur.lastrowid if cur.rowcount == 1 else None

    def structures(self, **where: Any) -> list[sqlite3.Row]:
        q, args = "SELECT * FROM structures WHERE 1=1", []
        for k, v in where.items():
            if isinstance(v, (list, tuple, set)):
                q += f" AND {k} IN ({_marks(len(v))})"
                args += list(v)
            else:
                q += f" AND {k}=?"
                args.append(v)
        return self.db.execute(q + " ORDER BY id", args).fetchall()

    def update_structure(self, sid: int, **values: Any) -> None:
        sets = ",".join(f"{k}=?" for k in values)
        with self.transaction():
            self.db.execute(f"UPDATE structures SET {sets} WHERE id=?", (*values.values(), sid))

    def set_structure_status(self, ids: Sequence[int], status: str) -> None:
        with self.transaction():
            self.db.execute(f"UPDATE structures SET status=? WHERE id IN ({_marks(len(ids))})", (status, *ids))

    def set_widths(self, rows: Iterable[tuple[int, float, float]]) -> None:
        """(structure id, energy width, force width) of each scored structure."""
        with self.transaction():
            self.db.executemany("UPDATE structures SET energy_width=?, force_width=? WHERE id=?",
                                [(ew, fw, sid) for sid, ew, fw in rows])

    def set_features(self, generation: int, kind: str, rows: Iterable[tuple[int, Sequence[float]]]) -> None:
        """(structure id, feature vector) of scored structures, from generation's evaluation."""
        import numpy as np

        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO frame_features(structure_id, generation, kind, vector) VALUES(?,?,?,?)",
                [(sid, generation, kind, np.asarray(x, dtype=np.float32).tobytes()) for sid, x in rows])

    def features(self, ids: Sequence[int], kind: str) -> dict:
        """id -> float32 feature vector of these structures (those with features of ``kind``)."""
        import numpy as np

        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in _rows_by_ids(
            self.db, "SELECT structure_id, vector FROM frame_features WHERE kind=? AND structure_id IN ({marks})",
            ids, (kind,))}

    def source_tasks(self, ids: Sequence[int]) -> dict[int, str]:
        """id -> the task that produced each of these structures ('' when none)."""
        return {r[0]: r[1] or "" for r in _rows_by_ids(
            self.db, "SELECT id, source_task FROM structures WHERE id IN ({marks})", ids)}

    def explored_widths(self, round_: int):
        """Every structure explored (MD) in round ``round_``, as arrays in id order: ids,
        force widths (NaN: not scored) and whether each is filtered."""
        import numpy as np

        cur = self.db.cursor()
        cur.row_factory = None  # plain tuples, for numpy
        cur.execute("SELECT id, COALESCE(force_width, 'nan'), status = 'filtered' FROM structures "
                    "INDEXED BY structures_round WHERE round=? AND origin='md' ORDER BY id", (round_,))
        rows = np.fromiter(cur, dtype=[("id", np.int64), ("w", float), ("filtered", bool)])
        return rows["id"], rows["w"], rows["filtered"]

    def candidate_rows(self, round_: int | None = None, ids: Sequence[int] | None = None,
                       any_status: bool = False) -> Iterator[sqlite3.Row]:
        """What selection reads of the candidates of round ``round_`` (or of the structures
        of ``ids``: the candidates among them, or all with ``any_status``), in id order, as
        they are read: id, energy_width, force_width, screen, min_distance (the
        fingerprints: :meth:`fingerprints`)."""
        cols = "SELECT id, energy_width, force_width, screen, min_distance FROM structures"
        if ids is not None:
            status = "" if any_status else "status='candidate' AND "
            return self.db.execute(f"{cols} WHERE {status}id IN ({_marks(len(ids))}) ORDER BY id", tuple(ids))
        return self.db.execute(f"{cols} INDEXED BY structures_round WHERE round=? AND status='candidate' ORDER BY id",
                               (round_,))

    def fingerprints(self, ids: Sequence[int]) -> dict[int, tuple[str | None, bytes | None]]:
        """id -> (screen, compact fingerprint) of these structures."""
        return {r[0]: (r[1], r[2]) for r in _rows_by_ids(
            self.db, "SELECT id, screen, fingerprint FROM structures WHERE id IN ({marks})", ids)}

    def widths_from(self, task_keys: Sequence[str]) -> list[sqlite3.Row]:
        """(force_width, status) of the structures the given MD tasks explored."""
        return self.db.execute(
            f"SELECT force_width, status FROM structures WHERE source_task IN ({_marks(len(task_keys))})",
            tuple(task_keys)).fetchall()

    # ------------------------------------------------------------- decisions
    def decide(self, round_: int, sid: int, decision: str, reason: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO decisions(round, structure_id, decision, reason, created) VALUES(?,?,?,?,?)",
                (round_, sid, decision, reason, time.time()),
            )

    def decision_counts(self, round_: int) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT decision, COUNT(*) FROM decisions WHERE round=? GROUP BY decision", (round_,)).fetchall())

    def decided(self, round_: int, decision: str) -> list[sqlite3.Row]:
        """The structures given ``decision`` in round ``round_``."""
        return self.db.execute(
            "SELECT s.* FROM structures s JOIN decisions d ON d.structure_id = s.id "
            "WHERE d.round=? AND d.decision=? ORDER BY s.id", (round_, decision)).fetchall()

    def selected_before(self, round_: int, ids: Sequence[int], generation: int) -> list[sqlite3.Row]:
        """Of ``ids``, those chosen for labeling in ``round_`` by an ensemble older than
        ``generation``."""
        return self.db.execute(
            f"SELECT s.* FROM structures s JOIN decisions d ON d.structure_id = s.id AND d.round = ? "
            f"AND d.decision = 'label' WHERE s.id IN ({_marks(len(ids))}) AND s.generation < ? ORDER BY s.id",
            (round_, *ids, generation)).fetchall()

    # ---------------------------------------------------------------- labels
    def add_label(self, sid: int, task_key: str, labeler: str, labeler_note: str, energy: float,
                  extxyz: str) -> bool:
        """Store a good label (once per structure); returns False if it had one."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO labels(structure_id, task_key, labeler, labeler_note, status, reason, "
                "energy, extxyz, created) VALUES(?,?,?,?,'ok','',?,?,?)",
                (sid, task_key, labeler, labeler_note, energy, extxyz, time.time()))
            self.db.execute("UPDATE structures SET status='labeled' WHERE id=?", (sid,))
            return cur.rowcount == 1

    def fail_label(self, sid: int, task_key: str, labeler: str, reason: str) -> None:
        """A structure that could not be labeled: kept with its reason, never trained on."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO labels(structure_id, task_key, labeler, labeler_note, status, reason, "
                "created) VALUES(?,?,?,'','failed',?,?)", (sid, task_key, labeler, reason, time.time()))
            self.db.execute("UPDATE structures SET status='label_failed', reason=? WHERE id=?", (reason, sid))

    def label_rows(self, status: str | None = "ok", split: str | None = None) -> list[sqlite3.Row]:
        q = (
            "SELECT l.*, s.split, s.round, s.spec, s.composition, s.origin, s.source_task FROM labels l "
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

    def label_count(self, status: str | None = None) -> int:
        """Labels stored (every labeler call counts when ``status`` is None)."""
        if status is None:
            return self.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM labels WHERE status=?", (status,)).fetchone()[0]

    def labels_asked(self) -> int:
        """Structures sent to a labeler so far (every label task's, whatever its status)."""
        return self.db.execute("SELECT COALESCE(SUM(json_array_length(request, '$.structure_ids')), 0) "
                               "FROM tasks WHERE function='label'").fetchone()[0]

    def labelers(self) -> list[sqlite3.Row]:
        """(labeler, labeler_note, count) of the good labels."""
        return self.db.execute("SELECT labeler, labeler_note, COUNT(*) FROM labels WHERE status='ok' "
                               "GROUP BY labeler, labeler_note").fetchall()

    def explored_widths_by_round(self) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in self.db.execute("SELECT round, force_width FROM structures WHERE origin='md' "
                                 "AND force_width IS NOT NULL ORDER BY round"):
            out.setdefault(int(r[0]), []).append(float(r[1]))
        return out

    def count_structures(self, status: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM structures WHERE status=?", (status,)).fetchone()[0]


class ModelTable:
    """The members of each generation and the training set each generation saw."""

    db: sqlite3.Connection

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

    def carry_models(self, source: int, target: int) -> None:
        """Generation ``target`` is generation ``source`` unchanged (no new data to train on)."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO models SELECT ?, member, task_key, path, checkpoint, lcurve_path, "
                "lcurve_last, n_train_frames, wall_s, created FROM models WHERE generation=?", (target, source))

    def record_dataset(self, generation: int, path: str, systems: Sequence[str], structure_ids: Sequence[int],
                       n_frames: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO datasets(generation, path, systems, structure_ids, n_frames, created) "
                "VALUES(?,?,?,?,?,?)",
                (generation, path, json.dumps(list(systems)), json.dumps(list(structure_ids)), n_frames,
                 time.time()))

    def dataset(self, generation: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM datasets WHERE generation=?", (generation,)).fetchone()

    def dataset_sizes(self) -> dict[int, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT generation, n_frames FROM datasets")}

    def dataset_paths(self) -> list[str]:
        """The exported folder of every generation's training set, oldest first."""
        return [r[0] for r in self.db.execute("SELECT path FROM datasets ORDER BY generation")]
