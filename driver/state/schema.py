"""The state file's tables and their migrations.

``SCHEMA_VERSION`` is stored in ``meta.schema_version``. A file written by an older
remote-al is migrated in place, in one transaction, the first time a newer one opens it;
a file written by a newer remote-al is refused with a message that says so.

Version history:
  1: the first layout (tasks carried driver bookkeeping in their requests, under keys
     starting with ``_``).
  2: tasks have a ``kind`` (what the driver does with the result), a ``context`` (the
     driver's own data about the task, JSON) and a ``stage`` (inputs to stage to the
     task's site before submission, JSON); the request is exactly what the remote
     function receives. Indexes for the driver's per-tick queries.
  3: structures keep what screening found when they were recorded (``screen``: the
     settings-free filters' reason, '' when they pass, NULL when not screened;
     ``min_distance``; ``fingerprint``: compact, see driver.screening), so that selection
     reads them instead of parsing every candidate; an index that covers selection's and
     the round metrics' reads of a round's structures, one for task counts, one for label
     counts. Structures of older files stay unscreened (NULL): selection screens them.
  4: ``frame_features``: per scored structure, the features its UQ evaluation returned for
     batch selection (``selection.strategy``; float32, driver.strategies). Older files get
     the empty table: their structures have none, and a feature strategy says so.
"""

from __future__ import annotations

import json
import sqlite3

from remote_al.errors import RemoteALError

SCHEMA_VERSION = 4

# The round metric (table ``metrics``, scope "round") set when a round reached
# ``selection.converged_share`` with frames still selected: its last generation trains on
# them and the campaign stops (driver/campaign/rules.py); ``remote-al status`` reads it.
CONVERGED_MARK = "converged_at_share"

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,        -- the registered function that runs it
    kind TEXT NOT NULL DEFAULT '', -- what the driver does with its result (driver.campaign.tasks.TaskKind)
    pool TEXT NOT NULL,
    round INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL,          -- pending | submitted | done | failed | quarantined
    backend_id TEXT,
    request TEXT NOT NULL,         -- what the function receives, JSON
    context TEXT NOT NULL DEFAULT '{}',  -- the driver's data about the task, JSON
    stage TEXT NOT NULL DEFAULT '[]',    -- inputs to stage to the pool's site first, JSON
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
    hash TEXT NOT NULL UNIQUE,     -- driver.dataset.frame_hash, the key of its labeled frame too
    origin TEXT NOT NULL,          -- initial | md
    split TEXT NOT NULL,           -- train | test
    round INTEGER NOT NULL,
    generation INTEGER NOT NULL,   -- the ensemble that explored it (-1: initial)
    spec TEXT NOT NULL,            -- structure spec name
    composition TEXT NOT NULL,
    natoms INTEGER NOT NULL,
    extxyz TEXT NOT NULL,
    status TEXT NOT NULL,          -- candidate | selected | labeling | labeled | label_failed |
                                   -- confident | unphysical | filtered | duplicate | skipped
    source_task TEXT,
    energy_width REAL,
    force_width REAL,
    reason TEXT,
    created REAL NOT NULL,
    screen TEXT,                   -- settings-free filters: '' passed, else why not; NULL: not screened
    min_distance REAL,             -- smallest interatomic distance, A (screened)
    fingerprint BLOB               -- compact fingerprint (driver.screening; screened and passed)
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
-- the dataset store (driver.dataset): labeled frames by content hash, and what each
-- generation trained on
CREATE TABLE IF NOT EXISTS frames (
    hash TEXT PRIMARY KEY,
    structure_id INTEGER,
    composition TEXT NOT NULL,
    species TEXT NOT NULL,               -- atom order (one deepmd system per value)
    natoms INTEGER NOT NULL,
    split TEXT NOT NULL,                 -- train | test (held out, never trained on)
    round INTEGER NOT NULL,
    labeler TEXT NOT NULL,
    labeler_settings_json TEXT NOT NULL,
    task_key TEXT NOT NULL,              -- the label task
    exploration TEXT NOT NULL,           -- the MD task key that found it, or 'initial'
    model_generation INTEGER NOT NULL,   -- the ensemble that explored it (-1: initial)
    energy REAL NOT NULL,
    extxyz TEXT NOT NULL,                -- the labeled frame, exactly as exported
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS frame_duplicates (
    hash TEXT PRIMARY KEY REFERENCES frames(hash),
    count INTEGER NOT NULL,
    last_task_key TEXT NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS frame_features (
    structure_id INTEGER PRIMARY KEY REFERENCES structures(id),
    generation INTEGER NOT NULL,         -- the ensemble whose evaluation gave them
    kind TEXT NOT NULL,                  -- selection.features: atom_widths | descriptor
    vector BLOB NOT NULL                 -- float32
);
CREATE TABLE IF NOT EXISTS dataset_versions (
    generation INTEGER PRIMARY KEY,
    hashes_json TEXT NOT NULL,           -- ordered frame hashes
    n_frames INTEGER NOT NULL,
    digest TEXT NOT NULL,                -- sha256 of the ordered hashes
    created REAL NOT NULL
);
"""

# indexes on columns that older versions lack: created after the migration
INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_function ON tasks(function, round);
CREATE INDEX IF NOT EXISTS tasks_kind ON tasks(kind);
CREATE INDEX IF NOT EXISTS tasks_counts ON tasks(function, status);
CREATE INDEX IF NOT EXISTS structures_source ON structures(source_task);
CREATE INDEX IF NOT EXISTS structures_origin ON structures(origin, round);
CREATE INDEX IF NOT EXISTS structures_round ON structures(round, status, origin, force_width, energy_width, screen,
                                                          min_distance);
CREATE INDEX IF NOT EXISTS decisions_round ON decisions(round, decision);
CREATE INDEX IF NOT EXISTS labels_status ON labels(status);
"""

# columns that older versions lack: (table, column, declaration)
_V3_COLUMNS = (("structures", "screen", "TEXT"), ("structures", "min_distance", "REAL"),
               ("structures", "fingerprint", "BLOB"))

# version 1 kept the kind of a uq task in its request: an evaluation's scope -> kind
_V1_SCOPE_KIND = {"generation": "eval", "final": "final_eval", "oob": "oob"}


class StateVersionError(RemoteALError):
    """Raised when a state file was written by a newer remote-al than the one opening it."""


def v1_task_fields(function: str, request: dict) -> tuple[str, dict, list, dict]:
    """(kind, context, stage, request) of a version-1 task whose request carried the
    driver's keys (``_spec``, ``_structure_ids``, ``_scope``, ``_recheck``, ``_stage``)."""
    req = dict(request)
    stage = req.pop("_stage", [])
    if function == "md":
        kind, context = "md", {"spec": req.pop("_spec", "")}
    elif function == "uq" and "_recheck" in req:
        kind, context = "recheck", {"groups": req.pop("_recheck")}
    elif function == "uq" and "_structure_ids" in req:
        kind, context = "score", {"structure_ids": req.pop("_structure_ids")}
    elif function == "uq":
        kind, context = _V1_SCOPE_KIND[req.pop("_scope", "generation")], {}
    else:
        kind, context = function, {}
    leftover = [k for k in req if k.startswith("_")]
    if leftover:
        raise StateVersionError(f"version-1 task with unknown driver keys {leftover}: cannot migrate it")
    return kind, context, stage, req


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a state file from ``version`` to ``SCHEMA_VERSION`` (inside a transaction)."""
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"this state file has schema version {version}, written by a newer remote-al than this one "
            f"(which reads up to {SCHEMA_VERSION}); upgrade remote-al (pip install -U remote-al) to open it")
    if version < 2:
        cols = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
        for name, ddl in (("kind", "TEXT NOT NULL DEFAULT ''"), ("context", "TEXT NOT NULL DEFAULT '{}'"),
                          ("stage", "TEXT NOT NULL DEFAULT '[]'")):
            if name not in cols:
                db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {ddl}")
        rows = db.execute("SELECT key, function, request FROM tasks").fetchall()
        for key, function, request in rows:
            kind, context, stage, req = v1_task_fields(function, json.loads(request))
            db.execute("UPDATE tasks SET kind=?, context=?, stage=?, request=? WHERE key=?",
                       (kind, json.dumps(context), json.dumps(stage), json.dumps(req), key))
    if version < 3:
        for table, name, ddl in _V3_COLUMNS:
            if name not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
    for statement in INDEXES.strip().rstrip(";").split(";\n"):  # executescript would commit
        db.execute(statement)
    db.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?) "
               "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(SCHEMA_VERSION),))
