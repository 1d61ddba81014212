"""What ``remote-al report`` shows, gathered from a campaign as plain data (no HTML).

Everything comes from the campaign folder: the state (``state.sqlite``), the copied
``campaign.toml``, the members' ``lcurve.out`` files and, for parity, the final
generation's models (see ``driver.report``). Nothing in the campaign is changed.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from driver.state import State

log = logging.getLogger(__name__)

PARITY_CACHE = "parity.npz"


# ------------------------------------------------------------------ parity data
@dataclass(frozen=True)
class ParityData:
    """Ensemble predictions against labels on held-out frames (flat numpy arrays)."""

    source: str  # "predict_ensemble" or "stored evaluation"
    generation: int
    n_members: int
    energy_pred: np.ndarray  # (F,) eV/atom, ensemble mean
    energy_ref: np.ndarray  # (F,) eV/atom
    frame_force_width: np.ndarray  # (F,) eV/A, max CI width over components
    frame_force_error: np.ndarray  # (F,) eV/A, max |mean - label| over components
    energy_width: np.ndarray | None = None  # (F,) eV/atom
    force_pred: np.ndarray | None = None  # (K,) eV/A, every component of every frame
    force_ref: np.ndarray | None = None
    force_width: np.ndarray | None = None  # (K,) eV/A


def parity_arrays(energies, forces, natoms, energy_ref, forces_ref, confidence: float = 0.95) -> dict:
    """Flat parity/calibration arrays from ensemble predictions.

    energies: (M, F) total energies; forces: F arrays (M, N_f, 3); natoms: (F,);
    energy_ref: (F,) total energies; forces_ref: F arrays (N_f, 3).
    """
    from remote_al.uq import ensemble_ci_width

    energies = np.asarray(energies, dtype=float)
    natoms = np.asarray(natoms, dtype=float)
    m = energies.shape[0]
    per_atom = energies / natoms[None, :]
    f_pred, f_ref, f_w, frame_w, frame_e = [], [], [], [], []
    for fi, ref in zip(forces, forces_ref):
        fi = np.asarray(fi, dtype=float)
        mean = fi.mean(axis=0)
        ref = np.asarray(ref, dtype=float).reshape(mean.shape)
        w = ensemble_ci_width(fi, confidence, axis=0) if m >= 2 else np.full(mean.shape, np.nan)
        f_pred.append(mean.ravel())
        f_ref.append(ref.ravel())
        f_w.append(w.ravel())
        frame_w.append(float(np.max(w)))
        frame_e.append(float(np.max(np.abs(mean - ref))))
    return {
        "n_members": m,
        "energy_pred": per_atom.mean(axis=0),
        "energy_ref": np.asarray(energy_ref, dtype=float) / natoms,
        "energy_width": ensemble_ci_width(per_atom, confidence, axis=0) if m >= 2 else np.full(natoms.shape, np.nan),
        "force_pred": np.concatenate(f_pred),
        "force_ref": np.concatenate(f_ref),
        "force_width": np.concatenate(f_w),
        "frame_force_width": np.array(frame_w),
        "frame_force_error": np.array(frame_e),
    }


def _cache_key(model_paths: list[str], structure_ids: list[int], confidence: float) -> str:
    stamps = []
    for p in model_paths:
        st = Path(p).stat()
        stamps.append([p, st.st_size, int(st.st_mtime)])
    return json.dumps({"models": stamps, "frames": structure_ids, "confidence": confidence}, sort_keys=True)


def predicted_parity(state: State, outdir: Path, confidence: float) -> tuple[ParityData | None, str]:
    """Evaluate the latest generation on the held-out frames (cached); (None, why) if not possible."""
    gens = sorted({m["generation"] for m in state.models()})
    if not gens:
        return None, "no trained generation yet"
    g = gens[-1]
    paths = [m["path"] for m in state.models(g)]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return None, (f"the model files of generation {g} are not on this machine (e.g. {missing[0]}): "
                      "they live on the endpoint's filesystem; transfer them or run the report there")
    rows = state.label_rows("ok", "test")
    if not rows:
        return None, "no labeled held-out frames yet"
    ids = [int(r["structure_id"]) for r in rows]
    key = _cache_key(paths, ids, confidence)
    cache = outdir / PARITY_CACHE
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return parity_from_npz(z, "predict_ensemble"), ""
    from remote_al.structures import from_extxyz
    from remote_al.torch_env import task_environment

    frames = [from_extxyz(r["extxyz"])[0] for r in rows]
    # DeePMD-kit warns at import unless its thread variables are set: they are, as in a task
    # (one thread, and on a CPU DeePMD-kit's own batch size), where the shell has not.
    with task_environment():
        try:
            from remote_al.ensemble import predict_ensemble
            import deepmd.infer  # noqa: F401  (fails without deepmd-kit/torch)
        except ImportError as exc:
            return None, (f"deepmd-kit is not importable here ({exc}); force parity and per-component "
                          "calibration need it (pip install 'remote-al[endpoint]')")
        energies, forces = predict_ensemble(paths, frames, batch_size=64)
    arrays = parity_arrays(
        energies, forces, [len(a) for a in frames],
        [a.calc.results["energy"] for a in frames], [a.calc.results["forces"] for a in frames], confidence,
    )
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = outdir / (PARITY_CACHE + ".tmp.npz")
    np.savez(tmp, key=np.array(key), generation=np.array(g), structure_ids=np.array(ids), **arrays)
    tmp.replace(cache)
    with np.load(cache, allow_pickle=False) as z:
        return parity_from_npz(z, "predict_ensemble"), ""


def parity_from_npz(z, source: str) -> ParityData:
    return ParityData(
        source=source, generation=int(z["generation"]), n_members=int(z["n_members"]),
        energy_pred=z["energy_pred"], energy_ref=z["energy_ref"], energy_width=z["energy_width"],
        force_pred=z["force_pred"], force_ref=z["force_ref"], force_width=z["force_width"],
        frame_force_width=z["frame_force_width"], frame_force_error=z["frame_force_error"],
    )


def stored_parity(state: State) -> ParityData | None:
    """Per-frame energies and force summary of the latest generation's stored evaluation."""
    best = None
    for row in state.tasks(status="done", function="uq"):
        if not (row["key"].startswith("eval:") or row["key"].startswith("final-eval:")):
            continue
        res = json.loads(row["result"] or "{}")
        if res.get("energy_error") is None:
            continue
        rank = (row["generation"], row["key"].startswith("final-eval:"))
        if best is None or rank > best[0]:
            best = (rank, row["generation"], res)
    if best is None:
        return None
    _, g, res = best
    e_mean = np.array(res["energy_mean"], dtype=float)
    return ParityData(
        source="stored evaluation", generation=int(g), n_members=int(res.get("n_members", 0)),
        energy_pred=e_mean, energy_ref=e_mean - np.array(res["energy_error"], dtype=float),
        energy_width=np.array(res["energy_width"], dtype=float),
        frame_force_width=np.array(res["force_width"], dtype=float),
        frame_force_error=np.array(res["force_error_max"], dtype=float),
    )


# ------------------------------------------------------------------ gathering
def campaign_settings(campaign_dir: Path) -> tuple[str, dict]:
    path = campaign_dir / "campaign.toml"
    if not path.exists():
        return "", {}
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text, {}


def selection_used(state: State, campaign_dir: Path, settings: dict):
    """The selection settings the campaign ran with: from the configuration stored in its
    state (not the campaign file read again with defaults, which may have changed since)."""
    from driver.config import parse_config
    from driver.config_models import SelectionSection

    raw = state.get_meta("config_json")
    if raw:
        return parse_config(json.loads(raw), base_dir=campaign_dir).selection
    sel = settings.get("selection", {}) if isinstance(settings.get("selection"), dict) else {}
    return SelectionSection(**{k: v for k, v in sel.items() if k in ("confidence", "force_threshold", "force_upper")})


def learning_curves(state: State) -> list[tuple[int, dict[str, dict], str]]:
    """Per generation: (generation, {member label: lcurve columns}, note)."""
    from remote_al.deepmd_data import parse_lcurve

    out = []
    seen: dict[str, int] = {}
    by_gen: dict[int, list] = {}
    for m in state.models():
        by_gen.setdefault(m["generation"], []).append(m)
    for g, members in sorted(by_gen.items()):
        curves, notes = {}, []
        carried = [m for m in members if m["lcurve_path"] in seen]
        if carried and len(carried) == len(members):
            out.append((g, {}, f"same models as generation {seen[members[0]['lcurve_path']]} (no new labels)"))
            continue
        for m in members:
            seen.setdefault(m["lcurve_path"], g)
            p = Path(m["lcurve_path"])
            if not p.exists():
                notes.append(f"member {m['member']}: {p} not on this machine")
                continue
            try:
                curves[f"m{m['member']}"] = parse_lcurve(p)
            except ValueError as exc:
                notes.append(f"member {m['member']}: {exc}")
        out.append((g, curves, "; ".join(notes)))
    return out


def labels_by_round(state: State) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for r in state.label_rows(status=None):
        kind = "failed" if r["status"] != "ok" else ("held out" if r["split"] == "test" else "train")
        d = out.setdefault(int(r["round"]), {})
        d[kind] = d.get(kind, 0) + 1
    return out


def widths_by_round(state: State) -> dict[int, list[float]]:
    return state.explored_widths_by_round()


def remote_al_version() -> str:
    from remote_al import __version__

    return __version__


def dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_counts(state: State) -> dict:
    """Labels per labeler, label counts, dataset sizes and digests, the last event's time."""
    labelers = state.labelers()
    n_ok, n_failed = state.label_count("ok"), state.label_count("failed")
    datasets = state.dataset_sizes()
    digests = {r["generation"]: r["digest"] for r in state.version_rows()}
    last_ts = state.last_event_time()
    return {"labelers": labelers, "n_ok": n_ok, "n_failed": n_failed, "datasets": datasets,
            "digests": digests, "last_ts": last_ts}


def report_parity(state: State, outdir: Path, confidence: float,
                  compute_parity: bool) -> tuple[ParityData | None, str, bool]:
    """The parity data the report shows: ``(parity, why, stored)``.

    The local evaluation (or, with ``compute_parity=False``, its cache); where that is not
    possible (``why`` says why), the stored evaluation results (``stored`` is True).
    """
    parity, why = None, ""
    if compute_parity:
        try:
            parity, why = predicted_parity(state, outdir, confidence)
        except Exception as exc:  # a failed evaluation must not cost the rest of the report
            log.warning("parity evaluation failed: %s", exc)
            parity, why = None, f"evaluating the models failed: {type(exc).__name__}: {exc}"
    else:
        why = "local evaluation switched off (--no-parity)"
        cache = outdir / PARITY_CACHE
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                parity = parity_from_npz(z, "predict_ensemble (cached)")
    if parity is not None:
        return parity, why, False
    return stored_parity(state), why, True


def volume_rows(state: State, campaign_dir: Path) -> tuple[list[dict] | None, Exception | None]:
    """``driver.volume.summarize`` of the campaign, with the configuration stored in its
    state: ``(rows, None)``; ``(None, None)`` when it relaxed nothing; ``(None, error)``
    when the stored configuration cannot be read."""
    if not state.has_function("relax", "relax_label"):
        return None, None
    from driver import volume
    from driver.config import parse_config

    try:  # the configuration the driver ran with, as stored in the state
        cfg = parse_config(json.loads(state.get_meta("config_json")), base_dir=campaign_dir)
    except Exception as exc:
        return None, exc
    return volume.summarize(state, cfg), None
