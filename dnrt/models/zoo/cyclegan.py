"""The CycleGAN/pix2pix ``ResnetGenerator`` family (and CUT's anti-aliased variant of it).

Layout of junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (keys ``model.N.*``):

    0 ReflectionPad2d(3)  1 Conv7x7(in -> ngf)  2 norm  3 ReLU                    stride 1
    down x2:  Conv3x3 stride 2, pad 1 (c -> 2c)  norm  ReLU                        stride 2, 4
    n_blocks x ResnetBlock: conv_block = [pad] conv [norm] ReLU [Dropout] [pad] conv norm   stride 4
    up x2:    ConvTranspose3x3 (s2, p1, output_padding 1) (c -> c/2)  norm  ReLU   stride 2, 1
    ReflectionPad2d(3)  Conv7x7(ngf -> out, always with bias)  Tanh

CUT (taesungp/contrastive-unpaired-translation) by default replaces each down step by
``Conv3x3 stride 1, norm, ReLU, Downsample`` (a fixed binomial blur, stride 2, reflect
padding; buffer ``filt``) and each up step by ``Upsample`` (a fixed binomial transposed
blur, stride 2, replicate padding; buffer ``filt``) followed by ``Conv3x3 stride 1, norm,
ReLU``. Its norm layers therefore see maps at strides 1, 1, 2, 4..., 2, 1 instead of
1, 2, 4, 4..., 2, 1.

Convolutions carry a bias only with instance norm (``use_bias`` in the original code);
a batch-norm checkpoint has conv weights without bias and BatchNorm2d parameters and
running statistics at the norm positions. With dropout (pix2pix's default; BCI's
PyramidPix2pix, github bupt-ai-cz/BCI, trains ``resnet_9blocks`` with ``--norm batch`` and
dropout) each block's conv_block is ``0 pad, 1 conv, 2 norm, 3 ReLU, 4 Dropout, 5 pad,
6 conv, 7 norm``: keys ``model.10..18.conv_block.{1,2,6,7}.*`` for 9 blocks. Residual-block padding ``reflect`` and
``replicate`` produce identical keys; ``reflect`` (the default of both code bases) is
assumed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnrt.errors import DnrtError

from .official import ResidualBlock, check_config, drop_stale_instance_stats

DESCRIPTION = "CycleGAN/pix2pix ResnetGenerator (junyanz/pytorch-CycleGAN-and-pix2pix: model.N.*, conv_block)"

DEFAULTS: dict[str, Any] = {
    "input_nc": 3,
    "output_nc": 3,
    "ngf": 64,
    "n_blocks": 9,
    "norm": "instance",  # instance | batch | none
    "affine": False,  # instance norm with learned gamma/beta; batch norm always has them
    "use_dropout": False,  # Dropout(0.5) inside residual blocks (identity in eval mode)
    "padding_type": "reflect",  # reflect | replicate | zero, inside residual blocks
    "bn_folded": False,  # batch norm already folded into the convolutions (Identity at norm positions)
}

# CUT's extra settings; both False is exactly the CycleGAN layout.
ANTIALIAS_DEFAULTS: dict[str, Any] = {
    "antialias_down": True,
    "antialias_up": True,
    "down_filt_size": 3,
    "up_filt_size": 4,
}

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")

BATCH_NOTE = (
    "batch-norm generator: BN folded into convolutions; DN/KIN/TIN do not apply "
    "(no instance norm layers), all modes give the same output"
)
BATCH_INSTANCE_NOTE = (
    "batch-norm generator: every BatchNorm2d normalizes each sample with its own statistics "
    "(BN's weight/bias and eps; running statistics unused), as test.py without --eval runs it; "
    "IN/TIN/KIN/DN apply (--batchnorm eval folds the running statistics instead)"
)
DROPOUT_NOTE = "dropout layers are off (identity), as in eval mode; test.py without --eval samples them"
NONE_NOTE = (
    "generator without normalization layers: DN/KIN/TIN do not apply "
    "(no instance norm layers), all modes give the same output"
)


def binomial_filter(size: int) -> Tensor:
    """The 2-D blur of CUT's anti-aliasing: outer product of a Pascal row, summing to 1."""
    if not 1 <= size <= 7:
        raise DnrtError(f"anti-aliasing filter size must be 1..7, got {size}")
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    filt = row[:, None] * row[None, :]
    return (filt / filt.sum()).to(torch.float32)


class BlurDownsample(nn.Module):
    """CUT's ``Downsample``: reflect pad, depthwise binomial blur, stride 2 (h -> ceil(h/2))."""

    def __init__(self, channels: int, filt_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.filt_size = filt_size
        lo, hi = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
        self.pad = nn.ReflectionPad2d((lo, hi, lo, hi))
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.filt_size == 1:
            return x[:, :, ::2, ::2]
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=self.channels)


class BlurUpsample(nn.Module):
    """CUT's ``Upsample``: replicate pad 1, depthwise transposed binomial blur x4, stride 2, crop (h -> 2h)."""

    def __init__(self, channels: int, filt_size: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.filt_size = filt_size
        self.pad_size = (filt_size - 1) // 2
        self.pad = nn.ReplicationPad2d(1)
        self.register_buffer("filt", (binomial_filter(filt_size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(
            self.pad(x), self.filt, stride=2, padding=1 + self.pad_size, groups=self.channels
        )[:, :, 1:, 1:]
        if self.filt_size % 2 == 0:
            y = y[:, :, :-1, :-1]
        return y


def validate(cfg: dict[str, Any], arch: str) -> None:
    if cfg["norm"] not in NORMS:
        raise DnrtError(
            f"{arch} generator config 'norm' must be one of {', '.join(NORMS)}, got {cfg['norm']!r}"
        )
    if cfg["padding_type"] not in PADDINGS:
        raise DnrtError(
            f"{arch} generator config 'padding_type' must be one of {', '.join(PADDINGS)}, "
            f"got {cfg['padding_type']!r}"
        )
    if cfg["bn_folded"] and cfg["norm"] != "batch":
        raise DnrtError(f"{arch} generator config: 'bn_folded' needs norm 'batch', got {cfg['norm']!r}")
    if cfg["ngf"] < 1 or cfg["n_blocks"] < 0 or cfg["input_nc"] < 1 or cfg["output_nc"] < 1:
        raise DnrtError(f"invalid {arch} generator config: {cfg}")


def _norm_factory(cfg: dict[str, Any]):
    norm, affine = cfg["norm"], cfg["affine"]

    def make(channels: int) -> nn.Module:
        if norm == "instance":
            return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)
        if norm == "batch" and not cfg["bn_folded"]:
            return nn.BatchNorm2d(channels, affine=affine)
        return nn.Identity()

    return make


def _resnet_block(dim: int, cfg: dict[str, Any], norm, bias: bool) -> ResidualBlock:
    pad_type = cfg["padding_type"]
    layers: list[nn.Module] = []

    def pad() -> None:
        if pad_type == "reflect":
            layers.append(nn.ReflectionPad2d(1))
        elif pad_type == "replicate":
            layers.append(nn.ReplicationPad2d(1))

    p = 1 if pad_type == "zero" else 0
    pad()
    layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=bias), norm(dim), nn.ReLU(inplace=False)]
    if cfg["use_dropout"]:
        layers.append(nn.Dropout(0.5))  # identity in eval mode; kept so the key indices match
    pad()
    layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=bias), norm(dim)]
    return ResidualBlock(nn.Sequential(*layers), "conv_block")


def build_resnet(cfg: dict[str, Any]) -> nn.Module:
    """Build the ResnetGenerator; ``cfg`` has the CycleGAN keys plus the four anti-aliasing keys."""
    ngf = cfg["ngf"]
    norm = _norm_factory(cfg)
    bias = cfg["norm"] == "instance" or cfg["bn_folded"]
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(cfg["input_nc"], ngf, kernel_size=7, bias=bias),
        norm(ngf),
        nn.ReLU(inplace=False),
    ]
    for i in range(2):
        c = ngf * 2**i
        if cfg["antialias_down"]:
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=1, padding=1, bias=bias),
                norm(2 * c),
                nn.ReLU(inplace=False),
                BlurDownsample(2 * c, cfg["down_filt_size"]),
            ]
        else:
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=bias),
                norm(2 * c),
                nn.ReLU(inplace=False),
            ]
    layers += [_resnet_block(4 * ngf, cfg, norm, bias) for _ in range(cfg["n_blocks"])]
    for i in range(2):
        c = ngf * 4 // 2**i
        if cfg["antialias_up"]:
            layers += [
                BlurUpsample(c, cfg["up_filt_size"]),
                nn.Conv2d(c, c // 2, kernel_size=3, stride=1, padding=1, bias=bias),
            ]
        else:
            layers.append(
                nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias)
            )
        layers += [norm(c // 2), nn.ReLU(inplace=False)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cfg["output_nc"], kernel_size=7), nn.Tanh()]
    # A Sequential holding the Sequential named "model": keys come out as model.N.*.
    return nn.Sequential(OrderedDict(model=nn.Sequential(*layers)))


def build(config: dict[str, Any]) -> nn.Module:
    """Build the CycleGAN ResnetGenerator (random weights) from a config dict."""
    cfg = check_config(config, DEFAULTS, "cyclegan")
    validate(cfg, "cyclegan")
    return build_resnet(
        {
            **cfg,
            **dict.fromkeys(("antialias_down", "antialias_up"), False),
            "down_filt_size": 3,
            "up_filt_size": 4,
        }
    )


def _top_index(key: str) -> tuple[int, str] | None:
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "model" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None


# First residual block's conv indices -> (padding family, dropout).
_BLOCK_CONVS = {
    (1, 5): ("reflect", False),
    (1, 6): ("reflect", True),
    (0, 3): ("zero", False),
    (0, 4): ("zero", True),
}


def infer_resnet(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    """Config of any ResnetGenerator variant (CycleGAN or CUT), or None if the keys are another layout."""
    first = state_dict.get("model.1.weight")
    if first is None or first.ndim != 4 or tuple(first.shape[-2:]) != (7, 7):
        return None
    by_index: dict[int, set[str]] = {}
    for key in state_dict:
        parsed = _top_index(key)
        if parsed is not None:
            by_index.setdefault(parsed[0], set()).add(parsed[1])
    blocks = sorted(i for i, rests in by_index.items() if any(r.startswith("conv_block.") for r in rests))
    n_blocks = len(blocks)
    antialias_down = "model.7.filt" in state_dict
    start = 12 if antialias_down else 10
    up_filt_key = f"model.{start + n_blocks}.filt"
    antialias_up = up_filt_key in state_dict
    last_index = start + n_blocks + (8 if antialias_up else 6) + 1
    last = state_dict.get(f"model.{last_index}.weight")
    if last is None or last.ndim != 4:
        # Not where the layout says: take the last 4-D weight so the strict check can explain.
        convs = [
            i
            for i, rests in by_index.items()
            if "weight" in rests and state_dict[f"model.{i}.weight"].ndim == 4
        ]
        last = state_dict[f"model.{max(convs)}.weight"]

    norm_keys = by_index.get(2, set())
    if "model.1.bias" in state_dict:
        norm, affine = "instance", "weight" in norm_keys  # stale running stats are dropped by remap
    elif norm_keys & {"running_mean", "running_var", "weight"}:
        norm, affine = "batch", "weight" in norm_keys
    else:
        norm, affine = "none", False

    padding, dropout = "reflect", False
    if blocks:
        conv_ids = tuple(
            sorted(
                int(rest.split(".")[1])
                for rest in by_index[blocks[0]]
                if rest.startswith("conv_block.")
                and rest.endswith(".weight")
                and state_dict[f"model.{blocks[0]}.{rest}"].ndim == 4
            )
        )
        padding, dropout = _BLOCK_CONVS.get(conv_ids, (padding, dropout))

    return {
        "input_nc": int(first.shape[1]),
        "output_nc": int(last.shape[0]),
        "ngf": int(first.shape[0]),
        "n_blocks": n_blocks,
        "norm": norm,
        "affine": affine,
        "use_dropout": dropout,
        "padding_type": padding,
        "bn_folded": False,
        "antialias_down": antialias_down,
        "antialias_up": antialias_up,
        "down_filt_size": int(state_dict["model.7.filt"].shape[-1]) if antialias_down else 3,
        "up_filt_size": int(state_dict[up_filt_key].shape[-1]) if antialias_up else 4,
    }


def infer_config(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    cfg = infer_resnet(state_dict)
    if cfg is None or cfg["antialias_down"] or cfg["antialias_up"]:
        return None
    return {k: cfg[k] for k in DEFAULTS}


def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys are already ours; instance-norm checkpoints may carry stale PyTorch 0.4 norm buffers.

    Conv biases exist only with instance norm, so ``model.1.bias`` tells the two apart.
    """
    if "model.1.bias" in state_dict:
        return drop_stale_instance_stats(state_dict)
    return dict(state_dict)


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d/ConvTranspose2d just before it; the BN becomes Identity.

    Exact in eval mode up to float rounding: y = (conv(x) - mean) * g / sqrt(var + eps) + b.
    Returns the number of layers folded.
    """
    folded = 0
    for parent in list(module.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for prev_name, name in zip(names, names[1:], strict=False):
            bn = parent._modules[name]
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            conv = parent._modules[prev_name]
            if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or bn.running_var is None:
                raise DnrtError(f"cannot fold batch norm {name!r}: it does not follow a convolution")
            var = bn.running_var.double()
            scale = torch.rsqrt(var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            weight = conv.weight.double()
            # Conv2d weights are [out, in, k, k]; ConvTranspose2d weights are [in, out, k, k].
            shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
            conv.weight.copy_((weight * scale.reshape(shape)).to(conv.weight.dtype))
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
            conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype))
            parent._modules[name] = nn.Identity()
            folded += 1
    return folded


def finalize(
    module: nn.Module, config: dict[str, Any], batchnorm: str = "instance"
) -> tuple[dict[str, Any], list[str]]:
    """After strict loading: with ``batchnorm="eval"`` fold batch norms (config gains
    ``bn_folded``); with ``"instance"`` keep them for the norm swap. Notes say what happened."""
    return apply_batchnorm_choice(module, config, batchnorm, [DROPOUT_NOTE] if config["use_dropout"] else [])


def apply_batchnorm_choice(
    module: nn.Module, config: dict[str, Any], batchnorm: str, notes: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """The ``--batchnorm`` choice on a pix2pix-family module (ResNet or U-Net): ``"eval"`` folds
    the running statistics into the convolutions, ``"instance"`` keeps the layers for the swap."""
    if config["norm"] == "batch" and not config["bn_folded"]:
        if batchnorm == "eval":
            fold_batch_norms(module)
            return {**config, "bn_folded": True}, [BATCH_NOTE, *notes]
        return config, [BATCH_INSTANCE_NOTE, *notes]
    if config["norm"] == "none":
        return config, [NONE_NOTE, *notes]
    return config, notes
