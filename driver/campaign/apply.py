"""How the engine carries out each operation of ``driver.campaign.plan`` on the state, the
dataset store and the placement of task inputs. Only the engine calls ``Applier.apply``,
inside its transaction."""

from __future__ import annotations

import contextlib
import json
from typing import Callable, Iterator

from driver.campaign import plan, requests
from driver.campaign.hooks import Hooks
from driver.campaign.rules import round_metrics
from driver.campaign.tasks import TaskSpec
from driver.campaign.view import CampaignView
from driver.dataset import DatasetError, DatasetStore, LabelRejected
from driver.placement import Placement
from driver.state import State
from remote_al.calibration_file import WEIGHTED
from remote_al.structures import to_extxyz


class Applier:
    def __init__(self, state: State, store: DatasetStore, placement: Placement, view: CampaignView,
                 say: Callable[[str], None], hooks: Hooks):
        self.state, self.store, self.placement, self.view = state, store, placement, view
        self.say, self.hooks = say, hooks
        self._said: list[str] = []
        self._depth = 0
        self._handlers = {
            plan.AddTask: self._add_task, plan.SetPhase: self._set_phase, plan.Stop: self._stop,
            plan.MakeCurrent: self._make_current, plan.AddStructure: self._add_structure,
            plan.Decide: self._decide, plan.UpdateStructure: self._update_structure,
            plan.SetStructureStatus: self._set_structure_status, plan.SetWidths: self._set_widths,
            plan.StoreLabel: self._store_label, plan.FailLabel: self._fail_label, plan.AddModel: self._add_model,
            plan.CarryModels: self._carry_models, plan.StartTraining: self._start_training,
            plan.Calibrate: self._calibrate, plan.SetMetrics: self._set_metrics,
            plan.UpdateRoundMetrics: self._update_round_metrics, plan.RewriteRequest: self._rewrite_request,
            plan.FinishTask: self._finish_task, plan.Event: self._event, plan.Say: self._say,
        }

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around everything applied inside; what the operations say is
        said once the outermost batch is committed (nothing is said of a rolled-back one)."""
        if self._depth:
            self._depth += 1
            try:
                with self.state.transaction():
                    yield
            finally:
                self._depth -= 1
            return
        self._said, self._depth = [], 1
        try:
            with self.state.transaction():
                yield
        finally:
            self._depth = 0
        for message in self._said:
            self.say(message)

    def apply(self, ops) -> None:
        """Carry out ``ops`` in order, in one transaction."""
        with self.batch():
            for op in ops:
                self._handlers[type(op)](op)

    # ---------------------------------------------------------------- tasks
    def _add_task(self, op: plan.AddTask) -> None:
        self.add_task(op.spec)

    def add_task(self, spec: TaskSpec) -> None:
        kind = spec.kind
        request = spec.request if isinstance(spec.request, dict) else spec.request.to_dict()
        request, stage = self.placement.translate(kind.pool, request)  # paths as the pool's site sees them
        self.state.add_task(spec.key, kind.function, kind.pool, spec.round, spec.generation, request,
                            kind=kind.value, context=spec.context.to_dict(), stage=stage)

    def _rewrite_request(self, op: plan.RewriteRequest) -> None:
        self.state.set_request(op.key, op.request if isinstance(op.request, dict) else op.request.to_dict())

    def _finish_task(self, op: plan.FinishTask) -> None:
        self.state.mark_done(op.key, dict(op.result))

    # ---------------------------------------------------------------- phases
    def _set_phase(self, op: plan.SetPhase) -> None:
        if op.logged:
            self.hooks.at("phase")
        self.state.set_meta("phase", op.phase.value)
        if op.round is not None:
            self.state.set_meta("round", str(op.round))
        if op.logged:
            self.state.event("phase", f"round {self.view.shown_round}: {op.phase.value}")

    def _stop(self, op: plan.Stop) -> None:
        self.state.set_meta("stopped_in_phase", self.view.phase.value)  # where a retry takes it up again
        self.state.set_meta("stop_reason", op.reason)
        self.state.set_meta("stop_kind", op.kind.value)
        self.state.set_meta("phase", op.phase.value)
        self.state.event("stop", op.reason)
        self._said.append(f"stopping: {op.reason}")

    def _make_current(self, op: plan.MakeCurrent) -> None:
        self.state.set_meta("current_generation", str(op.generation))

    # ----------------------------------------------------------- structures
    def _add_structure(self, op: plan.AddStructure) -> None:
        sid = self.state.add_structure(**op.row)
        if sid is not None and op.decision is not None:
            self.state.decide(op.decision[0], sid, op.decision[1], op.decision[2])

    def _decide(self, op: plan.Decide) -> None:
        self.state.decide(op.round, op.structure_id, op.decision, op.reason)

    def _update_structure(self, op: plan.UpdateStructure) -> None:
        self.state.update_structure(op.structure_id, **op.values)

    def _set_structure_status(self, op: plan.SetStructureStatus) -> None:
        self.state.set_structure_status(op.structure_ids, op.status)

    def _set_widths(self, op: plan.SetWidths) -> None:
        self.state.set_widths(op.rows)
        if op.features:
            self.state.set_features(op.generation, op.kind, op.features)

    # ---------------------------------------------------------------- labels
    def _store_label(self, op: plan.StoreLabel) -> None:
        srow = self.state.structures(id=op.structure_id)[0]
        atoms = op.frame
        try:  # the dataset store refuses NaN/inf or malformed labels: they never reach training
            self.store.add(atoms, structure_id=op.structure_id, labeler=op.labeler,
                           labeler_settings=dict(op.settings), task_key=op.task_key,
                           exploration=srow["source_task"] or "initial", model_generation=srow["generation"],
                           split=srow["split"], round_=srow["round"])
        except LabelRejected as exc:
            self.state.fail_label(op.structure_id, op.task_key, op.labeler, str(exc))
            return
        self.state.add_label(op.structure_id, op.task_key, op.labeler, op.labeler_note, op.energy, to_extxyz(atoms))

    def _fail_label(self, op: plan.FailLabel) -> None:
        self.state.fail_label(op.structure_id, op.task_key, op.labeler, op.reason)

    # -------------------------------------------------------------- training
    def _add_model(self, op: plan.AddModel) -> None:
        r = op.result
        self.state.add_model(op.generation, op.member, op.task_key, r["model_path"], r["checkpoint_path"],
                             r["lcurve_path"], r["lcurve_last"], r["n_train_frames"], r["wall_s"])

    def _carry_models(self, op: plan.CarryModels) -> None:
        self.state.carry_models(op.source, op.target)

    def _start_training(self, op: plan.StartTraining) -> None:
        g = op.generation
        systems, n_frames = self._export_dataset(g)
        specs, what = requests.training(self.view, g, systems)
        for spec in specs:
            self.add_task(spec)
        if op.next_round is not None:
            self.state.set_meta("round", str(op.next_round))
        self._said.append(f"training generation {g}: {what} on {n_frames} frames")

    def _export_dataset(self, g: int) -> tuple[tuple[str, ...], int]:
        """Record generation g's training set (all training labels so far) and export it."""
        try:
            hashes = self.store.version(g)  # recorded before a restart: the set never changes
        except DatasetError:
            hashes = self.store.select("train", max_round=g)
            self.store.record_version(g, hashes)
        out = self.store.export(g, self.view.directory / "datasets" / f"gen-{g:03d}",
                                type_map=self.view.cfg.campaign.type_map)
        self.hooks.at("after_export")
        ids = [self.store.frame(h)["structure_id"] for h in hashes]
        self.state.record_dataset(g, out.path, out.systems, ids, out.n_frames)
        return tuple(out.systems), out.n_frames

    # ----------------------------------------------------------- calibration
    def _calibrate(self, op: plan.Calibrate) -> None:
        from driver.calibrate import calibrate_generation, calibration_inputs, labeler_minima

        g = op.generation

        def done(key: str) -> tuple[bool, dict | None]:
            t = self.state.task(key)
            if t is None:
                return True, None  # not asked for (no such frames)
            return t["status"] == "done", json.loads(t["result"]) if t["status"] == "done" else None

        test_result, oob_result = op.test_result, op.oob_result
        if test_result is None:
            ready, test_result = done(f"eval:g{g}")
            if not ready:
                return
        if oob_result is None:
            ready, oob_result = done(f"oob:g{g}")
            if not ready:
                return
        sel = self.view.cfg.selection
        test_result, oob_result, earlier, frames = calibration_inputs(self.state, g, sel, test_result, oob_result)
        weights = {} if frames is None else dict(frames=frames)  # weighted pairs are read off their frames
        if sel.calibration_weighting == "thermal":
            weights.update(minima=labeler_minima(self.state), temperatures=self.view.temperatures())
        cal = calibrate_generation(self.view.directory, g, test_result, oob_result, sel, len(self.state.models(g)),
                                   earlier=earlier, **weights)
        if cal is None:
            return
        vals = dict(force_scale=cal.force_scale, frame_force_scale=cal.frame_scale, energy_scale=cal.energy_scale,
                    calibrated=float(cal.force_calibrated), n_calibration_atoms=cal.n_force_pairs)
        if sel.force_threshold_mode == "calibrated":
            vals["force_threshold"] = float(min(cal.force_width_threshold(sel.target_force_error),
                                                0.99 * sel.force_upper))
        self._set_metrics(plan.SetMetrics("generation", g, vals))
        self.state.event("calibration", (
            f"generation {g}: 95 % force bound = {cal.force_scale:.2f} x width per atom, "
            f"{cal.frame_scale:.2f} x width per frame, energy bound = "
            f"{cal.energy_scale:.2f} x width ({cal.source}; {cal.n_force_pairs} atoms"
            + (f"; {cal.effective_frames:g} of {cal.n_frames} frames {WEIGHTED[cal.weighting]}"
               if cal.weighting in WEIGHTED else "")
            + (f"; {cal.note}" if cal.note else "") + ")"))

    # --------------------------------------------------------------- numbers
    def _set_metrics(self, op: plan.SetMetrics) -> None:
        for name, value in op.values.items():
            self.state.set_metric(op.scope, op.idx, name, value)

    def _update_round_metrics(self, op: plan.UpdateRoundMetrics) -> None:
        self._set_metrics(plan.SetMetrics("round", op.round, round_metrics(self.view, op.round)))

    def _event(self, op: plan.Event) -> None:
        self.state.event(op.kind, op.message)

    def _say(self, op: plan.Say) -> None:
        self._said.append(op.message)
