"""A read-only view of a campaign for the planners: its configuration, its state and what
follows from them (the threshold in use, the exploration sweep, candidates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from driver.campaign.plan import Phase
from driver.campaign.tasks import Task, TaskKind, is_relaxation, task_dir_name
from driver.config_models import CampaignConfig
from driver.dataset import DatasetStore
from driver.preflight import build_structure
from driver.screening import Fingerprint, Screen, decode, fingerprint, screen
from driver.selection import NEEDS_FEATURES, Candidate
from driver.state import State

OPEN = ("pending", "submitted")


class CampaignView:
    """What planners read. It never writes: the engine applies what they return."""

    def __init__(self, cfg: CampaignConfig, state: State, store: DatasetStore, gpu_slots: int,
                 say: Callable[[str], None]):
        self.cfg = cfg
        self._state = state
        self._store = store
        self.gpu_slots = gpu_slots
        self.say = say  # for notes while reading (e.g. a relaxation that could not be used)
        # structure id -> driver.screening.Screen of structures stored unscreened (older files)
        self._screened: dict[int, Screen] = {}
        self._starts: dict[str, object] = {}  # the labeler-relaxed structure (or None) per structure name

    # ------------------------------------------------------------- position
    @property
    def directory(self) -> Path:
        return self.cfg.directory

    def task_dir(self, key: str) -> str:
        """The folder of the task with this key (``work/<key>`` in the campaign folder);
        the request's ``workdir`` on the local site."""
        return str(self.cfg.directory / "work" / task_dir_name(key))

    @property
    def phase(self) -> Phase:
        return Phase(self._state.get_meta("phase", Phase.GENERATE.value))

    @property
    def round(self) -> int:
        return int(self._state.get_meta("round", "0"))

    @property
    def shown_round(self) -> int:
        """The round as the user counts it: the asynchronous engine moves its label round
        past the last one when that round's generation starts training; it shows as the last."""
        return min(self.round, self.cfg.campaign.max_rounds)

    @property
    def stop_reason(self) -> str:
        return self._state.get_meta("stop_reason", "") or ""

    @property
    def current_generation(self) -> int:
        return int(self._state.get_meta("current_generation", "0"))

    @property
    def started(self) -> float | None:
        v = self._state.get_meta("started")
        return None if v is None else float(v)

    def force_threshold(self) -> float:
        """The one force-width threshold in use: the configured one, or in calibrated mode
        the latest generation's (its calibration turned the target into a width)."""
        s = self.cfg.selection
        if s.force_threshold_mode == "calibrated":
            value = self._state.latest_metric("generation", "force_threshold")
            if value is not None:
                return value
        return s.force_threshold

    # ---------------------------------------------------------------- tasks
    def task(self, key: str) -> Task | None:
        row = self._state.task(key)
        return None if row is None else Task.from_row(row)

    def has_task(self, key: str) -> bool:
        return self._state.task(key) is not None

    def tasks(self, status=None, kind: TaskKind | tuple[TaskKind, ...] | None = None, round_: int | None = None):
        """Task rows (key, kind, status, round, generation, ...)."""
        kinds = None if kind is None else ([kind.value] if isinstance(kind, TaskKind) else [k.value for k in kind])
        return self._state.tasks(status=status, kind=kinds, round_=round_)

    def open_tasks(self, round_: int | None = None, kind=None):
        return self.tasks(OPEN, kind, round_)

    # ---------------------------------------------------- models and data
    def models(self, generation: int | None = None):
        return self._state.models(generation)

    def model_paths(self, generation: int) -> tuple[str, ...]:
        return tuple(m["path"] for m in self._state.models(generation))

    def dataset(self, generation: int):
        return self._state.dataset(generation)

    def dataset_ids(self, generation: int) -> set[int]:
        row = self._state.dataset(generation)
        return set(json.loads(row["structure_ids"])) if row else set()

    def structures(self, **where):
        return self._state.structures(**where)

    def decided(self, round_: int, decision: str):
        return self._state.decided(round_, decision)

    def decision_counts(self, round_: int) -> dict[str, int]:
        return self._state.decision_counts(round_)

    def selected_before(self, round_: int, ids, generation: int):
        return self._state.selected_before(round_, ids, generation)

    def label_rows(self, status: str | None = "ok", split: str | None = None):
        return self._state.label_rows(status, split)

    def label_count(self, status: str | None = None) -> int:
        return self._state.label_count(status)

    def labels_asked(self) -> int:
        return self._state.labels_asked()

    def count_structures(self, status: str) -> int:
        return self._state.count_structures(status)

    def explored_widths(self, round_: int):
        return self._state.explored_widths(round_)

    def widths_from(self, task_keys):
        return self._state.widths_from(task_keys)

    def metrics(self, scope: str):
        return self._state.metrics(scope)

    def test_frames_extxyz(self) -> tuple[str, int]:
        """The labeled held-out frames, as one extxyz text, and how many. A frame held out
        from one of the campaign's MD explorations (not an ensemble relaxation), or from the
        labeler's MD of round 0, carries the run's key as ``held_out_md``
        (``selection.calibration_weighting = "md"``)."""
        rows = self._state.label_rows("ok", "test")
        return "".join(_tagged(r["extxyz"], "held_out_md", r["source_task"]) if _from_md(r) else r["extxyz"]
                       for r in rows), len(rows)

    # ------------------------------------------------------------ derived
    def sweep(self) -> list[tuple]:
        """One exploration sweep: (spec, temperature, pressure or "relax" or None, walker)
        for every combination of each structure's schedule ([exploration], overridden per
        structure)."""
        e = self.cfg.exploration
        n_members = self.cfg.training.ensemble_size
        # relaxations member-major (a round that fills its cap early has seen every
        # structure), taken in turn with the MD: with relaxations first, a round capped
        # after 10 explorations ran none of the example's 6 MD runs, so no frame of the MD
        # the bounds are used on was selected or held out (docs/uncertainty.md, attempt 20)
        relax = [(spec, 0.0, "relax", m) for m in range(n_members) for spec in self.cfg.structures] if e.relax else []
        md = []
        for spec in self.cfg.structures:
            ensemble = spec.ensemble or e.ensemble
            pressures = (spec.pressures_GPa or e.pressures_GPa or (e.pressure_GPa,)) if ensemble == "npt" else (None,)
            for t in spec.temperatures_K or e.temperatures_K:
                for p in pressures:
                    md += [(spec, t, p, w) for w in range(e.walkers)]
        return [x for i in range(max(len(relax), len(md))) for x in (relax[i:i + 1] + md[i:i + 1])]

    def temperatures(self) -> list[float]:
        """Every MD temperature of the campaign, K (``driver.config.md_temperatures``)."""
        from driver.config import md_temperatures

        return md_temperatures(self.cfg)

    def start_structure(self, spec):
        """Where the initial data and the MD of a structure start: the labeler-relaxed
        structure when ``[initial] relax`` produced one, else the built structure."""
        if not self.cfg.initial.relax:
            return build_structure(spec)
        relaxed = self.labeler_relaxed(spec)
        return relaxed if relaxed is not None else build_structure(spec)

    def md_start_structure(self, spec):
        """Where a structure's MD starts: the labeler-relaxed structure with
        ``exploration.md_start = "labeler_minimum"`` (the start structure when there is
        none), else :meth:`start_structure`."""
        if self.cfg.exploration.md_start == "labeler_minimum":
            relaxed = self.labeler_relaxed(spec)
            if relaxed is not None:
                return relaxed
        return self.start_structure(spec)

    def labeler_relaxed(self, spec):
        """The labeler's relaxation of a structure (task relax-label:<name>), or None when it
        failed or fails the structure filters (the reason is said once)."""
        if spec.name not in self._starts:
            self._starts[spec.name] = self._relaxed_by_labeler(spec)
        atoms = self._starts[spec.name]
        return None if atoms is None else atoms.copy()

    def _relaxed_by_labeler(self, spec):
        """The structure of task relax-label:<name>, or None (with the reason said)."""
        from remote_al.structures import check_structure, from_extxyz

        task = self.task(f"relax-label:{spec.name}")
        res = task.result if task is not None and task.status == "done" else {}
        if not res or not res.get("relaxed_extxyz"):
            self.say(f"no labeler relaxation of {spec.name} ({task.status if task else 'missing'}); "
                     "its initial data and MD are around the built structure only")
            return None
        atoms = from_extxyz(res["relaxed_extxyz"])[0]
        atoms.calc = None
        chk = check_structure(atoms, min_dist_A=self.cfg.selection.min_distance_A)
        if not chk.ok:
            self.say(f"labeler-relaxed {spec.name} fails the structure filters ({chk.reason}); "
                     "its initial data and MD are around the built structure only")
            return None
        return atoms

    def candidate_rows(self, round_: int | None = None, ids=None, any_status: bool = False):
        """What selection reads of a round's candidates (or of ``ids``): ids, widths, screening."""
        return self._state.candidate_rows(round_, ids, any_status)

    def candidates(self, rows) -> list[Candidate]:
        """Selection candidates of structure rows (:meth:`candidate_rows`): what
        screening stored when they were recorded, the distance filter of this campaign's
        settings applied to it; their fingerprints come from :meth:`fingerprints`. A
        structure stored unscreened (by an older remote-al) is screened here, once."""
        from remote_al.structures import distance_check

        min_d = self.cfg.selection.min_distance_A
        out: list = []
        unscreened: list[tuple[int, tuple]] = []  # (place in out, row), filled in below
        for sid, ew, fw, reason, dmin in rows:  # one pass: a round's rows are not all held at once
            if reason is None:
                unscreened.append((len(out), (sid, ew, fw)))
                out.append(None)
                continue
            if not reason and dmin < min_d:
                reason = distance_check(dmin, min_d).reason
            out.append(Candidate(sid, ew, fw, not reason, reason))
        self._screen_missing([sid for _, (sid, _, _) in unscreened])
        for k, (sid, ew, fw) in unscreened:
            found = self._screened[sid]
            reason = found.reason or (distance_check(found.min_distance, min_d).reason
                                      if found.min_distance < min_d else "")
            out[k] = Candidate(sid, ew, fw, not reason, reason)
        return out

    def selection_features(self) -> str:
        """The features scoring evaluations return (``UQRequest.features``): those of
        ``selection.features`` when the strategy uses them, else none."""
        s = self.cfg.selection
        return s.features if s.strategy in NEEDS_FEATURES else ""

    def selection_extras(self) -> "StoredExtras":
        """Features and conditions of candidates as batch strategies read them (driver.selection.SelectionExtras)."""
        return StoredExtras(self._state, self.cfg.selection.features)

    def n_conditions(self) -> int:
        """Distinct exploration conditions of the sweep (structure, temperature, pressure or relaxation)."""
        return len({(spec.name, t, p) for spec, t, p, _ in self.sweep()})

    def fingerprints(self) -> "StoredFingerprints":
        """The candidates' fingerprints as selection reads them (driver.selection.FingerprintSource)."""
        return StoredFingerprints(self._state, self._screen_missing, self._screened)

    def _screen_missing(self, ids) -> None:
        """Screen the structures of ``ids`` stored unscreened, into the view's cache."""
        from remote_al.structures import from_extxyz

        todo = [i for i in ids if i not in self._screened]
        if todo:
            for row in self._state.structures(id=todo):
                self._screened[row["id"]] = screen(from_extxyz(row["extxyz"])[0])

    def volume_rows(self) -> list[dict]:
        """The volume curve so far (driver.volume.summarize)."""
        from driver import volume

        return volume.summarize(self._state, self.cfg)

    def frame_extxyz(self, frame_hash: str) -> str:
        return self._store.frame(frame_hash)["extxyz"]

    def oob_frames(self, generation: int):
        """Hashes of generation ``generation``'s out-of-bag frames and the members each is out of bag for."""
        from driver.calibrate import oob_frames

        return oob_frames(self._state, generation)


class StoredFingerprints:
    """The compact fingerprints the state keeps, read in batches; the exact ones from the
    structures' extxyz, for the rare pairs the compact ones cannot decide."""

    def __init__(self, state: State, screen_missing: Callable, screened: dict):
        self._state, self._screen_missing, self._screened = state, screen_missing, screened

    def get(self, ids) -> list[Fingerprint | None]:
        rows = self._state.fingerprints(ids)
        self._screen_missing([i for i in ids if rows.get(i, (None, None))[0] is None])
        blobs = [self._screened[i].fingerprint if rows.get(i, (None, None))[0] is None else rows[i][1] for i in ids]
        return [None if b is None else decode(b) for b in blobs]

    def exact(self, sid: int) -> tuple | None:
        from remote_al.structures import from_extxyz

        rows = self._state.structures(id=sid)
        return fingerprint(from_extxyz(rows[0]["extxyz"])[0]) if rows else None


class StoredExtras:
    """A batch strategy's inputs from the state: the features the scoring stored, and each
    frame's condition, from the exploration that produced it (``md:r1:LiNiO2:T300:w0`` ->
    ``LiNiO2:T300``)."""

    def __init__(self, state: State, kind: str):
        self._state, self._kind = state, kind

    def features(self, ids):
        return self._state.features(list(ids), self._kind)

    def groups(self, ids):
        return {sid: condition_of(key) for sid, key in self._state.source_tasks(list(ids)).items()}


def condition_of(task_key: str) -> str:
    """The exploration condition of an MD task key: without the round, walker or member, and sweep."""
    if not task_key.startswith("md:"):
        return task_key
    spec, *rest = task_key.split(":")[2:]
    return ":".join([spec, *(p for p in rest if not (p[:1] in "wms" and p[1:].isdigit()))])


def _from_md(row) -> bool:
    """Whether a labeled row was held out from an MD run: an exploration (not an ensemble
    relaxation) or the labeler's MD of round 0 (task ``md-label:<structure>``)."""
    key = row["source_task"] or ""
    return (row["origin"] == "md" and bool(key) and not is_relaxation(key)) or key.startswith("md-label:")


def _tagged(extxyz: str, key: str, value: str) -> str:
    """One frame's extxyz with ``key="value"`` added to its comment line; the rest of the
    text is kept byte for byte (a parse and rewrite would round the labels)."""
    count, comment, rest = extxyz.split("\n", 2)
    return f'{count}\n{comment} {key}="{value}"\n{rest}'
