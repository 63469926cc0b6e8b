# dnrt developer entry points. `make test` and `make demo` set up everything they
# need on a fresh machine: a local virtual environment with the pinned CPU torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so that machines with a local CPU wheel of torch use it instead of pulling
# several GB of CUDA packages; the `export` extra only asks for a range it satisfies.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: all venv test lint demo capi clean

all: test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[export,test]"
	touch $@

venv: $(VENV)/.installed

# --durations=15: the 15 slowest tests, to see where the suite's time goes.
test: venv
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# The README's first command: synthetic slide -> shipped demo model -> IN/TIN/KIN/DN -> comparison.png
demo: venv
	$(PY) -m dnrt.demo --out demo-out

# The whole tree (ruff honours .gitignore, so .venv and build outputs are skipped).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The C API: build/capi/libdnrt.so, dnrt.h, dnrt-config and the example dnrt-translate-c.
# Its recipes run the venv's python, so the venv is an (order-only) prerequisite of the first of
# them; `capi: venv` alone is not enough, make would build the library's prerequisites first.
CAPI_PY_DEPS := $(VENV)/.installed
include capi/capi.mk

clean:
	rm -rf build .pytest_cache
