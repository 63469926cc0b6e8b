"""CUT / FastCUT ``ResnetGenerator`` (taesungp/contrastive-unpaired-translation).

Same ``model.N.*`` layout as CycleGAN's generator, but down- and up-sampling are
anti-aliased (default): a stride-1 conv + norm + ReLU followed by a fixed blur
(``Downsample``: reflect pad, 3x3 binomial [1,2,1]^2/16, stride 2) and, on the way up,
a fixed transposed blur (``Upsample``: replicate pad 1, 4x4 binomial [1,3,3,1]^2/64 x 4,
stride 2, crop) before a stride-1 conv + norm + ReLU. The blur kernels are saved as
``model.N.filt`` buffers of shape [C, 1, k, k]; their presence is what tells CUT from
CycleGAN. With ``--no_antialias`` and ``--no_antialias_up`` a CUT generator *is* the
CycleGAN layout and is detected as ``cyclegan``; one flag alone gives a mixed layout,
handled here through ``antialias_down`` / ``antialias_up``.

Indices for the default (both anti-aliased, n blocks): 0 pad, 1 conv, 2 norm, 3 relu,
4 conv, 5 norm, 6 relu, 7 blur, 8 conv, 9 norm, 10 relu, 11 blur, 12..11+n blocks,
then per up step: blur, conv, norm, relu; then pad, conv, tanh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import cyclegan
from .official import check_config

DESCRIPTION = (
    "CUT/FastCUT ResnetGenerator with anti-aliased down/up-sampling "
    "(taesungp/contrastive-unpaired-translation: model.N.*, model.N.filt)"
)

DEFAULTS: dict[str, Any] = {**cyclegan.DEFAULTS, **cyclegan.ANTIALIAS_DEFAULTS}


def build(config: dict[str, Any]) -> nn.Module:
    """Build CUT's ResnetGenerator (random weights; blur buffers set to the standard filters)."""
    cfg = check_config(config, DEFAULTS, "cut")
    cyclegan.validate(cfg, "cut")
    return cyclegan.build_resnet(cfg)


def infer_config(state_dict: dict[str, Tensor]) -> dict[str, Any] | None:
    cfg = cyclegan.infer_resnet(state_dict)
    if cfg is None or not (cfg["antialias_down"] or cfg["antialias_up"]):
        return None
    return cfg


remap = cyclegan.remap


def finalize(
    module: nn.Module, config: dict[str, Any], batchnorm: str = "instance"
) -> tuple[dict[str, Any], list[str]]:
    """Batch norms as for CycleGAN, plus a note when a checkpoint's blur is not the standard one."""
    config, notes = cyclegan.finalize(module, config, batchnorm)
    for name, sub in module.named_modules():
        if isinstance(sub, (cyclegan.BlurDownsample, cyclegan.BlurUpsample)):
            gain = 4 if isinstance(sub, cyclegan.BlurUpsample) else 1
            expected = cyclegan.binomial_filter(sub.filt_size) * gain
            if not torch.allclose(sub.filt, expected.expand_as(sub.filt), atol=1e-6):
                notes.append(
                    f"blur filter {name}.filt differs from CUT's standard binomial filter; "
                    "the checkpoint's values are used"
                )
    return config, notes
