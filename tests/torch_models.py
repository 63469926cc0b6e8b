"""Small torch generators shared by the tests (built fresh, seeded, in eval mode)."""

from __future__ import annotations

import torch
from torch import nn


def small_generator() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(3, 4, 3),
        nn.InstanceNorm2d(4, affine=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.InstanceNorm2d(6),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1),
        nn.InstanceNorm2d(4),
        nn.Conv2d(4, 3, 1),
        nn.Tanh(),
    )
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net.eval()
