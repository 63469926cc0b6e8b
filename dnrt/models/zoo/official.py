"""The generator of the official DN / KIN code base (docs/semantics.md section 6).

The module tree reproduces the checkpoint's key names exactly, so an official
``<epoch>_G.pth`` loads with no key remapping. Everything is built from
``nn.Sequential`` children so that every norm layer and the ReLU after it are
neighbours in the same Sequential: the norm swap detects "a ReLU follows" by
looking at the next sibling.

Layout (f = features), with the feature-map stride each norm layer sees:

    reflectionpad                 ReflectionPad2d(3)
    block1            0 conv7x7 (in -> f)  1 norm  2 relu           stride 1
    downsampleblock2  conv3x3 (f -> 2f)  instancenorm  relu          stride 1
                      downsample = reflectionpad(1), conv3x3 stride 2
    downsampleblock3  same, 2f -> 4f                                 stride 2
    resnetblocks4.i   model = pad, conv, norm, relu, pad, conv, norm stride 4 (x2 each)
    upsampleblock5    upsample.model = ReplicationPad2d(1), ConvT(4f, 4f, 4, s2, p3)
                      conv3x3 (4f -> 2f)  instancenorm  relu         stride 2
    upsampleblock6    same, 2f -> f                                  stride 1
    block7            0 ReflectionPad2d(3)  1 conv7x7 (f -> out)  2 tanh
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from dnrt.errors import DnrtError

DESCRIPTION = "official DN/KIN generator (Kaminyou/Dense-Normalization: block1, downsampleblock2..., block7)"

DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "features": 64,
    "residuals": 9,
    "affine": False,
}


class ResidualBlock(nn.Module):
    """``x + body(x)``; the body Sequential is registered under ``name`` so checkpoint keys match.

    The official generator names it ``model``, the CycleGAN/CUT one ``conv_block``;
    ``.body`` reaches it either way.
    """

    def __init__(self, body: nn.Sequential, name: str = "model") -> None:
        super().__init__()
        self.body_name = name
        self.add_module(name, body)

    @property
    def body(self) -> nn.Sequential:
        return getattr(self, self.body_name)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def check_config(config: dict[str, Any], defaults: dict[str, Any], arch: str) -> dict[str, Any]:
    """Fill defaults, refuse unknown keys: configs come from bundle manifests written by other versions."""
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise DnrtError(
            f"unknown {arch} generator config keys: {', '.join(unknown)} (known: {', '.join(defaults)})"
        )
    merged = {**defaults, **config}
    for name, value in merged.items():
        want = type(defaults[name])
        # bool is a subclass of int: keep the two apart so "residuals": true is refused.
        if type(value) is not want:
            raise DnrtError(
                f"{arch} generator config {name!r} must be {want.__name__}, got {type(value).__name__} {value!r}"
            )
    return merged


def _norm(channels: int, affine: bool) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)


def _down_block(cin: int, cout: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
            instancenorm=_norm(cout, affine),
            relu=nn.ReLU(inplace=False),
            downsample=nn.Sequential(
                OrderedDict(
                    reflectionpad=nn.ReflectionPad2d(1),
                    conv=nn.Conv2d(cout, cout, kernel_size=3, stride=2),
                )
            ),
        )
    )


def _up_block(cin: int, cout: int, affine: bool) -> nn.Sequential:
    # ReplicationPad2d(1) + ConvTranspose2d(k4, s2, p3) maps h -> 2h exactly.
    upsample = nn.Sequential(
        OrderedDict(
            model=nn.Sequential(
                nn.ReplicationPad2d(1),
                nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=3),
            )
        )
    )
    return nn.Sequential(
        OrderedDict(
            upsample=upsample,
            conv=nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
            instancenorm=_norm(cout, affine),
            relu=nn.ReLU(inplace=False),
        )
    )


def _residual(channels: int, affine: bool) -> ResidualBlock:
    body = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(channels, channels, kernel_size=3),
        _norm(channels, affine),
        nn.ReLU(inplace=False),
        nn.ReflectionPad2d(1),
        nn.Conv2d(channels, channels, kernel_size=3),
        _norm(channels, affine),
    )
    return ResidualBlock(body, "model")


def build(config: dict[str, Any]) -> nn.Module:
    """Build the official generator (random weights) from a config dict."""
    cfg = check_config(config, DEFAULTS, "official")
    f, affine = cfg["features"], cfg["affine"]
    if f < 1 or cfg["residuals"] < 0 or cfg["in_channels"] < 1 or cfg["out_channels"] < 1:
        raise DnrtError(f"invalid official generator config: {cfg}")
    # The top level is a Sequential too: its forward order is the registration order below.
    return nn.Sequential(
        OrderedDict(
            reflectionpad=nn.ReflectionPad2d(3),
            block1=nn.Sequential(
                nn.Conv2d(cfg["in_channels"], f, kernel_size=7), _norm(f, affine), nn.ReLU(inplace=False)
            ),
            downsampleblock2=_down_block(f, 2 * f, affine),
            downsampleblock3=_down_block(2 * f, 4 * f, affine),
            resnetblocks4=nn.Sequential(*[_residual(4 * f, affine) for _ in range(cfg["residuals"])]),
            upsampleblock5=_up_block(4 * f, 2 * f, affine),
            upsampleblock6=_up_block(2 * f, f, affine),
            block7=nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(f, cfg["out_channels"], kernel_size=7), nn.Tanh()
            ),
        )
    )


def infer_config(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    """Read the config off the tensor shapes; None when the keys are not this layout.

    Only the signature keys are required here; missing or mis-shaped other keys are
    reported precisely by the loader's strict check.
    """
    first = state_dict.get("block1.0.weight")
    last = state_dict.get("block7.1.weight")
    if first is None or last is None or "downsampleblock2.conv.weight" not in state_dict:
        return None
    if first.ndim != 4 or last.ndim != 4:
        return None
    blocks = {
        int(k.split(".")[1])
        for k in state_dict
        if k.startswith("resnetblocks4.") and k.split(".")[1].isdigit()
    }
    return {
        "in_channels": int(first.shape[1]),
        "out_channels": int(last.shape[0]),
        "features": int(first.shape[0]),
        "residuals": max(blocks) + 1 if blocks else 0,
        "affine": "block1.1.weight" in state_dict,
    }


_STALE = ("running_mean", "running_var", "num_batches_tracked")


def drop_stale_instance_stats(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop running-statistics buffers of instance-norm layers.

    PyTorch 0.4 saved them for InstanceNorm2d even without track_running_stats; the
    training code bases delete them on load and use per-instance statistics, so do we.
    Only call this on layouts whose norm layers are all instance norms.
    """
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _STALE}


def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official checkpoints already use our names; only stale norm buffers go."""
    return drop_stale_instance_stats(state_dict)


def count_norm_layers(module: nn.Module) -> int:
    """Instance-norm layers in a module (what DN/KIN/TIN act on)."""
    return sum(isinstance(m, nn.InstanceNorm2d) for m in module.modules())


__all__ = [
    "DEFAULTS",
    "DESCRIPTION",
    "ResidualBlock",
    "build",
    "count_norm_layers",
    "drop_stale_instance_stats",
    "infer_config",
    "remap",
]
