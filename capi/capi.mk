# capi/capi.mk - the C API (included by the top-level Makefile).
#
#   make capi          build/capi/libdnrt.so (+ libdnrt.so.0), build/capi/dnrt-translate-c,
#                      build/capi/include/dnrt.h, build/capi/dnrt-config, build/capi/dnrt.pc
#   make capi-tests    also build/capi/dnrt-capi-check (the C side of tests/test_capi.py)
#
# Also usable on its own, from the repository root (tests/test_capi.py does this):
#   make -f capi/capi.mk capi CAPI_BUILD=/tmp/somewhere PY=.venv/bin/python
#
# libdnrt embeds the Python runtime with cffi's embedding mode: capi/build_cffi.py writes the
# C of the embedded module, then gcc compiles it with the C side (capi/src/dnrt_capi.c).

# Included before or after the Makefile's first rule, this file must not become its default goal.
CAPI_PREVIOUS_GOAL := $(.DEFAULT_GOAL)

PY ?= .venv/bin/python
# Files that must exist before $(PY) may be run (order-only prerequisites of the first step that
# runs it). The top-level Makefile sets its venv here, so that `make capi` on a fresh clone builds
# the venv before any recipe asks its python; standalone use with an existing PY leaves it empty.
CAPI_PY_DEPS ?=
CAPI_BUILD ?= build/capi
CAPI_CC ?= gcc
CAPI_OPT ?= -O2 -g
CAPI_WARN := -Wall -Wextra -Werror
# Recursive (=): Python is asked only when a capi target is built.
CAPI_PY_CFLAGS = $(shell $(PY) capi/build_cffi.py --python-cflags)
CAPI_PY_LIBS = $(shell $(PY) capi/build_cffi.py --python-libs)

CAPI_LIB := $(CAPI_BUILD)/libdnrt.so
CAPI_EXAMPLE := $(CAPI_BUILD)/dnrt-translate-c
CAPI_CHECK := $(CAPI_BUILD)/dnrt-capi-check
CAPI_GEN := $(CAPI_BUILD)/gen/_dnrt_cffi.c
CAPI_HEADERS := capi/include/dnrt.h capi/src/dnrt_internal.h

.PHONY: capi capi-tests

capi: $(CAPI_LIB) $(CAPI_EXAMPLE)

capi-tests: capi $(CAPI_CHECK)

# Every other target that runs $(PY) (the compiler flags of both objects, the link) depends on
# this one, so the order-only $(CAPI_PY_DEPS) come first for all of them.
$(CAPI_GEN): capi/build_cffi.py capi/src/embedded.py capi/include/dnrt.h capi/dnrt-config.in capi/dnrt.pc.in \
    | $(CAPI_PY_DEPS)
	@$(PY) -c "import cffi" 2>/dev/null || { echo "capi: cffi is missing: $(PY) -m pip install cffi" >&2; exit 1; }
	$(PY) capi/build_cffi.py --out $(CAPI_BUILD)
	@touch $@

# The C side: argument checks, errors, locks, interpreter start-up.
$(CAPI_BUILD)/obj/dnrt_capi.o: capi/src/dnrt_capi.c $(CAPI_HEADERS) $(CAPI_GEN)
	@mkdir -p $(@D)
	$(CAPI_CC) -std=gnu11 $(CAPI_OPT) $(CAPI_WARN) -fPIC -fvisibility=hidden -pthread \
	    -Icapi/include -Icapi/src -I$(CAPI_BUILD)/gen $(CAPI_PY_CFLAGS) -c $< -o $@

# cffi's generated module. Same warnings as errors, less one: cffi's own error-capture stub has
# an unused parameter (_cffi_stop_error_capture), which is not ours to edit.
$(CAPI_BUILD)/obj/_dnrt_cffi.o: $(CAPI_GEN) $(CAPI_HEADERS)
	@mkdir -p $(@D)
	$(CAPI_CC) -std=gnu11 $(CAPI_OPT) $(CAPI_WARN) -Wno-unused-parameter -fPIC -fvisibility=hidden -pthread \
	    -Icapi/include -Icapi/src $(CAPI_PY_CFLAGS) -c $< -o $@

# The soname carries the ABI's major version; libdnrt.so.0 points at the file.
$(CAPI_LIB): $(CAPI_BUILD)/obj/dnrt_capi.o $(CAPI_BUILD)/obj/_dnrt_cffi.o capi/libdnrt.map
	$(CAPI_CC) -shared -pthread -o $@ $(CAPI_BUILD)/obj/dnrt_capi.o $(CAPI_BUILD)/obj/_dnrt_cffi.o \
	    -Wl,-soname,libdnrt.so.0 -Wl,--version-script=capi/libdnrt.map -Wl,--no-undefined -Wl,-z,defs \
	    $(CAPI_PY_LIBS) -lm
	ln -sf libdnrt.so $(CAPI_BUILD)/libdnrt.so.0

# Programs find the library beside them ($ORIGIN), so the build folder can move as a whole.
$(CAPI_EXAMPLE): examples/c/translate.c capi/include/dnrt.h $(CAPI_LIB)
	$(CAPI_CC) -std=c99 -pedantic $(CAPI_OPT) $(CAPI_WARN) -Icapi/include $< -o $@ \
	    -L$(CAPI_BUILD) -Wl,-rpath,'$$ORIGIN' -ldnrt

$(CAPI_CHECK): capi/tests/dnrt_capi_check.c capi/include/dnrt.h $(CAPI_LIB)
	$(CAPI_CC) -std=gnu11 $(CAPI_OPT) $(CAPI_WARN) -pthread -Icapi/include $< -o $@ \
	    -L$(CAPI_BUILD) -Wl,-rpath,'$$ORIGIN' -ldnrt

.DEFAULT_GOAL := $(CAPI_PREVIOUS_GOAL)
