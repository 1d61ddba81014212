"""Each generation's calibration: its calibration frames, and the fit once they are evaluated.

Calibration pairs come from frames the ensemble (or a member) never trained on:

- the campaign's held-out test frames (``split = 'test'``): never in any training set; the
  error is the full ensemble mean's;
- out-of-bag frames: members train on different random subsets, so each training frame is
  held out by some members. A frame counts for member m of generation g only if m never
  trained on it, in g *or* in any generation m was continued from (``--init-model``
  carries what the member learned). Its error is the mean of those members only; its
  width is the full ensemble's, the quantity every decision uses.

The fit itself is ``remote_al.calibration.fit_calibration`` (pure); the result is written
to ``<campaign>/calibration/g<N>.json``. With ``selection.calibration_weighting = "thermal"``
only the frames whose energy the campaign's MD could visit are used
(``remote_al.calibration.thermal_weights``): the frames' labeler energies come from the
evaluation requests, each composition's minimum from the labeler's relaxation where the
campaign ran one (``relax-label:<name>``), else, and at most, the lowest calibration frame.
With ``"md"`` only the held-out frames drawn from the campaign's own MD explorations are
used (:func:`md_frame_weights`). With ``selection.calibration_pool = P`` generation g's fit
also takes the pairs of generations g-1 .. g-P+1, each pair with the width and error of its
own generation's ensemble (the scores |e|/w are what the quantile pools).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from remote_al.calibration import (Calibration, fit_calibration, frame_pairs, latest_calibration,
                                   thermal_weights, write_calibration)


def member_trained_hashes(systems: Sequence[str], manifest_systems: Mapping[str, Sequence[str]],
                          out_of_bag: Sequence[Sequence[int]]) -> set[str]:
    """Frame hashes one member trained on: every frame of its request's systems except the
    indices it held out (``TrainResult.out_of_bag``, per system in request order)."""
    if len(out_of_bag) != len(systems):
        raise ValueError(f"out_of_bag has {len(out_of_bag)} systems, the request {len(systems)}")
    trained: set[str] = set()
    for sysdir, held in zip(systems, out_of_bag):
        hashes = manifest_systems[Path(sysdir).name]
        held = set(held)
        trained.update(h for j, h in enumerate(hashes) if j not in held)
    return trained


def out_of_bag_members(dataset: Sequence[str], trained: Mapping[int, set[str]]) -> dict[str, tuple[int, ...]]:
    """Per frame of ``dataset`` (hashes), the members (sorted) that never trained on it;
    frames every member trained on are left out."""
    out = {}
    for h in dataset:
        members = tuple(sorted(m for m, seen in trained.items() if h not in seen))
        if members:
            out[h] = members
    return out


def _manifest(state, g: int) -> dict | None:
    row = state.dataset(g)
    path = Path(row["path"]) / "manifest.json" if row else None
    return json.loads(path.read_text()) if path and path.exists() else None


def oob_frames(state, g: int) -> tuple[list[str], tuple[tuple[int, ...], ...]]:
    """Generation g's out-of-bag calibration frames: (frame hashes, per frame the indices of
    the members, in ``state.models(g)`` order, that never trained on it)."""
    members = [m["member"] for m in state.models(g)]
    trained: dict[int, set[str]] = {}
    for m in members:
        seen: set[str] = set()
        k = g
        while k >= 0:  # the chain of generations this member continued from
            row = state.task(f"train:g{k}:m{m}")
            manifest = _manifest(state, k)
            if row is None or row["result"] is None or manifest is None:
                return [], ()  # bookkeeping incomplete (an old campaign): no out-of-bag frames
            req, res = json.loads(row["request"]), json.loads(row["result"])
            if not res.get("out_of_bag"):
                return [], ()
            seen |= member_trained_hashes(req["systems"], manifest["systems"], res["out_of_bag"])
            if not req.get("init_model"):
                break
            k -= 1
        trained[m] = seen
    manifest = _manifest(state, g)
    if not members or manifest is None:
        return [], ()
    dataset = [h for hashes in manifest["systems"].values() for h in hashes]
    oob = out_of_bag_members(dataset, trained)
    index = {m: i for i, m in enumerate(members)}
    hashes = sorted(oob)
    return hashes, tuple(tuple(index[m] for m in oob[h]) for h in hashes)


def _pairs(result: dict | None) -> tuple[list, list, list, list, int, list]:
    if not result or result.get("atom_force_width") is None or result.get("energy_error") is None:
        return [], [], [], [], 0, []
    return (list(result["atom_force_width"]), list(result["atom_force_error"]), list(result["energy_width"]),
            list(result["energy_error"]), int(result["n_frames"]), list(result["natoms"]))


def _formula(atoms) -> str:
    return atoms.get_chemical_formula(empirical=True)


def labeler_minima(state) -> dict[str, float]:
    """Per composition (empirical formula), the labeler's energy per atom of its relaxed
    structure, from the campaign's ``relax-label`` tasks (none: an empty dict). The energy is
    the record's ``energies_eV_atom`` (``RelaxResult``: its relaxed structures carry none),
    or the structure's own where a record gives it that way."""
    from remote_al.structures import from_extxyz

    out: dict[str, float] = {}
    for row in state.tasks(status="done", function="relax_label"):
        res = json.loads(row["result"] or "null") or {}
        relaxed = from_extxyz(res.get("relaxed_extxyz") or "")
        energies = list(res.get("energies_eV_atom") or [])
        for k, atoms in enumerate(relaxed):
            energy = energies[k] if k < len(energies) else None
            if energy is None and atoms.calc is not None and atoms.calc.results.get("energy") is not None:
                energy = atoms.calc.results["energy"] / len(atoms)
            if energy is not None and np.isfinite(energy):
                key = _formula(atoms)
                out[key] = min(out.get(key, np.inf), float(energy))
    return out


def excess_energies(frames: Sequence, minima: Mapping[str, float]) -> np.ndarray:
    """Per labeled frame, its energy per atom above its composition's minimum: the lower of
    ``minima`` (:func:`labeler_minima`) and the composition's lowest frame here. ValueError
    when a frame has no energy."""
    energies, comps = [], []
    for i, atoms in enumerate(frames):
        energy = atoms.calc.results.get("energy") if atoms.calc is not None else None
        if energy is None or not np.isfinite(energy):
            raise ValueError(f"calibration frame {i} has no labeler energy")
        energies.append(float(energy) / len(atoms))
        comps.append(_formula(atoms))
    lowest = {c: min(min(e for e, k in zip(energies, comps) if k == c), minima.get(c, np.inf)) for c in set(comps)}
    return np.array([e - lowest[c] for e, c in zip(energies, comps)])


def thermal_frame_weights(frames: Sequence, minima: Mapping[str, float], temperatures) -> np.ndarray:
    """Per calibration frame (labeled Atoms, in pair order), 1 when the campaign's MD could
    visit its energy above its composition's minimum (:func:`excess_energies`), else 0
    (``remote_al.calibration.thermal_weights``). ValueError when a frame has no energy."""
    return thermal_weights(excess_energies(frames, minima), [len(a) for a in frames], temperatures)


def md_frame_weights(frames: Sequence) -> np.ndarray:
    """Per calibration frame (in pair order), 1 when it was held out from one of the
    campaign's MD explorations (the ``held_out_md`` tag that
    ``CampaignView.test_frames_extxyz`` gives such frames), else 0: out-of-bag frames,
    rattled copies and frames of ensemble relaxations."""
    return np.array([1.0 if a.info.get("held_out_md") else 0.0 for a in frames])


def evaluated_frames(state, parts: Sequence[tuple[int, dict | None, dict | None]]) -> list:
    """The labeled frames behind the calibration pairs of ``parts`` ((generation, test
    result, out-of-bag result), in the order :func:`calibrate_generation` takes them: the
    generation fitted, then those pooled in), each generation's test frames, then its
    out-of-bag ones."""
    from remote_al.structures import from_extxyz

    frames: list = []
    for g, test_result, oob_result in parts:
        for key, res in zip((f"eval:g{g}", f"oob:g{g}"), (test_result, oob_result)):
            task = state.task(key)
            if res and res.get("atom_force_width") is not None and res.get("energy_error") is not None and task:
                frames += from_extxyz(json.loads(task["request"])["frames_extxyz"])
    return frames


def generation_results(state, g: int) -> tuple[dict | None, dict | None]:
    """Generation g's evaluated test and out-of-bag results (UQResult dicts); None for a
    task not asked for or not done."""
    out = []
    for key in (f"eval:g{g}", f"oob:g{g}"):
        task = state.task(key)
        out.append(json.loads(task["result"]) if task is not None and task["status"] == "done" else None)
    return out[0], out[1]


def pooled_generations(generation: int, pool: int) -> list[int]:
    """The earlier generations whose pairs generation ``generation``'s fit pools
    (``selection.calibration_pool``), newest first: ``pool - 1`` of them, down to 0."""
    return list(range(generation - 1, max(generation - pool, -1), -1))


def calibration_inputs(state, g: int, selection, test_result: dict | None, oob_result: dict | None):
    """What generation ``g``'s fit takes, as the campaign gives it to
    :func:`calibrate_generation`: ``(test_result, oob_result, earlier, frames)``. ``earlier``
    holds the generations pooled in (``selection.calibration_pool``); with
    ``selection.calibration_frames == "held_out"`` every out-of-bag result is left out;
    ``frames`` (:func:`evaluated_frames`) only when the pairs are weighted, else None."""
    earlier = [(k, *generation_results(state, k)) for k in pooled_generations(g, selection.calibration_pool)]
    if selection.calibration_frames == "held_out":  # out-of-bag errors are a few members' mean
        oob_result, earlier = None, [(k, test, None) for k, test, _ in earlier]
    frames = (evaluated_frames(state, [(g, test_result, oob_result), *earlier])
              if selection.calibration_weighting != "none" else None)
    return test_result, oob_result, earlier, frames


def _source(test_result, oob_result) -> tuple[str, list]:
    parts = [_pairs(test_result), _pairs(oob_result)]
    return " + ".join(f"{p[4]} {name}" for name, p in zip(("held-out test frames", "out-of-bag frames"), parts)
                      if p[4]), parts


def calibrate_generation(campaign_dir: Path, generation: int, test_result: dict | None,
                         oob_result: dict | None, selection, n_members: int,
                         frames: Sequence | None = None, minima: Mapping[str, float] | None = None,
                         temperatures=(), earlier: Sequence[tuple[int, dict | None, dict | None]] = ()
                         ) -> Calibration | None:
    """Fit generation ``generation``'s calibration from its evaluated test and out-of-bag
    frames (UQResult dicts) and write it; None when neither gives pairs. ``earlier``:
    (generation, test result, out-of-bag result) of the earlier generations pooled in
    (:func:`pooled_generations`, ``selection.calibration_pool``); their pairs join the fit
    and the record names them. With ``selection.calibration_weighting == "thermal"``,
    ``frames`` (the labeled frames in pair order: this generation's test, then out-of-bag
    frames, then each earlier generation's, as :func:`evaluated_frames` gives them),
    ``minima`` (:func:`labeler_minima`) and the campaign's MD ``temperatures`` weight the
    pairs; without frames the fit is unweighted and its note says why. With ``"md"``,
    ``frames`` alone weights them (:func:`md_frame_weights`)."""
    source, parts = _source(test_result, oob_result)
    if not source:
        return None
    pooled = []
    for k, test_k, oob_k in earlier:
        source_k, parts_k = _source(test_k, oob_k)
        if source_k:
            pooled.append(k)
            parts += parts_k
            source += f"; pooled with generation {k}: {source_k}"
    aw, ae, ew, ee, natoms = ([x for p in parts for x in p[k]] for k in (0, 1, 2, 3, 5))
    n_frames = sum(p[4] for p in parts)
    weights: dict = {}
    note = ""
    kind = selection.calibration_weighting
    if kind in ("thermal", "md"):
        try:
            if frames is None or len(frames) != n_frames or (kind == "thermal" and not temperatures):
                raise ValueError("the calibration frames or the MD temperatures are not at hand")
            fw = (thermal_frame_weights(frames, minima or {}, temperatures) if kind == "thermal"
                  else md_frame_weights(frames))
            weights = dict(frame_weights=fw, atom_weights=np.repeat(fw, natoms), weighting=kind)
        except ValueError as exc:
            note = f"unweighted: {exc}"
    cal = fit_calibration(
        generation, np.array(aw), np.array(ae), np.array(ew), np.array(ee), n_frames=n_frames, n_members=n_members,
        coverage_level=selection.confidence, fallback=latest_calibration(campaign_dir, up_to=generation - 1),
        min_frames=selection.calibration_min_frames, source=source, note=note, pooled_generations=pooled,
        **weights, **dict(zip(("frame_widths", "frame_errors"), frame_pairs(aw, ae, natoms))),
    )
    write_calibration(campaign_dir, cal)
    return cal
