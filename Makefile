# dnrt developer entry points. `make test` and `make demo` set up everything they
# need on a fresh machine: a local virtual environment with the pinned CPU torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so that machines with a local CPU wheel of torch use it instead of pulling
# several GB of CUDA packages; the `export` extra only asks for a range it satisfies.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: all venv system-deps test lint demo capi clean

all: test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[export,test]"
	touch $@

venv: $(VENV)/.installed

# Slide outputs (issue 17): the tests read every level back through libvips (Debian's
# libvips-tools) and skip when `vips` is absent. `make test` installs it where it can (root with
# apt-get, as on a fresh CI machine); elsewhere it says so and the tests run without it.
# SYSTEM_DEPS=no skips the attempt.
SYSTEM_DEPS ?= auto
system-deps:
	@if [ "$(SYSTEM_DEPS)" != no ] && ! command -v vips >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libvips-tools (the slide-output tests read outputs through vips)"; \
	    { apt-get install -y -qq --no-install-recommends libvips-tools >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends libvips-tools >/dev/null; }; } || \
	      echo "note: could not install libvips-tools; the libvips tests will skip"; \
	  else \
	    echo "note: vips not found (apt-get install libvips-tools); the libvips tests will skip"; \
	  fi; \
	fi

# --durations=15: the 15 slowest tests, to see where the suite's time goes.
test: venv system-deps
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
