"""Generator zoo: layouts, detection, norm -> ReLU structure, sizes, batch-norm folding."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from dnrt.errors import DnrtError  # noqa: E402
from dnrt.models.zoo import (  # noqa: E402
    BlurDownsample,
    BlurUpsample,
    ResidualBlock,
    build_generator,
    count_norm_layers,
    detect_architecture,
    fold_batch_norms,
)

SMALL = {
    "official": {"features": 8, "residuals": 2},
    "cyclegan": {"ngf": 8, "n_blocks": 2},
    "cut": {"ngf": 8, "n_blocks": 2},
}

# (architecture, config) pairs whose layout detection must recover exactly.
VARIANTS = [
    ("official", {"features": 8, "residuals": 2}),
    ("official", {"features": 4, "residuals": 3, "affine": True, "in_channels": 1, "out_channels": 2}),
    ("cyclegan", {"ngf": 8, "n_blocks": 2}),
    ("cyclegan", {"ngf": 8, "n_blocks": 3, "affine": True, "use_dropout": True}),
    ("cyclegan", {"ngf": 4, "n_blocks": 2, "padding_type": "zero", "use_dropout": True, "output_nc": 1}),
    ("cyclegan", {"ngf": 4, "n_blocks": 1, "padding_type": "zero"}),
    ("cyclegan", {"ngf": 8, "n_blocks": 2, "norm": "batch", "affine": True}),
    ("cyclegan", {"ngf": 8, "n_blocks": 2, "norm": "none"}),
    ("cut", {"ngf": 8, "n_blocks": 2}),
    ("cut", {"ngf": 8, "n_blocks": 2, "antialias_up": False}),
    ("cut", {"ngf": 8, "n_blocks": 2, "antialias_down": False}),
    ("cut", {"ngf": 4, "n_blocks": 1, "down_filt_size": 5, "up_filt_size": 3, "use_dropout": True}),
    ("cut", {"ngf": 8, "n_blocks": 2, "norm": "batch", "affine": True}),
]


def _norm_relu_pairs(module: nn.Module) -> tuple[int, int, int]:
    """(norms followed by a ReLU sibling, norms ending a residual body, other norms)."""
    followed = last_in_residual = other = 0
    residual_bodies = {id(m.body) for m in module.modules() if isinstance(m, ResidualBlock)}
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.children())
        for i, child in enumerate(children):
            if not isinstance(child, nn.InstanceNorm2d):
                continue
            if i + 1 < len(children) and isinstance(children[i + 1], nn.ReLU):
                assert not children[i + 1].inplace
                followed += 1
            elif i + 1 == len(children) and id(parent) in residual_bodies:
                last_in_residual += 1
            else:
                other += 1
    return followed, last_in_residual, other


def test_norm_layer_counts() -> None:
    assert count_norm_layers(build_generator("official", {"features": 64, "residuals": 9})) == 23
    assert count_norm_layers(build_generator("official", {"features": 8, "residuals": 3})) == 11
    assert count_norm_layers(build_generator("official", {"features": 16, "residuals": 3})) == 11
    assert count_norm_layers(build_generator("cyclegan", {"ngf": 8, "n_blocks": 9})) == 23
    assert count_norm_layers(build_generator("cyclegan", {"ngf": 8, "n_blocks": 6})) == 17
    assert count_norm_layers(build_generator("cut", {"ngf": 8, "n_blocks": 9})) == 23
    assert count_norm_layers(build_generator("cyclegan", {"ngf": 8, "norm": "batch"})) == 0


@pytest.mark.parametrize("name", ["official", "cyclegan", "cut"])
def test_every_norm_is_plain_instance_norm_followed_by_relu(name: str) -> None:
    module = build_generator(
        name, {**SMALL[name], **({"residuals": 3} if name == "official" else {"n_blocks": 3})}
    )
    norms = [m for m in module.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert all(type(m) is nn.InstanceNorm2d and not m.track_running_stats and not m.affine for m in norms)
    # 1 stem + 2 down + 1 per residual block + 2 up are followed by ReLU; the residual
    # blocks' second norm ends the body (the skip connection follows); nothing else.
    assert _norm_relu_pairs(module) == (3 + 3 + 2, 3, 0)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in module.modules())


def test_official_key_layout_matches_the_reference_table() -> None:
    keys = set(build_generator("official", {"features": 8, "residuals": 1}).state_dict())
    expected = {
        "block1.0.weight",
        "downsampleblock2.conv.weight",
        "downsampleblock2.downsample.conv.weight",
        "downsampleblock3.conv.weight",
        "downsampleblock3.downsample.conv.weight",
        "resnetblocks4.0.model.1.weight",
        "resnetblocks4.0.model.5.weight",
        "upsampleblock5.upsample.model.1.weight",
        "upsampleblock5.conv.weight",
        "upsampleblock6.upsample.model.1.weight",
        "upsampleblock6.conv.weight",
        "block7.1.weight",
    }
    assert keys == expected | {k.replace(".weight", ".bias") for k in expected}
    sd = build_generator("official", {"features": 8, "residuals": 1}).state_dict()
    assert tuple(sd["upsampleblock5.upsample.model.1.weight"].shape) == (32, 32, 4, 4)  # ConvT(4f, 4f, 4)
    assert tuple(sd["downsampleblock3.downsample.conv.weight"].shape) == (32, 32, 3, 3)


def test_cyclegan_and_cut_key_indices() -> None:
    cg = build_generator("cyclegan", {"ngf": 8, "n_blocks": 9}).state_dict()
    assert tuple(cg["model.19.weight"].shape) == (32, 16, 3, 3)  # first ConvTranspose2d [in, out, k, k]
    assert tuple(cg["model.22.weight"].shape) == (16, 8, 3, 3)
    assert tuple(cg["model.26.weight"].shape) == (3, 8, 7, 7)
    assert "model.18.conv_block.5.weight" in cg and "model.10.conv_block.1.bias" in cg
    cut = build_generator("cut", {"ngf": 8, "n_blocks": 9}).state_dict()
    for idx, channels, size in [(7, 16, 3), (11, 32, 3), (21, 32, 4), (25, 16, 4)]:
        assert tuple(cut[f"model.{idx}.filt"].shape) == (channels, 1, size, size)
    assert tuple(cut["model.8.weight"].shape) == (32, 16, 3, 3)
    assert tuple(cut["model.22.weight"].shape) == (16, 32, 3, 3)
    assert tuple(cut["model.30.weight"].shape) == (3, 8, 7, 7)
    assert "model.12.conv_block.1.weight" in cut and "model.20.conv_block.5.weight" in cut
    # The blurs are the binomial filters of CUT: [1,2,1]^2 / 16 down, [1,3,3,1]^2 / 64 * 4 up.
    down = torch.tensor([1.0, 2.0, 1.0])
    up = torch.tensor([1.0, 3.0, 3.0, 1.0])
    assert torch.allclose(cut["model.7.filt"][0, 0], torch.outer(down, down) / 16)
    assert torch.allclose(cut["model.21.filt"][0, 0], torch.outer(up, up) / 64 * 4)


@pytest.mark.parametrize(
    ("name", "config"), VARIANTS, ids=lambda v: json.dumps(v) if isinstance(v, dict) else v
)
def test_detection_recovers_name_and_config(name: str, config: dict) -> None:
    module = build_generator(name, config)
    detected, found = detect_architecture(module.state_dict())
    assert detected == name
    rebuilt = build_generator(detected, found)
    expected = {**found, **config}
    assert found == expected, "every given config value must be recovered"
    assert json.loads(json.dumps(found)) == found  # goes into the bundle manifest
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    x = torch.randn(1, config.get("in_channels", config.get("input_nc", 3)), 32, 32)
    with torch.no_grad():
        assert torch.equal(module.eval()(x), rebuilt(x))


@pytest.mark.parametrize("name", ["official", "cyclegan", "cut"])
@pytest.mark.parametrize("size", [(64, 64), (36, 52), (40, 24)])
def test_output_size_equals_input_size(name: str, size: tuple[int, int]) -> None:
    module = build_generator(name, SMALL[name])
    with torch.no_grad():
        y = module(torch.rand(1, 3, *size) * 2 - 1)
    assert tuple(y.shape) == (1, 3, *size)
    assert float(y.abs().max()) <= 1.0  # tanh output


def test_blur_layers_shapes() -> None:
    x = torch.randn(2, 5, 12, 20)
    for size in range(1, 8):
        assert tuple(BlurDownsample(5, size)(x).shape) == (2, 5, 6, 10)
        assert tuple(BlurUpsample(5, size)(x).shape) == (2, 5, 24, 40)
    # A blur of a constant stays constant away from nothing: padding is reflect/replicate.
    c = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(BlurDownsample(2)(c), torch.full((1, 2, 4, 4), 0.7))
    assert torch.allclose(BlurUpsample(2)(c), torch.full((1, 2, 16, 16), 0.7))


def test_fold_batch_norms_is_equivalent() -> None:
    torch.manual_seed(0)
    module = build_generator("cyclegan", {"ngf": 8, "n_blocks": 2, "norm": "batch", "affine": True})
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = module.eval()(x)
        assert fold_batch_norms(module) == 2 + 2 * 2 + 2 + 1
        after = module(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert torch.allclose(before, after, atol=1e-5)
    folded = build_generator("cyclegan", {"ngf": 8, "n_blocks": 2, "norm": "batch", "bn_folded": True})
    folded.load_state_dict(module.state_dict(), strict=True)


def test_detection_error_says_what_was_found() -> None:
    with pytest.raises(
        DnrtError,
        match=r"no known generator layout.*2 tensors.*encoder \(1\).*encoder.conv.weight \[4x3x3x3\]",
    ):
        detect_architecture(
            {"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.conv.weight": torch.zeros(3)}
        )
    discriminator = {"model.0.weight": torch.zeros(8, 3, 4, 4), "model.0.bias": torch.zeros(8)}
    with pytest.raises(DnrtError, match="PatchGAN discriminator"):
        detect_architecture(discriminator)
    # A U-Net's first conv alone is not a layout: the outermost up conv is missing.
    with pytest.raises(DnrtError, match="no known generator layout"):
        detect_architecture({"model.model.0.weight": torch.zeros(8, 3, 4, 4)})


def test_build_generator_rejects_bad_configs() -> None:
    with pytest.raises(
        DnrtError, match=r"unknown generator architecture 'unet_512'.*official, cyclegan, cut"
    ):
        build_generator("unet_512", {})
    with pytest.raises(DnrtError, match="unknown cyclegan generator config keys: features"):
        build_generator("cyclegan", {"features": 8})
    with pytest.raises(DnrtError, match="'residuals' must be int, got bool"):
        build_generator("official", {"residuals": True})
    with pytest.raises(DnrtError, match="'norm' must be one of instance, batch, none"):
        build_generator("cut", {"norm": "group"})
    with pytest.raises(DnrtError, match="'bn_folded' needs norm 'batch'"):
        build_generator("cyclegan", {"bn_folded": True})
