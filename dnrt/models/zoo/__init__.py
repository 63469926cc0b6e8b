"""Generator zoo: one registry of architectures, one small filter per checkpoint layout (timm's shape).

Each entry knows how to build its module from a JSON-serialisable config, how to read
that config off a state_dict's keys and shapes (``infer_config``; None when the keys are
another layout) and how to map checkpoint keys onto the module's (``remap``). Modules are
built with plain ``nn.InstanceNorm2d`` layers inside ``nn.Sequential`` containers, each
norm layer directly followed by its ``nn.ReLU`` sibling where the architecture has one;
the norm swap of the exporter relies on that.

This package imports torch; ``import dnrt`` never imports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dnrt.errors import DnrtError

from . import cut, cyclegan, official, reggan, unet
from .cyclegan import BlurDownsample, BlurUpsample, fold_batch_norms
from .official import ResidualBlock, count_norm_layers


def _no_finalize(
    module: nn.Module, config: dict[str, Any], batchnorm: str = "instance"
) -> tuple[dict[str, Any], list[str]]:
    return config, []


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    build: Callable[[dict[str, Any]], nn.Module]
    infer_config: Callable[[dict[str, Tensor]], dict[str, Any] | None]
    remap: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    # Runs once after strict loading with the --batchnorm choice ("instance" | "eval"; e.g.
    # folds batch norms for "eval"); returns the config that rebuilds the finalized module and
    # notes for the user. Optional for new entries.
    finalize: Callable[[nn.Module, dict[str, Any], str], tuple[dict[str, Any], list[str]]] = _no_finalize


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} registered twice")
    ARCHITECTURES[arch.name] = arch
    return arch


# Registry order is the listing order; the signatures below are mutually exclusive, and a
# checkpoint that matches two of them is refused as mixed
# (official: block1.*; cyclegan: model.N.* without blur buffers; cut: with them).
register(
    Architecture("official", official.DESCRIPTION, official.build, official.infer_config, official.remap)
)
register(
    Architecture(
        "cyclegan",
        cyclegan.DESCRIPTION,
        cyclegan.build,
        cyclegan.infer_config,
        cyclegan.remap,
        cyclegan.finalize,
    )
)
register(Architecture("cut", cut.DESCRIPTION, cut.build, cut.infer_config, cut.remap, cut.finalize))
# RegGAN: model_head.* / model_body.* / model_tail.* (no other layout has these names).
register(Architecture("reggan", reggan.DESCRIPTION, reggan.build, reggan.infer_config, reggan.remap))
# pix2pix U-Net: model.model.0 (4x4 stride-2 conv) and nested model.1.model.3... blocks.
register(Architecture("unet", unet.DESCRIPTION, unet.build, unet.infer_config, unet.remap, unet.finalize))


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise DnrtError(
            f"unknown generator architecture {name!r} (known: {', '.join(ARCHITECTURES)})", exit_code=2
        ) from None


def build_generator(name: str, config: dict[str, Any]) -> nn.Module:
    """Build architecture ``name`` from ``config`` (random weights, eval mode)."""
    return get_architecture(name).build(dict(config)).eval()


def _shape(t: Any) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, Tensor) else type(t).__name__


def describe_keys(state_dict: dict[str, Tensor], limit: int = 4) -> str:
    """A one-line summary of what a state_dict holds, for error messages."""
    if not state_dict:
        return "no tensors"
    tops = Counter(k.split(".", 1)[0] for k in state_dict)
    top = ", ".join(f"{name} ({n})" for name, n in tops.most_common(limit))
    if len(tops) > limit:
        top += f", ... ({len(tops) - limit} more)"
    first = ", ".join(f"{k} [{_shape(v)}]" for k, v in list(state_dict.items())[:limit])
    n = len(state_dict)
    return f"{n} tensor{'s' if n != 1 else ''}; top-level names: {top}; first keys: {first}"


def _hint(state_dict: dict[str, Tensor]) -> str:
    w0 = state_dict.get("model.0.weight")
    if isinstance(w0, Tensor) and w0.ndim == 4 and tuple(w0.shape[-2:]) == (4, 4):
        return (
            " (this looks like a PatchGAN discriminator; pass the generator checkpoint, e.g. *_net_G_A.pth)"
        )
    return ""


def detect_architecture(state_dict: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """Name and config of the architecture whose layout ``state_dict`` has; DnrtError if none."""
    matches = []
    for arch in ARCHITECTURES.values():
        config = arch.infer_config(state_dict)
        if config is not None:
            matches.append((arch.name, config))
    if len(matches) > 1:
        # Two generators' signature keys in one file: a merged or hand-edited checkpoint.
        raise DnrtError(
            f"the checkpoint mixes generator layouts ({', '.join(name for name, _ in matches)}): "
            f"found {describe_keys(state_dict)}; pass one generator's weights (--key picks an entry)"
        )
    if matches:
        return matches[0]
    known = "; ".join(f"{a.name}: {a.description}" for a in ARCHITECTURES.values())
    raise DnrtError(
        f"no known generator layout matches the checkpoint: found {describe_keys(state_dict)}"
        f"{_hint(state_dict)}. Known layouts: {known}"
    )


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BlurDownsample",
    "BlurUpsample",
    "ResidualBlock",
    "build_generator",
    "count_norm_layers",
    "describe_keys",
    "detect_architecture",
    "fold_batch_norms",
    "get_architecture",
    "register",
]
