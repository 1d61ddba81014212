"""Refit every generation's calibration of a finished campaign with the current code.

    python benchmarks/recalibrate.py CAMPAIGN_DIR          # rewrites CAMPAIGN_DIR/calibration/g*.json

The same pairs the campaign fitted on (its ``eval:gN`` and ``oob:gN`` results, as stored),
the same frames, the labeler minima and MD temperatures as ``driver/campaign/apply.py``
hands them to ``driver.calibrate.calibrate_generation``, generation by generation (a
generation with too few pairs falls back to the one before, as in the campaign). For
measuring a change of the calibration code on a campaign already run: copy the campaign
directory, recalibrate the copy, and score it with ``benchmarks/calibration.py --workdir``
(the models are read where the campaign wrote them). ``--weighting`` / ``--pool`` / ``--frames`` refit
with another ``selection.calibration_weighting`` / ``calibration_pool`` /
``calibration_frames`` than the campaign ran with. Prints each generation's factors before and after.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driver.calibrate import (calibrate_generation, calibration_inputs, generation_results,  # noqa: E402
                              labeler_minima)
from driver.campaign import open_campaign_state  # noqa: E402
from driver.config import md_temperatures, parse_config  # noqa: E402
from remote_al.calibration import read_calibration  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("campaign_dir")
    ap.add_argument("--weighting", choices=("none", "thermal", "md"),
                    help="refit with this selection.calibration_weighting instead of the campaign's")
    ap.add_argument("--pool", type=int, help="refit with this selection.calibration_pool instead of the campaign's")
    ap.add_argument("--frames", choices=("all", "held_out"),
                    help="refit with this selection.calibration_frames instead of the campaign's")
    a = ap.parse_args(argv)
    cdir = Path(a.campaign_dir).resolve()
    st = open_campaign_state(cdir)
    config = json.loads(st.get_meta("config_json"))
    for key, value in (("calibration_weighting", a.weighting), ("calibration_pool", a.pool),
                       ("calibration_frames", a.frames)):
        if value is not None:
            config.setdefault("selection", {})[key] = value
    cfg = parse_config(config, base_dir=cdir)
    temperatures = md_temperatures(cfg)
    minima = labeler_minima(st)
    print(f"{cdir}: weighting {cfg.selection.calibration_weighting!r}, pool {cfg.selection.calibration_pool}, "
          f"temperatures {temperatures} K, "
          f"labeler minima (eV/atom) {json.dumps({k: round(v, 4) for k, v in minima.items()})}")
    for g in sorted({m["generation"] for m in st.models()}):
        test, oob, earlier, frames = calibration_inputs(st, g, cfg.selection, *generation_results(st, g))
        before = read_calibration(cdir, g)
        cal = calibrate_generation(cdir, g, test, oob, cfg.selection, len(st.models(g)), frames=frames,
                                   minima=minima, temperatures=temperatures, earlier=earlier)
        if cal is None:
            print(f"generation {g}: no calibration pairs")
            continue
        was = (f"{before.force_scale:.3f} / {before.frame_scale:.3f} / {before.energy_scale:.3f}"
               if before is not None else "none")
        print(f"generation {g}: factors per atom / per frame / energy {was} -> {cal.force_scale:.3f} / "
              f"{cal.frame_scale:.3f} / {cal.energy_scale:.3f} (effective frames {cal.effective_frames}; "
              f"{cal.note or 'no note'})")


if __name__ == "__main__":
    main()
