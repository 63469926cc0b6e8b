"""Translation options for a batch: ``trt-translate``'s own options, and their fingerprint.

``dnrt batch`` is decorated with :func:`dnrt.runtime.cli.translation_options`, the same click
options as ``trt-translate`` (each mapped to the :class:`~dnrt.runtime.options.TranslateOptions`
field of its name), and builds one ``TranslateOptions`` with
:func:`dnrt.runtime.cli.options_from_cli`. An option added there is a batch option at once, is
validated the same way, reaches every slide's Translator, and enters the options hash.

The options hash recorded in the ledger covers every field but those that cannot change the
output's pixels (:data:`NOT_IN_HASH`), plus the bundle's files, so a re-run redoes a slide when
the model or any translation option changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dnrt.errors import DnrtError
from dnrt.runtime.options import TranslateOptions

#: Fields that do not change the output's pixels: a change does not redo finished slides.
NOT_IN_HASH = ("threads", "device", "overwrite")


def fingerprint(options: TranslateOptions, bundle_path: Path) -> str:
    """16 hex digits over the pixel-relevant options and the bundle's files."""
    chosen = {k: v for k, v in options.to_dict().items() if k not in NOT_IN_HASH}
    text = json.dumps({"options": chosen, "bundle": bundle_digest(bundle_path)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bundle_digest(bundle_path: Path) -> str:
    """SHA-256 over the bundle folder's regular files (names and contents), not following links."""
    digest = hashlib.sha256()
    try:
        entries = sorted(os.scandir(bundle_path), key=lambda e: e.name)
    except OSError as exc:
        raise DnrtError(f"cannot read the bundle '{bundle_path}': {exc.strerror or exc}") from None
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        digest.update(entry.name.encode() + b"\0")
        with open(entry.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
