"""DP-GEN's fp command (``fp_style`` "custom") with remote-al's labeler: the same CHGNet
labels as a remote-al campaign.

DP-GEN writes each fp task's frame as ``fp_params.input_fn`` in ``input_fmt`` and reads
back ``output_fn`` in ``output_fmt`` with dpdata (``make_inputs.py`` sets them, and this
command, in machine.json). Run with the project's python (remote-al and CHGNet live there,
not in DP-GEN's environment):

    python fp_chgnet.py --input input.poscar --input-fmt vasp/poscar \\
        --output labeled --output-fmt deepmd/npy --labeler labeler.json

``labeler.json``: ``{"kind": "chgnet", "settings": {...}}``, the campaign's ``[labeler]``.
Exit status 1 when a frame cannot be labeled: DP-GEN then finds no output for the task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_k, "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def label_system(system, kind: str = "chgnet", settings: dict | None = None, workdir: Path | None = None):
    """A dpdata LabeledSystem: every frame of ``system`` labeled by remote-al's ``kind``
    labeler (energy, forces, and the virial when the labeler gives a stress)."""
    from make_inputs import dpdata_system

    from remote_al.labelers import get_labeler

    frames = system.to("ase/structure")
    type_map = list(system["atom_names"])
    labels = get_labeler(kind, settings).label(frames, list(range(len(frames))), Path(workdir or Path.cwd()))
    failed = [lb for lb in labels if lb.status != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(labels)} frames not labeled: {failed[0].reason}")
    return dpdata_system(frames, type_map, labels)


def main(argv=None) -> int:
    import dpdata

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--input-fmt", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--output-fmt", required=True)
    ap.add_argument("--labeler", help="labeler.json (default: chgnet with default settings)")
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.labeler).read_text()) if args.labeler else {"kind": "chgnet", "settings": {}}
    system = dpdata.System(args.input, fmt=args.input_fmt)
    try:
        labeled = label_system(system, spec["kind"], spec.get("settings") or {})
    except Exception as exc:  # noqa: BLE001 - any failure: no output, DP-GEN counts the task failed
        print(f"fp_chgnet.py: {exc}", file=sys.stderr)
        return 1
    labeled.to(args.output_fmt, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
