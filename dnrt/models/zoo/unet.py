"""pix2pix's ``UnetGenerator`` (junyanz/pytorch-CycleGAN-and-pix2pix, ``--netG unet_128 | unet_256``).

A U-Net of ``num_downs`` nested skip blocks (7 for ``unet_128``, 8 for ``unet_256``; any
depth >= 5 is read off the keys). Each block halves the map with a 4x4 stride-2 conv and
doubles it back with a 4x4 stride-2 transposed conv; channels per level (outermost first)
are ngf, 2ngf, 4ngf, then 8ngf. Keys nest one ``model.<i>.model`` per level:

    outermost  model.model:   0 downconv (in -> ngf)  1 block  2 ReLU  3 upconv (2ngf -> out, bias)  4 Tanh
    middle     ...model:      0 LeakyReLU(0.2)  1 downconv  2 downnorm  3 block
                              4 ReLU  5 upconv (2 inner -> outer)  6 upnorm  [7 Dropout]
    innermost  ...model:      0 LeakyReLU(0.2)  1 downconv  2 ReLU  3 upconv (inner -> outer)  4 upnorm

A middle block returns ``cat([x, block(x)])``. Its LeakyReLU is in place in the original
code, so the skip half of the concatenation carries ``LeakyReLU(x)``, not ``x``; this module
computes the same explicitly. The innermost block has no norm after its down conv (its map
is 1x1 at the training size). Convs carry a bias only with instance norm (``use_bias``),
except the outermost up conv, which always has one. Dropout (pix2pix's default for the 8ngf
middle blocks) sits after the upnorm and has no parameters: it leaves no trace in the keys,
and dnrt always runs without it.

Every level halves the map, so the network input must be a multiple of ``2**num_downs``;
the module says so through its ``input_multiple`` attribute, which the exporter records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dnrt.errors import DnrtError

from .cyclegan import (
    NORMS,
    apply_batchnorm_choice,
)
from .official import check_config, drop_stale_instance_stats

DESCRIPTION = "pix2pix UnetGenerator (junyanz/pytorch-CycleGAN-and-pix2pix unet_128/unet_256: model.model.N, nested model.1.model.3...)"

DEFAULTS: dict[str, Any] = {
    "input_nc": 3,
    "output_nc": 3,
    "ngf": 64,
    "num_downs": 8,
    "norm": "batch",  # instance | batch | none (pix2pix's default is batch)
    "affine": False,  # instance norm with learned gamma/beta; batch norm always has them
    "bn_folded": False,  # batch norm folded into the convolutions (Identity at norm positions)
}

#: The original code builds at least five levels whatever num_downs says.
MIN_DOWNS = 5

DROPOUT_NOTE = "U-Net dropout layers have no weights, so the keys do not show them; dnrt runs without dropout"


class UnetBlock(nn.Module):
    """One level: ``model`` holds the layers under the checkpoint's indices (see the module docstring)."""

    def __init__(self, model: nn.Sequential, outermost: bool) -> None:
        super().__init__()
        self.outermost = outermost
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        layers = list(self.model.children())
        skip = layers[0](x)  # the in-place LeakyReLU of the original: the skip sees it too
        y = skip
        for layer in layers[1:]:
            y = layer(y)
        return torch.cat([skip, y], 1)


def level_channels(ngf: int, num_downs: int) -> list[int]:
    """Inner channels of each level, outermost first: ngf, 2ngf, 4ngf, 8ngf, ..., 8ngf."""
    return [ngf * min(2**i, 8) for i in range(num_downs)]


def validate(cfg: dict[str, Any]) -> None:
    if cfg["norm"] not in NORMS:
        raise DnrtError(
            f"unet generator config 'norm' must be one of {', '.join(NORMS)}, got {cfg['norm']!r}"
        )
    if cfg["bn_folded"] and cfg["norm"] != "batch":
        raise DnrtError(f"unet generator config: 'bn_folded' needs norm 'batch', got {cfg['norm']!r}")
    if (
        cfg["ngf"] < 1
        or cfg["input_nc"] < 1
        or cfg["output_nc"] < 1
        or not MIN_DOWNS <= cfg["num_downs"] <= 12
    ):
        raise DnrtError(f"invalid unet generator config (num_downs must be {MIN_DOWNS}..12): {cfg}")


def build(config: dict[str, Any]) -> nn.Module:
    """Build pix2pix's UnetGenerator (random weights) from a config dict."""
    cfg = check_config(config, DEFAULTS, "unet")
    validate(cfg)
    norm_kind, folded = cfg["norm"], cfg["bn_folded"]
    use_bias = norm_kind == "instance"  # the original's rule
    bias = use_bias or folded  # a conv that a folded batch norm follows gains a bias

    def norm(channels: int) -> nn.Module:
        if norm_kind == "instance":
            return nn.InstanceNorm2d(channels, affine=cfg["affine"], track_running_stats=False)
        if norm_kind == "batch" and not folded:
            return nn.BatchNorm2d(channels)
        return nn.Identity()

    inner = level_channels(cfg["ngf"], cfg["num_downs"])
    depth = len(inner)
    block: UnetBlock | None = None
    for level in range(depth - 1, 0, -1):  # innermost first, the outermost is built below
        c_in, c_out = inner[level], inner[level - 1]
        if block is None:  # innermost: no norm after the down conv, so nothing folds into it
            down = [nn.LeakyReLU(0.2), nn.Conv2d(c_out, c_in, 4, stride=2, padding=1, bias=use_bias)]
            up = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias), norm(c_out)]
            layers = down + up
        else:
            down = [nn.LeakyReLU(0.2), nn.Conv2d(c_out, c_in, 4, stride=2, padding=1, bias=bias)]
            up = [
                nn.ReLU(),
                nn.ConvTranspose2d(2 * c_in, c_out, 4, stride=2, padding=1, bias=bias),
                norm(c_out),
            ]
            layers = [*down, norm(c_in), block, *up]
        block = UnetBlock(nn.Sequential(*layers), outermost=False)
    assert block is not None
    outer = nn.Sequential(
        nn.Conv2d(cfg["input_nc"], inner[0], 4, stride=2, padding=1, bias=use_bias),
        block,
        nn.ReLU(),
        nn.ConvTranspose2d(2 * inner[0], cfg["output_nc"], 4, stride=2, padding=1),
        nn.Tanh(),
    )
    return UnetGenerator(UnetBlock(outer, outermost=True), input_multiple=2**depth)


class UnetGenerator(nn.Module):
    """The top level: ``model`` is the outermost block (keys ``model.model.*``)."""

    def __init__(self, outermost: UnetBlock, input_multiple: int) -> None:
        super().__init__()
        self.model = outermost
        #: Network input sizes must be multiples of this (read by the exporter).
        self.input_multiple = input_multiple

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _level_prefixes(state_dict: dict[str, Tensor]) -> list[str]:
    """``model.model``, ``model.model.1.model``, ``...3.model``: one prefix per level, outermost first."""
    prefixes = ["model.model"]
    prefix = "model.model.1.model"
    while any(k.startswith(prefix + ".") for k in state_dict):
        prefixes.append(prefix)
        prefix += ".3.model"
    return prefixes


def infer_config(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    """Config from the nesting and the shapes; None unless the keys are the U-Net's."""
    first = state_dict.get("model.model.0.weight")
    last = state_dict.get("model.model.3.weight")
    if first is None or last is None or first.ndim != 4 or last.ndim != 4:
        return None
    prefixes = _level_prefixes(state_dict)
    second = prefixes[1] if len(prefixes) > 1 else "model.model.1.model"
    norm_keys = {k.rsplit(".", 1)[1] for k in state_dict if k.startswith(second + ".2.")}
    if f"{second}.1.bias" in state_dict:
        norm, affine = "instance", "weight" in norm_keys
    elif norm_keys & {"running_mean", "running_var", "weight"}:
        norm, affine = "batch", False
    else:
        norm, affine = "none", False
    return {
        "input_nc": int(first.shape[1]),
        "output_nc": int(last.shape[1]),  # ConvTranspose2d weights are [in, out, k, k]
        "ngf": int(first.shape[0]),
        "num_downs": len(prefixes),
        "norm": norm,
        "affine": affine,
        "bn_folded": False,
    }


def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys are already ours; instance-norm checkpoints may carry stale PyTorch 0.4 norm buffers."""
    prefixes = _level_prefixes(state_dict)
    if len(prefixes) > 1 and f"{prefixes[1]}.1.bias" in state_dict:
        return drop_stale_instance_stats(state_dict)
    return dict(state_dict)


def finalize(
    module: nn.Module, config: dict[str, Any], batchnorm: str = "instance"
) -> tuple[dict[str, Any], list[str]]:
    """As for CycleGAN: fold batch norms for ``"eval"``, keep them for ``"instance"``."""
    return apply_batchnorm_choice(module, config, batchnorm, [DROPOUT_NOTE])
