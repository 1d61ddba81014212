# GPAW build configuration for a serial (no MPI) build against Debian's libxc, FFTW and
# OpenBLAS. Pass it to the build with GPAW_CONFIG=scripts/gpaw_siteconfig.py; without it the
# PyPI build fails or imports with "undefined symbol: zherk_" (BLAS not linked).
# Packages: apt-get install -y libxc-dev libopenblas-dev libfftw3-dev
mpi = False
compiler = 'g++'
fftw = True
noblas = False
libraries = ['xc', 'fftw3', 'blas']
