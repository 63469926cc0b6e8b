"""Generate the sources of libdnrt with cffi's embedding mode (``make capi`` runs this, then gcc).

    python capi/build_cffi.py --out build/capi      # writes the files below
    python capi/build_cffi.py --python-cflags       # -I of Python.h          (for capi.mk)
    python capi/build_cffi.py --python-libs         # -L/-rpath/-lpythonX.Y   (for capi.mk)

Writes into ``--out``:

- ``gen/_dnrt_cffi.c``: cffi's C for the embedded module ``_dnrt_cffi``. Its ``extern "Python"``
  functions are the ``dnrtpy_*`` entry points of ``capi/src/dnrt_internal.h``; their bodies are
  ``capi/src/embedded.py``, stored in the library as text and run by the library's first call.
- ``gen/dnrt_build_config.h``: the python this build ran with (``DNRT_BUILD_PYTHON``): the
  library starts its interpreter as that python, so it finds the same packages.
- ``include/dnrt.h`` (a copy), ``dnrt-config`` and ``dnrt.pc`` (how to compile and link
  against this build; from ``capi/dnrt-config.in`` and ``capi/dnrt.pc.in``).

The types shared by C and Python (status codes, modes, option structs, the progress callback)
are read from ``dnrt.h`` itself, and cffi's generated C checks them against the header when it
compiles, so the two sides cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import sysconfig
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = HERE / "include" / "dnrt.h"
EMBEDDED = HERE / "src" / "embedded.py"
MODULE = "_dnrt_cffi"

#: The Python-implemented entry points (must match capi/src/dnrt_internal.h).
EMBEDDING_API = """
int dnrtpy_init(void);
int dnrtpy_model_open(const char* path, const dnrt_options* options, uint64_t* id);
int dnrtpy_model_close(uint64_t id);
int dnrtpy_translate_file(uint64_t id, const char* in_path, const char* out_path,
                          const dnrt_write_options* options, dnrt_progress_fn progress, void* user);
int dnrtpy_translate_rgb(uint64_t id, const uint8_t* in, int width, int height, size_t in_stride,
                         uint8_t* out, size_t out_stride, dnrt_progress_fn progress, void* user);
"""

#: C functions the Python side calls.
C_FOR_PYTHON = """
void dnrtc_set_error(const char* message);
"""

#: Compiled in cffi's translation unit, where the static cffi_start_python() is visible.
PREAMBLE = """
#include "dnrt.h"
#include "dnrt_internal.h"

int dnrtc_start_python(void) { return cffi_start_python(); }
"""


def header_declarations(text: str) -> str:
    """The enum, callback and struct typedefs of dnrt.h, as cffi cdef text."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    blocks = re.findall(r"typedef\s+(?:enum|struct)\s+\w+\s*\{.*?\}\s*\w+\s*;", text, flags=re.S)
    callbacks = re.findall(r"typedef\s+int\s*\(\s*\*\s*\w+\s*\)\s*\([^;]*\)\s*;", text)
    if len(blocks) < 6 or len(callbacks) != 1:
        raise SystemExit(f"build_cffi: could not find the typedefs in {HEADER}")
    enums = [b for b in blocks if b.lstrip().startswith("typedef enum")]
    structs = [b for b in blocks if b.lstrip().startswith("typedef struct")]
    return "\n".join([*enums, *callbacks, *structs])


def _checkout_dnrt() -> types.ModuleType:
    """The dnrt package of this source tree (the one the library embeds)."""
    sys.path.insert(0, str(HERE.parent))
    try:
        import dnrt
        import dnrt.atomic  # write_if_changed
    finally:
        sys.path.pop(0)
    return dnrt


def check_version(header: str) -> str:
    """The header's version must be the Python package's: one number for the whole of dnrt."""
    found = dict(re.findall(r"#define DNRT_VERSION_(MAJOR|MINOR|PATCH) (\d+)", header))
    version = f"{found['MAJOR']}.{found['MINOR']}.{found['PATCH']}"
    string = re.search(r'#define DNRT_VERSION_STRING "([^"]+)"', header)
    dnrt = _checkout_dnrt()
    if string is None or string.group(1) != version or dnrt.__version__ != version:
        raise SystemExit(
            f"build_cffi: dnrt.h says {version} ({string.group(1) if string else 'no string'}), the dnrt "
            f"package {dnrt.__version__}: update DNRT_VERSION_* in {HEADER}"
        )
    return version


def python_cflags() -> str:
    return f"-I{sysconfig.get_paths()['include']}"


def python_libs() -> str:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise SystemExit(
            "build_cffi: libdnrt embeds Python and needs a Python built with --enable-shared "
            f"(libpython{sysconfig.get_config_var('LDVERSION')}.so); {sys.executable} has none"
        )
    libdir = sysconfig.get_config_var("LIBDIR")
    return f"-L{libdir} -Wl,-rpath,{libdir} -lpython{sysconfig.get_config_var('LDVERSION')}"


def c_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise SystemExit(f"build_cffi: {template} has unknown placeholders {leftover}")
    return text


def generate(out: Path) -> None:
    import cffi

    header = HEADER.read_text()
    version = check_version(header)
    gen = out / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    (out / "include").mkdir(parents=True, exist_ok=True)

    ffibuilder = cffi.FFI()
    ffibuilder.cdef(header_declarations(header))
    ffibuilder.cdef(C_FOR_PYTHON)
    ffibuilder.embedding_api(EMBEDDING_API)
    ffibuilder.set_source(MODULE, PREAMBLE)
    ffibuilder.embedding_init_code(EMBEDDED.read_text())
    target = gen / f"{MODULE}.c"
    # emit_c_code rewrites the file only when its content changes, which keeps make incremental.
    ffibuilder.emit_c_code(str(target))

    # The interpreter to start as: this one (a venv's python stays a venv's python, unresolved).
    python = os.path.abspath(sys.executable)
    config = (
        "/* Generated by capi/build_cffi.py: the python libdnrt starts as (DNRT_PYTHON overrides). */\n"
        f"#define DNRT_BUILD_PYTHON {c_string(python)}\n"
        f"#define DNRT_BUILD_VERSION {c_string(version)}\n"
    )
    write_if_changed(gen / "dnrt_build_config.h", config)
    write_if_changed(out / "include" / "dnrt.h", header)

    prefix = str(out.resolve())
    values = {
        "PREFIX": prefix,
        "INCLUDEDIR": str(Path(prefix) / "include"),
        "LIBDIR": prefix,
        "VERSION": version,
        "PYTHON": python,
    }
    write_if_changed(out / "dnrt.pc", render(HERE / "dnrt.pc.in", values))
    config_script = out / "dnrt-config"
    write_if_changed(config_script, render(HERE / "dnrt-config.in", values))
    config_script.chmod(config_script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        _checkout_dnrt().atomic.write_file_atomic(path, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="build folder (e.g. build/capi)")
    group.add_argument("--python-cflags", action="store_true", help="print the compiler flags for Python.h")
    group.add_argument("--python-libs", action="store_true", help="print the linker flags for libpython")
    args = parser.parse_args(argv)
    if args.python_cflags:
        print(python_cflags())
    elif args.python_libs:
        print(python_libs())
    else:
        try:
            import cffi  # noqa: F401
        except ImportError:
            raise SystemExit(
                f"build_cffi: cffi is not installed for {sys.executable} (pip install cffi)"
            ) from None
        generate(args.out)


if __name__ == "__main__":
    main()
