"""DP-GEN's own checks of a generated ``param.json`` and ``machine.json``, without running
DP-GEN. Run it with DP-GEN's python (the virtual environment of setup.sh):

    benchmarks/peers/dpgen/.venv/bin/python benchmarks/peers/dpgen/check_inputs.py \\
        runs/dpgen/linio2/param.json runs/dpgen/linio2/machine.json [--make-train]

1. ``dpgen.util.normalize`` (dargs, strict: no unknown key) with
   ``dpgen.generator.arginfo.run_jdata_arginfo`` on param.json, as ``dpgen run`` does
   first, and with ``run_mdata_arginfo`` on machine.json (``dpgen run`` does not check
   the machine file itself; ``dpgen.remote.decide_machine.convert_mdata`` must take it).
It works in the folder of param.json (DP-GEN writes dpgen.log there). ``--simplify``: the
same with ``dpgen.simplify.arginfo`` (``simplify_jdata_arginfo``, ``simplify_mdata_arginfo``),
as ``dpgen simplify`` does first (benchmarks/vs_dpgen_simplify.py).

2. ``--make-train``: DP-GEN's ``make_train`` of iteration 0 in that folder
   (``iter.000000/00.train``, removed afterwards unless ``--keep``): it reads
   ``init_data_sys`` with dpdata and writes each member's input.json, which then goes
   through DeePMD-kit's own argument check (``deepmd.utils.argcheck.normalize``), as
   ``dp --pt train`` would. Nothing is trained.

Prints one JSON line: ``{"ok": true, ...}``; exit status 1 with the message otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
from pathlib import Path


def check(param_path: str, machine_path: str, make_train: bool = False, keep: bool = False,
          simplify: bool = False) -> dict:
    param_path, machine_path = Path(param_path).resolve(), Path(machine_path).resolve()
    os.chdir(param_path.parent)  # before DP-GEN is imported: it opens dpgen.log in the working folder
    from dpgen.remote.decide_machine import convert_mdata
    from dpgen.util import normalize

    if simplify:
        from dpgen.simplify.arginfo import simplify_jdata_arginfo as jdata_arginfo
        from dpgen.simplify.arginfo import simplify_mdata_arginfo as mdata_arginfo
    else:
        from dpgen.generator.arginfo import run_jdata_arginfo as jdata_arginfo
        from dpgen.generator.arginfo import run_mdata_arginfo as mdata_arginfo

    jdata = json.loads(Path(param_path).read_text())
    mdata = json.loads(Path(machine_path).read_text())
    jdata = normalize(jdata_arginfo(), jdata)
    normalize(mdata_arginfo(), json.loads(json.dumps(mdata)))
    mdata = convert_mdata(mdata)
    out = {"ok": True, "param": jdata_arginfo.__name__, "machine": mdata_arginfo.__name__, "members_checked": 0}
    if not make_train:
        return out
    from deepmd.utils.argcheck import normalize as dp_normalize
    from deepmd.utils.compat import update_deepmd_input
    from dpgen.generator.run import make_train as dpgen_make_train
    from dpgen.generator.run import update_mass_map

    update_mass_map(jdata)
    if simplify:  # what dpgen simplify's run_iter sets before each step
        jdata["model_devi_jobs"] = [{}]
    try:
        if Path("iter.000000").exists():
            raise RuntimeError(f"{Path.cwd()}/iter.000000 exists: a DP-GEN run is there, not touching it")
        dpgen_make_train(0, jdata, mdata)
        inputs = sorted(glob.glob("iter.000000/00.train/*/input.json"))
        if len(inputs) != jdata["numb_models"]:
            raise RuntimeError(f"make_train wrote {len(inputs)} input.json, numb_models is {jdata['numb_models']}")
        for f in inputs:
            dp_normalize(update_deepmd_input(json.loads(Path(f).read_text()), warning=False))
        first = json.loads(Path(inputs[0]).read_text())
        out.update(members_checked=len(inputs), numb_steps=first["training"]["numb_steps"],
                   systems=first["training"]["training_data"]["systems"])
    finally:
        if not keep:
            shutil.rmtree("iter.000000", ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("param")
    ap.add_argument("machine")
    ap.add_argument("--make-train", action="store_true", help="also run DP-GEN's make_train of iteration 0")
    ap.add_argument("--keep", action="store_true", help="keep iter.000000 written by --make-train")
    ap.add_argument("--simplify", action="store_true", help="check as `dpgen simplify` does (its arginfo)")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(check(args.param, args.machine, args.make_train, args.keep, args.simplify)))
    except Exception as exc:  # noqa: BLE001 - dargs' ArgumentKeyError/ArgumentTypeError, dpdata, DeePMD-kit
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
