"""Each generation's calibration, fitted from its evaluation on held-out frames.

The fit itself is ``remote_al.calibration.fit_calibration`` (pure); this module gathers its
inputs from an evaluation result, falls back to the previous generation's file when there
are too few pairs, and writes ``<campaign>/calibration/g<N>.json``.
"""

from __future__ import annotations

from pathlib import Path

from remote_al.calibration import Calibration, fit_calibration, latest_calibration, write_calibration


def calibrate_generation(campaign_dir: Path, generation: int, result: dict, selection, n_members: int) -> Calibration | None:
    """The calibration of ``generation`` from its evaluation ``result`` (a UQResult dict of
    labeled held-out frames), written to the campaign folder. None when the result has no
    per-atom errors (frames without labels)."""
    if result.get("atom_force_width") is None or result.get("energy_error") is None:
        return None
    natoms = result["natoms"]
    cal = fit_calibration(
        generation,
        result["atom_force_width"],
        result["atom_force_error"],
        result["energy_width"],
        result["energy_error"],
        n_frames=int(result["n_frames"]),
        n_members=n_members,
        coverage_level=selection.confidence,
        fallback=latest_calibration(campaign_dir, up_to=generation - 1),
        min_frames=selection.calibration_min_frames,
    )
    assert len(result["atom_force_width"]) == sum(natoms)
    write_calibration(campaign_dir, cal)
    return cal
