"""RegGAN's generator (Kid-Liet/Reg-GAN, ``Model/CycleGan.py``; MR T1 -> T2 translation).

A ResnetGenerator in three containers, saved as a plain state_dict (``netG_A2B.pth``), one
channel in and out, every norm an ``InstanceNorm2d`` without affine parameters, every conv
with a bias. Layout (f features, 64 in the published code), with each norm layer's stride:

    model_head  0 ReflectionPad2d(3)  1 Conv7x7 (in -> f)  2 norm  3 ReLU                 stride 1
                4 Conv3x3 s2 p1 (f -> 2f)  5 norm  6 ReLU                                stride 2
                7 Conv3x3 s2 p1 (2f -> 4f)  8 norm  9 ReLU                               stride 4
    model_body  N.conv_block: 0 pad 1 conv 2 norm 3 ReLU 4 pad 5 conv 6 norm            stride 4
    model_tail  0 ConvT3x3 s2 p1 op1 (4f -> 2f)  1 norm  2 ReLU                          stride 2
                3 ConvT3x3 s2 p1 op1 (2f -> f)  4 norm  5 ReLU                           stride 1
                6 ReflectionPad2d(3)  7 Conv7x7 (f -> out)  8 Tanh

The arithmetic is CycleGAN's instance-norm generator; only the container names differ, so
the signature keys ``model_head.1.weight`` / ``model_tail.*`` tell it apart.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from dnrt.errors import DnrtError

from .official import ResidualBlock, check_config, drop_stale_instance_stats

DESCRIPTION = "RegGAN generator (Kid-Liet/Reg-GAN: model_head, model_body.N.conv_block, model_tail)"

DEFAULTS: dict[str, Any] = {
    "input_nc": 1,
    "output_nc": 1,
    "features": 64,
    "n_blocks": 9,
}


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _block(dim: int) -> ResidualBlock:
    body = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(dim, dim, 3),
        _norm(dim),
        nn.ReLU(inplace=False),
        nn.ReflectionPad2d(1),
        nn.Conv2d(dim, dim, 3),
        _norm(dim),
    )
    return ResidualBlock(body, "conv_block")


def build(config: dict[str, Any]) -> nn.Module:
    """Build RegGAN's generator (random weights) from a config dict."""
    cfg = check_config(config, DEFAULTS, "reggan")
    f = cfg["features"]
    if f < 1 or cfg["n_blocks"] < 0 or cfg["input_nc"] < 1 or cfg["output_nc"] < 1:
        raise DnrtError(f"invalid reggan generator config: {cfg}")
    head: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(cfg["input_nc"], f, 7), _norm(f), nn.ReLU()]
    for c in (f, 2 * f):
        head += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU()]
    tail: list[nn.Module] = []
    for c in (4 * f, 2 * f):
        tail += [
            nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
            _norm(c // 2),
            nn.ReLU(),
        ]
    tail += [nn.ReflectionPad2d(3), nn.Conv2d(f, cfg["output_nc"], 7), nn.Tanh()]
    return nn.Sequential(
        OrderedDict(
            model_head=nn.Sequential(*head),
            model_body=nn.Sequential(*[_block(4 * f) for _ in range(cfg["n_blocks"])]),
            model_tail=nn.Sequential(*tail),
        )
    )


def infer_config(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    """Config from the shapes; None unless the keys have RegGAN's three containers."""
    first = state_dict.get("model_head.1.weight")
    last = state_dict.get("model_tail.7.weight")
    if first is None or last is None or first.ndim != 4 or last.ndim != 4:
        return None
    blocks = {
        int(k.split(".")[1]) for k in state_dict if k.startswith("model_body.") and k.split(".")[1].isdigit()
    }
    return {
        "input_nc": int(first.shape[1]),
        "output_nc": int(last.shape[0]),
        "features": int(first.shape[0]),
        "n_blocks": max(blocks) + 1 if blocks else 0,
    }


def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys are already ours; only stale PyTorch 0.4 instance-norm buffers go."""
    return drop_stale_instance_stats(state_dict)
