"""Turn any generator with ``nn.InstanceNorm2d`` layers into a two-mode dnrt model.

``convert(module)`` swaps every InstanceNorm2d for :class:`DenseNorm2d` (affine
parameters kept), fuses a ReLU that directly follows a norm layer in the same
``nn.Sequential`` into it, and probes the model once to learn each layer's map
stride and the order in which the forward pass reaches the layers.

``nn.BatchNorm2d`` layers depend on ``batchnorm``:

- ``"instance"`` (the default): each is swapped like an InstanceNorm2d, with the
  BatchNorm's weight/bias as affine parameters and its eps where IN's applies; its
  running statistics are unused. In IN mode this is exactly ``BatchNorm2d`` in training
  mode on a batch of one image (biased variance, BN's eps) -- what pix2pix/CycleGAN's
  ``test.py`` runs without ``--eval`` -- and TIN/KIN/DN apply to it.
- ``"eval"``: left in place, in eval mode (running statistics); the zoo folds them into
  the convolutions before converting.

Dropout is always off (the model is put in eval mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dnrt.bundle import LayerSpec, check_batchnorm_mode
from dnrt.errors import DnrtError
from dnrt.models.norm import DenseNorm2d, NormContext
from dnrt.semantics import IN_EPS

#: Probe input size: divisible by 64, so generators with up to 5 downsamplings pass it.
PROBE_SIZE = 128


@dataclass
class _Swap:
    parent: nn.Module
    attr: str
    norm: nn.InstanceNorm2d | nn.BatchNorm2d
    relu: tuple[nn.Module, str] | None


class DnrtModel(nn.Module):
    """A generator whose norm layers are DenseNorm2d, with the two passes of a bundle."""

    def __init__(
        self,
        generator: nn.Module,
        context: NormContext,
        layers: list[LayerSpec],
        batchnorm: str | None = None,
        network_multiple: int = 1,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.layers = layers
        #: What the generator needs its input to be a multiple of besides even norm maps
        #: (its ``input_multiple`` attribute: a U-Net's 2**depth).
        self.network_multiple = network_multiple
        #: How the generator's BatchNorm2d layers run ("instance" | "eval"); None without any.
        self.batchnorm = batchnorm
        object.__setattr__(self, "context", context)

    @property
    def total_channels(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def input_multiple(self) -> int:
        """Input sizes must be multiples of this (every norm map even, and the network's own)."""
        return math.lcm(2 * max((layer.stride for layer in self.layers), default=1), self.network_multiple)

    def collect(self, tiles: Tensor, collect_params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalize with each tile's own statistics; return image, mean [N, L], std [N, L]."""
        ctx: NormContext = self.context  # type: ignore[assignment]
        ctx.mode, ctx.collect_params = "collect", collect_params
        ctx.means, ctx.stds = [], []
        try:
            image = self.generator(tiles)
            if not ctx.means:  # a generator without norm layers (e.g. batch-norm folded)
                empty = tiles.new_zeros((tiles.shape[0], 0))
                return image, empty, empty
            return image, torch.cat(ctx.means, dim=1), torch.cat(ctx.stds, dim=1)
        finally:
            ctx.means, ctx.stds, ctx.collect_params = [], [], None

    def apply(self, tiles: Tensor, nbr_mean: Tensor, nbr_std: Tensor) -> Tensor:
        """Normalize every pixel with moments interpolated from ``[N, L, 3, 3]`` neighbourhoods."""
        ctx: NormContext = self.context  # type: ignore[assignment]
        ctx.mode, ctx.nbr_mean, ctx.nbr_std = "apply", nbr_mean, nbr_std
        try:
            return self.generator(tiles)
        finally:
            ctx.nbr_mean = ctx.nbr_std = None
            ctx.mode = "collect"


def _find_swaps(module: nn.Module, swap_batch_norms: bool) -> list[_Swap]:
    kinds = (nn.InstanceNorm2d, nn.BatchNorm2d) if swap_batch_norms else (nn.InstanceNorm2d,)
    swaps: list[_Swap] = []
    for parent in module.modules():
        children = list(parent.named_children())
        for i, (attr, child) in enumerate(children):
            if not isinstance(child, kinds):
                continue
            relu = None
            # Fuse only a ReLU that is the very next step of the same Sequential:
            # anywhere else the forward may use the norm's output before the ReLU.
            if isinstance(parent, nn.Sequential) and i + 1 < len(children):
                next_attr, next_child = children[i + 1]
                if type(next_child) is nn.ReLU:
                    relu = (parent, next_attr)
            swaps.append(_Swap(parent, attr, child, relu))
    return swaps


def network_multiple(module: nn.Module) -> int:
    """A generator's own input-size constraint: its ``input_multiple`` attribute (a positive power
    of two, e.g. a U-Net's 2**depth), 1 when it has none."""
    multiple = getattr(module, "input_multiple", 1)
    if type(multiple) is not int or multiple < 1 or multiple & (multiple - 1):
        raise DnrtError(f"the generator's input_multiple must be a positive power of two, got {multiple!r}")
    return multiple


def _probe(
    module: nn.Module, norms: list[nn.InstanceNorm2d | nn.BatchNorm2d], in_channels: int, size: int
) -> tuple[list[int], list[int]]:
    """Run one forward pass on a ``size`` px input; return the call order of ``norms`` and each one's stride."""
    order: list[int] = []
    strides: dict[int, int] = {}
    index_of = {id(norm): i for i, norm in enumerate(norms)}

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        i = index_of[id(mod)]
        if i in strides:
            raise DnrtError(
                f"norm layer {i} is called twice in one forward pass; dnrt needs each layer used once"
            )
        h, w = inputs[0].shape[-2:]
        if size % h or size % w or h != w:
            raise DnrtError(
                f"a norm layer sees a {h}x{w} map for a {size} px input; dnrt supports "
                "generators whose maps are the input downsampled by integer factors"
            )
        strides[i] = size // h
        order.append(i)

    handles = [norm.register_forward_pre_hook(hook) for norm in norms]
    try:
        with torch.no_grad():
            module(torch.zeros(1, in_channels, size, size))
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(norms)) if i not in strides]
    if missing:
        raise DnrtError(f"{len(missing)} norm layer(s) are never called by the forward pass")
    return order, [strides[i] for i in order]


def infer_in_channels(module: nn.Module) -> int:
    """Input channels of a generator: those of its first convolution."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            return layer.in_channels
    raise DnrtError("cannot tell the generator's input channels: it has no convolution")


def convert(module: nn.Module, in_channels: int | None = None, batchnorm: str = "instance") -> DnrtModel:
    """Swap ``module``'s InstanceNorm2d layers for DenseNorm2d and wrap it as a DnrtModel.

    BatchNorm2d layers are swapped too with ``batchnorm="instance"`` and left alone with
    ``"eval"`` (see the module docstring). The module is modified in place and put in eval mode.
    """
    check_batchnorm_mode(batchnorm)
    module = module.eval()
    if in_channels is None:
        in_channels = infer_in_channels(module)
    has_batch_norms = any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    swaps = _find_swaps(module, swap_batch_norms=batchnorm == "instance")
    for swap in swaps:
        if isinstance(swap.norm, nn.InstanceNorm2d) and swap.norm.track_running_stats:
            raise DnrtError(
                f"{swap.attr}: InstanceNorm2d with track_running_stats=True uses running statistics at "
                "inference, not instance statistics; dnrt cannot apply tile statistics to it"
            )
    norms = [swap.norm for swap in swaps]
    multiple = network_multiple(module)
    probe = math.lcm(PROBE_SIZE, multiple)  # a U-Net of depth d needs 2**d px to reach its innermost norm
    order, strides = _probe(module, norms, in_channels, probe) if norms else ([], [])

    context = NormContext()
    layers: list[LayerSpec] = []
    offset = 0
    for position, (i, stride) in enumerate(zip(order, strides, strict=True)):
        swap = swaps[i]
        norm = swap.norm
        gamma = norm.weight if norm.affine else None
        beta = norm.bias if norm.affine else None
        activation = "relu" if swap.relu is not None else "none"
        # An InstanceNorm2d normalizes with the runtime's IN eps (its own is not consulted);
        # a BatchNorm2d run per sample keeps its own eps there.
        eps_scale = norm.eps / IN_EPS if isinstance(norm, nn.BatchNorm2d) else 1.0
        dense = DenseNorm2d(
            norm.num_features, context, position, offset, gamma, beta, activation, eps_scale=eps_scale
        )
        setattr(swap.parent, swap.attr, dense)
        if swap.relu is not None:
            setattr(swap.relu[0], swap.relu[1], nn.Identity())
        name = _qualified_name(module, norm, dense)
        layers.append(LayerSpec(name, norm.num_features, stride, offset, norm.affine, activation))
        offset += norm.num_features
    return DnrtModel(
        module, context, layers, batchnorm if has_batch_norms else None, network_multiple=multiple
    ).eval()


def _qualified_name(root: nn.Module, old: nn.Module, new: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is new:
            return name
    return type(old).__name__
