"""Translation options for a batch: taken from ``trt-translate``'s own click options, routed by name.

``dnrt batch`` reuses every option of ``trt-translate`` except its INPUT and ``--output`` (see
:func:`shared_parameters`), so an option added to ``trt-translate`` appears in ``dnrt batch`` too.
Its value reaches the per-slide call generically: a click parameter ``foo`` goes to the keyword
``foo`` of :class:`~dnrt.runtime.api.Translator` (built once per process) or, failing that, of
``Translator.translate_file`` (called per slide), case-insensitive choices lower-cased as
``trt-translate`` does. The only renamed ones are ``--precision``/``--device``, which become
``backend_options`` exactly as in ``trt-translate``. An option that neither takes is refused
when the batch starts if it is set (at its default it is left out), and the test that walks
every ``trt-translate`` option fails for it, naming it.

The options hash recorded in the ledger covers every routed option but those that cannot change
the output's pixels (:data:`NOT_IN_HASH`), plus the bundle's files, so a re-run redoes a slide
when the model or any translation option changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dnrt.errors import DnrtError

#: trt-translate's parameters that dnrt batch does not take (it has its own per-slide names).
NOT_SHARED = ("input", "output")
#: Parameters the batch command consumes itself rather than passing to the translation.
BATCH_OWN = ("model", "quiet", "as_json", "overwrite")
#: Options that do not change the output's pixels: a change does not redo finished slides.
NOT_IN_HASH = ("threads", "progress", "on_progress", "overwrite")


def shared_parameters() -> list[click.Parameter]:
    """``trt-translate``'s parameters minus its input and output, for the batch command."""
    from dnrt.runtime.cli import translate_command

    return [p for p in translate_command.params if p.name not in NOT_SHARED]


@dataclass
class TranslationOptions:
    """The options of one batch: Translator keywords and per-file keywords, plus their hash."""

    translator: dict[str, Any] = field(default_factory=dict)
    per_file: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, bundle_path: Path) -> str:
        chosen = {
            "translator": {k: v for k, v in self.translator.items() if k not in NOT_IN_HASH},
            "file": {k: v for k, v in self.per_file.items() if k not in NOT_IN_HASH},
            "bundle": bundle_digest(bundle_path),
        }
        text = json.dumps(chosen, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _keywords(func: Any) -> set[str]:
    return {
        name
        for name, p in inspect.signature(func).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    }


def route(cli_values: dict[str, Any]) -> TranslationOptions:
    """Route the shared click values (minus :data:`BATCH_OWN`) to Translator / translate_file."""
    from dnrt.runtime.api import Translator
    from dnrt.runtime.cli import _backend_options, translate_command

    params = {p.name: p for p in translate_command.params}
    values = dict(cli_values)
    options = TranslationOptions()
    if "precision" in values or "device_index" in values:
        backend_options = _backend_options(
            str(values.pop("precision", "fp32")).lower(), int(values.pop("device_index", 0))
        )
        if backend_options:
            options.translator["backend_options"] = backend_options
    translator_keys = _keywords(Translator.__init__)
    file_keys = _keywords(Translator.translate_file)
    for name, value in values.items():
        param = params.get(name)
        if (
            isinstance(value, str)
            and param is not None
            and isinstance(param.type, click.Choice)
            and not param.type.case_sensitive
        ):
            value = value.lower()
        if name in translator_keys:
            options.translator[name] = value
        elif name in file_keys:
            options.per_file[name] = value
        elif param is not None and value == param.default:
            # An option at its default needs no passing on; a set one must not be dropped.
            continue
        else:
            raise DnrtError(
                f"dnrt batch cannot pass --{name.replace('_', '-')} on: neither Translator nor "
                "Translator.translate_file takes it"
            )
    return options


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
            for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 - fh is this loop's
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
