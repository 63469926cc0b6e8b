"""The manifest schema: what ``manifest.json`` may contain, checked before a bundle is trusted.

A bundle is untrusted input: a manifest can be hand-edited, truncated or hostile. Every field the
runtime sizes memory, loops or divisions by is checked here for its JSON type (an integer is
never a bool, a string or a float), a finite value and a sane range, and the fields are checked
against each other (layer offsets tile the packed statistics, strides are powers of two that the
tile geometry divides). :func:`parse_manifest` reads the bytes under a size limit and refuses
what Python's JSON parser would accept but no exporter writes (NaN, Infinity, huge integers,
deep nesting). :func:`manifest_problems` returns one line per violation, each naming the field.

Standard library only (``dnrt.bundle`` imports it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

#: manifest.json is a few KB for the largest zoo generator; anything over this is refused
#: before it is read whole.
MAX_MANIFEST_BYTES = 1 << 20
#: Deepest nesting of arrays and objects (the format itself uses 3).
MAX_DEPTH = 32
#: Longest integer literal (digits) accepted: any real size fits in 20.
MAX_INT_DIGITS = 20

MAX_TILE = 16384
MAX_IO_CHANNELS = 64
MAX_LAYER_CHANNELS = 65536
MAX_TOTAL_CHANNELS = 1 << 20
MAX_LAYERS = 4096
MAX_STRIDE = 1024
MAX_NAME = 256
MAX_TEXT = 4096
MAX_NOTES = 1000
ACTIVATIONS = ("none", "relu")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


class ManifestSyntaxError(ValueError):
    """manifest.json is too large, not JSON, or JSON no exporter writes."""


def parse_manifest(raw: bytes) -> Any:
    """Decode manifest.json's bytes, refusing non-finite numbers, huge integers and deep nesting."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestSyntaxError(f"it is {len(raw)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestSyntaxError(f"it is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    depth = _nesting_depth(text)
    if depth > MAX_DEPTH:
        raise ManifestSyntaxError(f"it nests arrays/objects {depth} deep, over the limit of {MAX_DEPTH}")

    def constant(name: str) -> Any:
        raise ManifestSyntaxError(f"it contains {name}, which is not a JSON number")

    def integer(literal: str) -> int:
        if len(literal.lstrip("-")) > MAX_INT_DIGITS:
            raise ManifestSyntaxError(f"it contains a {len(literal)}-digit integer")
        return int(literal)

    def real(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ManifestSyntaxError(f"it contains {literal}, which overflows a float")
        return value

    try:
        return json.loads(text, parse_constant=constant, parse_int=integer, parse_float=real)
    except json.JSONDecodeError as exc:
        raise ManifestSyntaxError(f"it is not valid JSON: {exc}") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ManifestSyntaxError("it nests too deep") from None


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    for ch in _STRING.sub("", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


# --------------------------------------------------------------------------- field checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string" if len(value) <= 40 else f"a {len(value)}-character string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return _kind(value)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def integer(self, where: str, value: Any, low: int, high: int) -> bool:
        if not _is_int(value):
            self.fail(where, f"must be an integer, got {_show(value)}")
            return False
        if not low <= value <= high:
            self.fail(where, f"must be between {low} and {high}, got {value}")
            return False
        return True

    def text(self, where: str, value: Any, limit: int, *, empty: bool = True) -> bool:
        if not isinstance(value, str):
            self.fail(where, f"must be a string, got {_show(value)}")
            return False
        if len(value) > limit:
            self.fail(where, f"must be at most {limit} characters, got {len(value)}")
            return False
        if not empty and not value:
            self.fail(where, "must not be empty")
            return False
        return True

    def boolean(self, where: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {_show(value)}")

    def obj(self, where: str, value: Any) -> bool:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_show(value)}")
            return False
        return True


def manifest_problems(
    data: dict[str, Any], fields: Collection[str], layer_fields: Collection[str]
) -> list[str]:
    """Every violation of the schema in a decoded manifest, one line each (empty: valid).

    ``fields`` and ``layer_fields`` are the keys a manifest and a layer may have (the
    dataclasses' fields: a field added there is accepted here; the checks below cover the ones
    the runtime sizes anything by)."""
    c = _Checker()
    for key in data:
        if key not in fields:
            c.fail(_show(key) if isinstance(key, str) else "key", "is not a manifest field")
    for key in ("architecture", "config", "in_channels", "out_channels", "layers"):
        if key not in data:
            c.fail(key, "is missing")

    if "architecture" in data:
        c.text("architecture", data["architecture"], MAX_NAME, empty=False)
    if "config" in data:
        c.obj("config", data["config"])
    for key in ("in_channels", "out_channels"):
        if key in data:
            c.integer(key, data[key], 1, MAX_IO_CHANNELS)
    tile_ok = "tile" not in data or c.integer("tile", data["tile"], 1, MAX_TILE)
    margin_ok = "margin" not in data or c.integer("margin", data["margin"], 0, MAX_TILE - 1)
    tile, margin = data.get("tile", 512), data.get("margin", 16)
    if tile_ok and margin_ok and margin >= tile:
        c.fail("margin", f"must be smaller than the tile ({tile}), got {margin}")
        margin_ok = False
    if "opset" in data:
        c.integer("opset", data["opset"], 1, 1000)
    if "dn_eps" in data:
        eps = data["dn_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
            c.fail("dn_eps", f"must be a number between 0 and 1, got {_show(eps)}")
    if "std_flavours" in data and c.obj("std_flavours", data["std_flavours"]):
        for mode, flavour in data["std_flavours"].items():
            c.text(f"std_flavours.{mode[:40]}", flavour, MAX_TEXT)
    if "source" in data:
        c.obj("source", data["source"])
    if "notes" in data:
        notes = data["notes"]
        if not isinstance(notes, list):
            c.fail("notes", f"must be an array of strings, got {_show(notes)}")
        elif len(notes) > MAX_NOTES:
            c.fail("notes", f"must hold at most {MAX_NOTES} entries, got {len(notes)}")
        else:
            for i, note in enumerate(notes):
                c.text(f"notes[{i}]", note, MAX_TEXT)
    if "dnrt_version" in data:
        c.text("dnrt_version", data["dnrt_version"], MAX_NAME)
    if data.get("batchnorm") is not None:
        c.text("batchnorm", data["batchnorm"], MAX_NAME)

    if "layers" in data:
        strides = _check_layers(c, data["layers"], data.get("total_channels"), layer_fields)
        if strides and tile_ok and margin_ok:
            size = tile + 2 * margin
            multiple = 2 * max(strides)
            if size % multiple:
                c.fail(
                    "tile",
                    f"tile {tile} + 2 x margin {margin} = {size} px must be divisible by {multiple} "
                    f"(twice the largest layer stride) so that every layer's map is even",
                )
    return c.problems


def _check_layers(c: _Checker, layers: Any, total_field: Any, layer_fields: Collection[str]) -> list[int]:
    """Check the layer list; returns the strides when every layer is well formed."""
    if not isinstance(layers, list):
        c.fail("layers", f"must be an array of layer objects, got {_show(layers)}")
        return []
    if len(layers) > MAX_LAYERS:
        c.fail("layers", f"must hold at most {MAX_LAYERS} layers, got {len(layers)}")
        return []
    before = len(c.problems)
    strides: list[int] = []
    spans: list[tuple[int, int, int]] = []
    names: dict[str, int] = {}
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        if not c.obj(where, layer):
            continue
        for key in layer:
            if key not in layer_fields:
                c.fail(f"{where}.{_show(key) if isinstance(key, str) else 'key'}", "is not a layer field")
        for key in ("name", "channels", "stride", "offset"):
            if key not in layer:
                c.fail(f"{where}.{key}", "is missing")
        if "name" in layer and c.text(f"{where}.name", layer["name"], MAX_NAME, empty=False):
            if layer["name"] in names:
                c.fail(
                    f"{where}.name", f"{layer['name']!r} is also the name of layers[{names[layer['name']]}]"
                )
            names.setdefault(layer["name"], i)
        channels_ok = "channels" in layer and c.integer(
            f"{where}.channels", layer["channels"], 1, MAX_LAYER_CHANNELS
        )
        if "stride" in layer and c.integer(f"{where}.stride", layer["stride"], 1, MAX_STRIDE):
            stride = layer["stride"]
            if stride & (stride - 1):
                c.fail(f"{where}.stride", f"must be a power of two, got {stride}")
            else:
                strides.append(stride)
        offset_ok = "offset" in layer and c.integer(f"{where}.offset", layer["offset"], 0, MAX_TOTAL_CHANNELS)
        if channels_ok and offset_ok:
            spans.append((layer["offset"], layer["offset"] + layer["channels"], i))
        if "affine" in layer:
            c.boolean(f"{where}.affine", layer["affine"])
        if "activation" in layer:
            act = layer["activation"]
            if not isinstance(act, str) or act not in ACTIVATIONS:
                c.fail(f"{where}.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {_show(act)}")
    if len(c.problems) > before:
        return []
    total = sum(end - start for start, end, _ in spans)
    if total > MAX_TOTAL_CHANNELS:
        c.fail("layers", f"hold {total} channels in all, over the limit of {MAX_TOTAL_CHANNELS}")
        return []
    # The packed statistics are [0, total): every layer's slice inside, none overlapping.
    end_so_far, last = 0, -1
    for start, end, i in sorted(spans):
        if end > total:
            c.fail(
                f"layers[{i}].offset", f"slice [{start}, {end}) is outside the packed statistics [0, {total})"
            )
        elif start < end_so_far:
            c.fail(f"layers[{i}].offset", f"slice [{start}, {end}) overlaps layers[{last}]'s")
        end_so_far, last = max(end_so_far, end), i
    if total_field is not None and total_field != total:
        c.fail(
            "total_channels", f"must be the sum of the layers' channels ({total}), got {_show(total_field)}"
        )
    return strides
