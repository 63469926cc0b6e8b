"""Safe checkpoint import: untrusted files in, a generator with its weights out.

Checkpoints are treated as untrusted input. PyTorch files are read only with
``torch.load(weights_only=True)`` (tensors, dicts, lists and numbers; never arbitrary
Python objects), safetensors files with the safetensors library. Every failure is one
DnrtError line saying what is wrong with which file.

Wrapper rule (documented for users; ``key=`` / ``--key`` overrides it):

1. Nested dicts: a generator entry is preferred, in this order:
   ``G_A, netG_A, G_AB, G_ema, netG_ema, ema, G, netG, generator, gen, G_B, netG_B, G_BA``
   (the A->B direction first; when several exist the choice is noted in ``info.notes``);
   otherwise a container entry (``state_dict, model_state_dict, model, ...``); otherwise
   the tensors of the dict itself; otherwise its only nested weight dict. Several
   unknown nested dicts are an error listing them.
2. Flat dicts whose keys start with a generator name (``netG_A.model.1.weight``, as
   Lightning writes them) are narrowed to that prefix by the same preference order.
3. ``module.`` prefixes (DataParallel / DistributedDataParallel) are stripped, as is a
   container prefix such as ``state_dict.`` or ``model.`` when every key has it and it is
   not part of the layout (``model.<digit>`` is CycleGAN's own layout).

``key`` may be a path ``a/b``: each step is a dict key or a flat-key prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnrt.bundle import check_batchnorm_mode
from dnrt.errors import DnrtError, first_line
from dnrt.models.zoo import ARCHITECTURES, describe_keys, detect_architecture, get_architecture

GENERATOR_KEYS = (
    "G_A",
    "netG_A",
    "G_AB",
    "G_ema",
    "netG_ema",
    "ema",
    "G",
    "netG",
    "generator",
    "gen",
    "G_B",
    "netG_B",
    "G_BA",
)
CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "models",
    "networks",
    "nets",
    "net",
    "params",
    "weights",
    "module",
)
_MAX_DEPTH = 6


@dataclass
class CheckpointInfo:
    path: str
    sha256: str
    format: str  # "pickle" (torch.save, zip or legacy) | "safetensors"
    key: str | None = None  # wrapper path used, "a/b"; None when the file is the state_dict itself
    stripped_prefix: str | None = None  # e.g. "module."
    notes: list[str] = field(default_factory=list)


def _short(exc: BaseException, limit: int = 100) -> str:
    text = first_line(exc, empty=type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: Any, limit: int = 12) -> str:
    names = [str(n) for n in names]
    if not names:
        return "(none)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sniff(path: Path, size: int) -> str | None:
    """'pickle' | 'safetensors' | None, from the first bytes (extensions lie)."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"  # torch.save zip archive, or the legacy pickle format (protocol >= 2)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"  # u64 header length, then a JSON header
    return None


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol / deprecation chatter is not the user's business
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; each becomes one line
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"(Unsupported operand \d+)", text)
            detail = f" [found: {found.group(1)}]" if found else ""
            raise DnrtError(
                f"refusing to load {path}: it contains Python objects other than tensors "
                f"(possible code execution); only weights are loaded{detail}"
            ) from None
        if "TorchScript" in text:
            raise DnrtError(
                f"refusing to load {path}: it is a TorchScript archive (code, not just weights); "
                "save the generator's state_dict() with torch.save or safetensors instead"
            ) from None
        raise DnrtError(
            f"could not read {path}: the file is truncated or corrupted ({_short(exc)})"
        ) from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DnrtError(
            f"could not read {path} as safetensors: the file is truncated or corrupted ({_short(exc)})"
        ) from None


def _holds_tensors(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, Tensor):
        return True
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(obj, Mapping):
        return any(_holds_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensors(v, depth + 1) for v in obj)
    return False


def _recognised(state_dict: dict[str, Tensor]) -> bool:
    """Whether some zoo layout reads ``state_dict`` as it is (so a leading name is not a wrapper)."""
    return any(arch.infer_config(state_dict) is not None for arch in ARCHITECTURES.values())


class _Unwrapper:
    """Walks a loaded checkpoint down to one flat ``{name: tensor}`` dict, recording what it did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trail: list[str] = []
        self.stripped: list[str] = []
        self.notes: list[str] = []

    # -- explicit key ---------------------------------------------------------------
    def select(self, obj: Any, key: str) -> Any:
        for step in [s for s in key.split("/") if s]:
            if isinstance(obj, Mapping) and step in obj:
                obj = obj[step]
            elif isinstance(obj, Mapping) and any(
                isinstance(k, str) and k.startswith(step + ".") for k in obj
            ):
                obj = {
                    k[len(step) + 1 :]: v
                    for k, v in obj.items()
                    if isinstance(k, str) and k.startswith(step + ".")
                }
            else:
                raise DnrtError(
                    f"key {key!r} not found in {self.path}: no entry {step!r}"
                    f"{' under ' + '/'.join(self.trail) if self.trail else ''}; "
                    f"available keys: {_listing(self._choices(obj))}",
                    exit_code=2,
                )
            self.trail.append(step)
        return obj

    @staticmethod
    def _choices(obj: Any) -> list[str]:
        if not isinstance(obj, Mapping):
            return []
        keys = [str(k) for k in obj]
        if all(isinstance(v, Tensor) for v in obj.values()):
            # A flat state_dict: its top-level name groups are what a key can pick.
            keys = list(dict.fromkeys(k.split(".", 1)[0] for k in keys))
        return keys

    # -- automatic ------------------------------------------------------------------
    def unwrap(self, obj: Any, depth: int = 0) -> dict[str, Tensor]:
        where = "/".join(self.trail) or "the top level"
        if isinstance(obj, Tensor) or not isinstance(obj, Mapping):
            kind = "a single tensor" if isinstance(obj, Tensor) else type(obj).__name__
            raise DnrtError(
                f"{self.path} is not a generator checkpoint: expected a dict of named tensors at {where}, found {kind}"
            )
        if depth > _MAX_DEPTH:
            raise DnrtError(
                f"{self.path}: weights nested too deeply (more than {_MAX_DEPTH} levels) at {where}"
            )
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        nested = {k: v for k, v in obj.items() if isinstance(v, Mapping) and _holds_tensors(v)}
        if nested:
            gens = [k for k in GENERATOR_KEYS if k in nested]
            containers = [k for k in CONTAINER_KEYS if k in nested]
            if gens:
                choice = self._pick_generator(gens)
            elif containers:
                choice = containers[0]
            elif tensors:
                return self.flat(obj)
            elif len(nested) == 1:
                choice = next(iter(nested))
                self.notes.append(f"weights taken from the only nested dict {choice!r}")
            else:
                raise DnrtError(
                    f"cannot tell which entry of {self.path} holds the generator (at {where}): "
                    f"{_listing(nested)}; pass key= / --key",
                    exit_code=2,
                )
            self.trail.append(str(choice))
            return self.unwrap(nested[choice], depth + 1)
        if tensors:
            return self.flat(obj)
        raise DnrtError(
            f"{self.path} holds no tensors (at {where}; keys: {_listing(obj)})"
            if obj
            else f"{self.path} holds no tensors (an empty dict at {where})"
        )

    def flat(self, obj: Mapping) -> dict[str, Tensor]:
        sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        others = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
        if others:
            self.notes.append(f"ignored non-tensor entries: {_listing(others, 6)}")
        while True:
            if self._strip_all(sd, "module."):
                sd = {k[len("module.") :]: v for k, v in sd.items()}
                self.stripped.append("module.")
                continue
            groups = list(dict.fromkeys(k.split(".", 1)[0] for k in sd))
            gens = [g for g in GENERATOR_KEYS if g in groups]
            if gens:
                choice = self._pick_generator(gens)
                sd = {k[len(choice) + 1 :]: v for k, v in sd.items() if k.startswith(choice + ".")}
                self.trail.append(choice)
                continue
            container = next((c for c in CONTAINER_KEYS if self._strip_all(sd, c + ".")), None)
            # "model.<digit>" is CycleGAN's own layout and "model.model.*" the U-Net's: not wrappers.
            if container and not all(k.split(".")[1].isdigit() for k in sd) and not _recognised(sd):
                sd = {k[len(container) + 1 :]: v for k, v in sd.items()}
                self.stripped.append(container + ".")
                continue
            return sd

    def _pick_generator(self, gens: list[str]) -> str:
        """The first of the generator keys present (GENERATOR_KEYS order), noting the others."""
        choice = gens[0]
        if len(gens) > 1:
            self.notes.append(
                f"several generators in the checkpoint ({', '.join(gens)}); using {choice!r} "
                "(preference: A->B direction first); pass key= / --key to pick another"
            )
        return choice

    @staticmethod
    def _strip_all(sd: Mapping[str, Tensor], prefix: str) -> bool:
        return bool(sd) and all(k.startswith(prefix) and len(k) > len(prefix) for k in sd)


def load_state_dict(
    path: str | os.PathLike[str], key: str | None = None
) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a checkpoint safely and unwrap it to the generator's flat state_dict."""
    p = Path(path)
    if not p.exists():
        raise DnrtError(f"checkpoint not found: {p}", exit_code=2)
    if not p.is_file():
        raise DnrtError(f"checkpoint is not a file: {p}", exit_code=2)
    size = p.stat().st_size
    if size == 0:
        raise DnrtError(f"checkpoint {p} is empty (0 bytes)")
    fmt = _sniff(p, size)
    if fmt is None:
        if p.suffix.lower() == ".safetensors":
            fmt = "safetensors"  # let the library say what is wrong with it
        else:
            raise DnrtError(
                f"{p} is not a checkpoint: neither a PyTorch file (torch.save zip/pickle) nor safetensors"
            )
    info = CheckpointInfo(path=str(p), sha256=_sha256(p), format=fmt)
    obj: Any = _read_safetensors(p) if fmt == "safetensors" else _read_pickle(p)

    walker = _Unwrapper(p)
    if key is not None:
        obj = walker.select(obj, key)
    state_dict = walker.unwrap(obj)
    if not state_dict:
        raise DnrtError(f"{p} holds no tensors{' under ' + key if key else ''}")
    info.key = "/".join(walker.trail) or None
    info.stripped_prefix = "".join(walker.stripped) or None
    info.notes.extend(walker.notes)
    return state_dict, info


def _config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"))


def _check_fit(module: nn.Module, state_dict: dict[str, Tensor], name: str, config: dict, path: str) -> None:
    """Explain, in one line, why a state_dict does not fit the module (before torch's strict load)."""
    expected = module.state_dict()
    what = f"{path} does not fit the {name} generator {_config_text(config)}"
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_listing(missing, 6)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected, 6)}")
        raise DnrtError(f"{what}: {'; '.join(parts)}")
    for k, want in expected.items():
        got = state_dict[k]
        if tuple(got.shape) != tuple(want.shape):
            shape = "x".join(map(str, got.shape)) or "scalar"
            raise DnrtError(
                f"{what}: key {k} has shape {shape} in the checkpoint but the generator expects "
                f"{'x'.join(map(str, want.shape)) or 'scalar'}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise DnrtError(f"{path}: key {k} contains NaN or infinite values; the checkpoint is damaged")


def load_generator(
    path: str | os.PathLike[str],
    arch: str | None = None,
    key: str | None = None,
    batchnorm: str = "instance",
) -> tuple[nn.Module, str, dict[str, Any], CheckpointInfo]:
    """Load a generator checkpoint: (module in eval mode, architecture name, config, info).

    The returned config rebuilds the returned module exactly: ``build_generator(name, config)``
    then ``load_state_dict(module.state_dict())``. A batch-norm generator keeps its
    BatchNorm2d layers with ``batchnorm="instance"`` (``convert(module, batchnorm="instance")``
    then runs them per sample; the module itself, in eval mode, would use the running
    statistics) and has them folded into the convolutions with ``"eval"`` (the config then
    says ``bn_folded: true``, matching the folded module).
    """
    check_batchnorm_mode(batchnorm)
    state_dict, info = load_state_dict(path, key)
    if arch is None:
        try:
            name, config = detect_architecture(state_dict)
        except DnrtError as exc:
            raise DnrtError(f"{info.path}: {exc}") from None
    else:
        name = get_architecture(arch).name
        found = ARCHITECTURES[name].infer_config(state_dict)
        if found is None:
            raise DnrtError(
                f"{info.path} does not have the {name} layout ({ARCHITECTURES[name].description}); "
                f"found {describe_keys(state_dict)}"
            )
        config = found
    entry = ARCHITECTURES[name]
    mapped = entry.remap(state_dict)
    dropped = [k for k in state_dict if k not in mapped]
    if dropped:
        info.notes.append(
            f"ignored {len(dropped)} stale instance-norm running-statistics buffer(s) "
            f"(e.g. {dropped[0]}), as the training code does"
        )
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in mapped.values() if v.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        info.notes.append(f"weights stored as {', '.join(dtypes)}; loaded as float32")
    module = entry.build(config)
    _check_fit(module, mapped, name, config, info.path)
    module.load_state_dict(mapped, strict=True)
    module.eval()
    config, notes = entry.finalize(module, config, batchnorm)
    info.notes.extend(notes)
    return module, name, config, info


__all__ = ["CONTAINER_KEYS", "GENERATOR_KEYS", "CheckpointInfo", "load_generator", "load_state_dict"]
