"""The hostile-input corpus of issue 16: every case is a script that builds its inputs.

Each :class:`Case` writes what it needs into a folder (images, a modified copy of the toy
bundle) and returns the ``trt-translate`` arguments without ``-o``; ``tests/test_corpus.py``
runs each one in a child process under a 2 GB address-space limit and a 30 s time limit, and
checks the exit code, the single ``error:`` line (or, for a legitimate input, the output) and
that nothing is left in the destination folder.

Regenerate the inputs by hand (to try them on another build)::

    python -m tests.corpus.cases /tmp/corpus      # one folder per case, with its command line
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pngbytes import png
from .tiffbytes import ORIENTATION, SHORT, Tiff, deflate_tile

#: Exit codes of trt-translate (runtime/cli.py): usage errors, failures.
USAGE, FAILURE = 2, 1


@dataclass(frozen=True)
class Case:
    name: str
    #: ``build(folder, bundle) -> args``: writes the inputs into ``folder``; ``bundle`` is a
    #: pristine toy bundle the case may copy and alter.
    build: Callable[[Path, Path], list[str]]
    #: 0 for a legitimate input (the output must be correct), else the documented exit code.
    exit_code: int
    #: A piece of the ``error:`` line (None for legitimate inputs).
    message: str | None = None
    #: Output suffix for the destination.
    suffix: str = ".tif"


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tif(folder: Path, h: int = 64, w: int = 96, **kwargs: object) -> Path:
    import tifffile

    path = folder / "in.tif"
    tifffile.imwrite(path, _rgb(h, w), photometric="rgb", tile=(16, 16), **kwargs)
    return path


def _options(*extra: str, h: int = 64, w: int = 96) -> Callable[[Path, Path], list[str]]:
    """A legitimate small TIFF and the toy bundle, with ``extra`` options."""

    def build(folder: Path, bundle: Path) -> list[str]:
        return [str(_tif(folder, h, w)), "-m", str(bundle), *extra]

    return build


def _raw(name: str, data: Callable[[], bytes], *extra: str) -> Callable[[Path, Path], list[str]]:
    """An input file made of ``data()`` bytes."""

    def build(folder: Path, bundle: Path) -> list[str]:
        path = folder / name
        path.write_bytes(data())
        return [str(path), "-m", str(bundle), *extra]

    return build


def _manifest(change: Callable[[dict], object]) -> Callable[[Path, Path], list[str]]:
    """The toy bundle with ``change(manifest)`` applied; a returned str/bytes replaces the file."""

    def build(folder: Path, bundle: Path) -> list[str]:
        broken = folder / "broken.dnrt"
        shutil.copytree(bundle, broken)
        data = json.loads((broken / "manifest.json").read_text())
        replaced = change(data)
        target = broken / "manifest.json"
        if isinstance(replaced, bytes):
            target.write_bytes(replaced)
        elif isinstance(replaced, str):
            target.write_text(replaced)
        else:
            target.write_text(json.dumps(data))
        return [str(_tif(folder)), "-m", str(broken)]

    return build


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        if key.startswith("layers[0]."):
            data["layers"][0][key.split(".", 1)[1]] = value
        else:
            data[key] = value

    return change


def _huge_manifest(folder: Path, bundle: Path) -> list[str]:
    broken = folder / "broken.dnrt"
    shutil.copytree(bundle, broken)
    with open(broken / "manifest.json", "r+b") as fh:
        fh.truncate(4 << 30)  # sparse: 4 GB declared, nothing on disk
    return [str(_tif(folder)), "-m", str(broken)]


def _wide_big_tiles(folder: Path, bundle: Path) -> list[str]:
    """The legitimate 65536 x 1024 image in 8192 px tiles (a smooth pattern, quick to compress)."""
    import tifffile

    x = (np.arange(65536) // 256 % 256).astype(np.uint8)
    y = (np.arange(1024) // 4 % 256).astype(np.uint8)
    rgb = np.empty((1024, 65536, 3), np.uint8)
    rgb[:, :, 0] = x[None, :]
    rgb[:, :, 1] = y[:, None]
    rgb[:, :, 2] = x[None, :] ^ y[:, None]
    path = folder / "wide.tif"
    tifffile.imwrite(
        path, rgb, photometric="rgb", tile=(8192, 8192), compression="zlib", compressionargs={"level": 1}
    )
    return [str(path), "-m", str(bundle), "--mode", "in", "--tile", "1024", "--margin", "4"]


def _jpeg_cut() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_rgb(256, 256)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is patched to declare ``width`` x ``height`` px."""
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_rgb(16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame: FFC0, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_ok() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_rgb(40, 56)).save(buffer, "PNG")
    return buffer.getvalue()


def _tiff_garbage() -> bytes:
    return b"II*\x00" + bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8))


CASES: list[Case] = [
    # -- legitimate inputs: a correct output -------------------------------------------------
    Case("legit-small-tiff", _options(), 0),
    Case("legit-png", _raw("in.png", _png_ok), 0),
    Case("legit-65536x1024-in-8192px-tiles", _wide_big_tiles, 0),
    # -- 1. tile size ---------------------------------------------------------------------
    Case("tile-1e9", _options("--tile", "1000000000"), USAGE, "tile 1000000000 is larger than the image"),
    Case("tile-4096-on-256px", _options("--tile", "4096", h=256, w=256), USAGE, "use a tile of at most 256"),
    Case("manifest-tile-1e9", _manifest(_set("tile", 1_000_000_000)), FAILURE, "tile: must be between 1 and"),
    # -- 2. TIFF decode cache -----------------------------------------------------------------
    Case(
        "tiff-200000px-in-16384px-tiles",
        _raw("huge.tif", lambda: Tiff(200_000, 200_000, tile=(16384, 16384), bigtiff=True).to_bytes()),
        FAILURE,
        "over dnrt's limit of 512 MiB per stored block",
    ),
    Case("tiff-damaged-header", _raw("bad.tif", _tiff_garbage), FAILURE, "TIFF"),
    Case(
        "tiff-truncated-data",
        _raw("cut.tif", lambda: Tiff(64, 64, segments=[deflate_tile(16, 16)]).to_bytes()[:300]),
        FAILURE,
        "truncated",
    ),
    # -- 3. PNG / JPEG ------------------------------------------------------------------------
    Case(
        "png-429-bytes-declaring-30000px",
        _raw("bomb.png", lambda: png(30000, 30000, rows=1)),
        FAILURE,
        "declares 30000 x 30000 px",
    ),
    Case("png-stream-ends-early", _raw("short.png", lambda: png(64, 64, rows=30)), FAILURE, "truncated"),
    Case("png-file-cut", _raw("cut.png", lambda: png(64, 64)[:50]), FAILURE, "truncated"),
    Case("jpeg-file-cut", _raw("cut.jpg", _jpeg_cut), FAILURE, "truncated"),
    Case(  # small enough for the memory check to pass: refused for its size alone
        "jpeg-small-file-declaring-8000px",
        _raw("bomb.jpg", lambda: _jpeg_declaring(8000, 8000)),
        FAILURE,
        "a JPEG of that size needs at least",
    ),
    # -- 5. compression options ---------------------------------------------------------------
    Case("lzw-with-level", _options("--compression", "lzw:5"), USAGE, "lzw"),
    Case("jpeg-level-500", _options("--compression", "jpeg:500"), USAGE, "1 to 100"),
    Case("jpeg-level-negative", _options("--compression", "jpeg:-5"), USAGE, "jpeg"),
    Case("zstd-level-999", _options("--compression", "zstd:999"), USAGE, "zstd"),
    Case("jpeg-level-text-for-jpg", _options("--compression", "jpeg:abc"), USAGE, "jpeg", suffix=".jpg"),
    # -- 6. the manifest ----------------------------------------------------------------------
    Case("manifest-stride-0", _manifest(_set("layers[0].stride", 0)), FAILURE, "layers[0].stride"),
    Case("manifest-stride-3", _manifest(_set("layers[0].stride", 3)), FAILURE, "power of two"),
    Case("manifest-stride-negative", _manifest(_set("layers[0].stride", -4)), FAILURE, "layers[0].stride"),
    Case("manifest-tile-string", _manifest(_set("tile", "512")), FAILURE, "tile: must be an integer"),
    Case("manifest-tile-null", _manifest(_set("tile", None)), FAILURE, "tile: must be an integer, got null"),
    Case("manifest-tile-fraction", _manifest(_set("tile", 32.5)), FAILURE, "got 32.5"),
    Case("manifest-nan", _manifest(lambda d: '{"tile": NaN}'), FAILURE, "NaN"),
    Case("manifest-infinity", _manifest(lambda d: '{"dn_eps": Infinity}'), FAILURE, "Infinity"),
    Case("manifest-5000-digits", _manifest(lambda d: '{"tile": ' + "7" * 5000 + "}"), FAILURE, "5000-digit"),
    Case("manifest-deep-nesting", _manifest(lambda d: "[" * 100_000 + "]" * 100_000), FAILURE, "deep"),
    Case(
        "manifest-offset-past-stats", _manifest(_set("layers[0].offset", 100)), FAILURE, "outside the packed"
    ),
    Case("manifest-activation-gelu", _manifest(_set("layers[0].activation", "gelu")), FAILURE, "gelu"),
    Case("manifest-20mb-layer-name", _manifest(_set("layers[0].name", "x" * 20_000_000)), FAILURE, "limit"),
    Case("manifest-in-channels-string", _manifest(_set("in_channels", "3")), FAILURE, "in_channels"),
    Case("manifest-channels-1e12", _manifest(_set("layers[0].channels", 1e12)), FAILURE, "channels"),
    Case("manifest-4gb-file", _huge_manifest, FAILURE, "over the limit of"),
    Case("manifest-not-json", _manifest(lambda d: b"\xff\xfe{"), FAILURE, "UTF-8"),
    # -- 7. pre-flight ------------------------------------------------------------------------
    Case(
        "tiff-1e6px-sparse-preflight",
        _raw("sparse.tif", lambda: Tiff(1_000_000, 1_000_000, tile=(4096, 4096), bigtiff=True).to_bytes()),
        FAILURE,
        "by estimate",
    ),
    # -- 9. orientation -----------------------------------------------------------------------
    Case(
        "tiff-orientation-6",
        _raw(
            "o6.tif",
            lambda: Tiff(
                40, 50, segments=[deflate_tile(16, 16)], extra={ORIENTATION: (SHORT, [6])}
            ).to_bytes(),
        ),
        FAILURE,
        "Orientation 6",
    ),
    Case(
        "tiff-orientation-99",
        _raw(
            "o99.tif",
            lambda: Tiff(
                40, 50, segments=[deflate_tile(16, 16)], extra={ORIENTATION: (SHORT, [99])}
            ).to_bytes(),
        ),
        FAILURE,
        "invalid TIFF Orientation",
    ),
    # -- 10. kernels and threads --------------------------------------------------------------
    Case(
        "kin-kernel-100001",
        _options("--mode", "kin", "--kin-kernel", "100001"),
        USAGE,
        "KIN kernel size 100001",
    ),
    Case("threads-1000", _options("--threads", "1000"), USAGE, "threads must be between 1 and"),
]


def main(argv: list[str]) -> None:
    """Write every case's inputs into ``argv[0]/<case>/`` with its command line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fakes import write_toy_bundle

    root = Path(argv[0])
    bundle = write_toy_bundle(root / "toy.dnrt")
    for case in CASES:
        folder = root / case.name
        folder.mkdir(parents=True, exist_ok=True)
        args = case.build(folder, bundle)
        (folder / "command.txt").write_text(
            " ".join(["trt-translate", *args, "-o", str(folder / ("out" + case.suffix))]) + "\n"
        )
        print(f"{case.name}: exit {case.exit_code}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
