#!/usr/bin/env bash
# Install GPAW (serial build, with its PAW setups from gpaw-data) into a virtual environment.
#
#   scripts/install_gpaw.sh [PYTHON]     PYTHON defaults to .venv/bin/python
#
# Idempotent: exits at once when PYTHON can already import gpaw. Installs the Debian build
# dependencies (libxc, OpenBLAS, FFTW) only when they are missing and we are root; otherwise
# says which packages to install. The build takes about 2.5 minutes on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-.venv/bin/python}"

if [ ! -x "$python" ]; then
    echo "install_gpaw: no Python at '$python'; pass the venv's python as the first argument" >&2
    exit 2
fi

if OMP_NUM_THREADS=1 "$python" -c "import gpaw" 2>/dev/null; then
    echo "install_gpaw: gpaw already importable by $python ($("$python" -c 'import gpaw; print(gpaw.__version__)'))"
    exit 0
fi

packages=(libxc-dev libopenblas-dev libfftw3-dev)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "install_gpaw: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "install_gpaw: missing build dependencies: ${missing[*]}" >&2
        echo "install_gpaw: run as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install_gpaw: building gpaw with $here/gpaw_siteconfig.py (about 2.5 minutes)"
GPAW_CONFIG="$here/gpaw_siteconfig.py" "$python" -m pip install --no-cache-dir gpaw gpaw-data

OMP_NUM_THREADS=1 "$python" -c "import gpaw; print('install_gpaw: gpaw', gpaw.__version__, 'ready')"
