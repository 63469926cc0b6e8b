"""dnrt's normalization layer for PyTorch: :class:`DenseNorm2d` and its :class:`NormContext`.

A generator whose ``nn.InstanceNorm2d`` layers are swapped for :class:`DenseNorm2d`
(:mod:`dnrt.models.normswap`) runs in one of two modes, set on the whole model by
:class:`NormContext`:

- *collect*: each sample is normalized with its own statistics in a flavour
  ``(ddof, eps, floor)`` given as a tensor, and the mean/std are recorded. This is
  the stats graph; with IN's flavour its image output is patch-wise IN.
- *apply*: each sample is normalized with per-pixel moments interpolated from a
  3x3 neighbourhood of tile statistics (the DenseNorm op, :mod:`dnrt.ops.torch_op`).
  This is the DN graph; TIN and KIN feed it constant neighbourhoods.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor, nn

from dnrt.ops.torch_op import dense_norm
from dnrt.semantics import DN_EPS


class NormContext(threading.local):
    """Shared per-forward state of every DenseNorm2d in one model.

    Kept outside the layers' parameters so the same module runs both graphs; the
    exporter traces each mode separately. Thread-local, so a GPU backend can run
    the collect pass in one thread while another thread runs the apply pass.
    """

    def __init__(self) -> None:
        self.mode = "collect"
        self.collect_params: Tensor | None = None
        self.nbr_mean: Tensor | None = None
        self.nbr_std: Tensor | None = None
        self.means: list[Tensor] = []
        self.stds: list[Tensor] = []


class DenseNorm2d(nn.Module):
    """Replacement for ``nn.InstanceNorm2d`` that collects or applies tile statistics.

    ``eps_scale`` scales the collect flavour's epsilon for this layer: 1 for an
    InstanceNorm2d (the flavour's eps *is* IN's), ``bn.eps / IN_EPS`` for a BatchNorm2d run
    per sample, so that IN's and TIN's flavours use the BatchNorm's own eps and KIN's and
    DN's (eps 0) stay without one. The apply step's ``eps`` (DN's, added to the std before
    the reciprocal) is not scaled.
    """

    def __init__(
        self,
        channels: int,
        context: NormContext,
        index: int,
        offset: int,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        activation: str = "none",
        eps: float = DN_EPS,
        eps_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not (eps_scale >= 0 and math.isfinite(eps_scale)):
            raise ValueError(f"eps_scale must be a finite number >= 0, got {eps_scale}")
        self.channels = channels
        self.index = index
        self.offset = offset
        self.activation = activation
        self.eps = eps
        self.eps_scale = float(eps_scale)
        self.affine = gamma is not None
        # Non-affine layers get identity parameters so the op always has five inputs.
        self.register_buffer("gamma", gamma.detach().clone() if gamma is not None else torch.ones(channels))
        self.register_buffer("beta", beta.detach().clone() if beta is not None else torch.zeros(channels))
        # A plain attribute (not a submodule) so the context is shared, not copied.
        object.__setattr__(self, "context", context)

    def extra_repr(self) -> str:
        scale = f", eps_scale={self.eps_scale:g}" if self.eps_scale != 1.0 else ""
        return (
            f"{self.channels}, index={self.index}, offset={self.offset}, activation={self.activation}{scale}"
        )

    def forward(self, x: Tensor) -> Tensor:
        ctx: NormContext = self.context  # type: ignore[assignment]
        if ctx.mode == "collect":
            return self._collect(x, ctx)
        return self._apply_neighbourhoods(x, ctx)

    def _collect(self, x: Tensor, ctx: NormContext) -> Tensor:
        params = ctx.collect_params
        if params is None:
            raise RuntimeError("DenseNorm2d in collect mode needs NormContext.collect_params")
        ddof, eps, floor = params[0], params[1], params[2]
        if self.eps_scale != 1.0:  # a BatchNorm2d's own eps (an InstanceNorm2d's graph is unchanged)
            eps = eps * self.eps_scale
        h, w = x.shape[-2], x.shape[-1]
        # Statistics are float32 whatever the activation type (fp16 would lose the variance).
        out_dtype = x.dtype
        x = x.float()
        mean = x.mean(dim=(2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).sum(dim=(2, 3), keepdim=True) / (h * w - ddof)
        std = torch.maximum(torch.sqrt(var + eps), floor)
        y = centred / std
        if self.affine:  # identity parameters would cost two full passes over the map
            y = y * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)
        if self.activation == "relu":
            y = torch.relu(y)
        ctx.means.append(mean.flatten(1))
        ctx.stds.append(std.flatten(1))
        return y.to(out_dtype)

    def _apply_neighbourhoods(self, x: Tensor, ctx: NormContext) -> Tensor:
        if ctx.nbr_mean is None or ctx.nbr_std is None:
            raise RuntimeError("DenseNorm2d in apply mode needs NormContext.nbr_mean and nbr_std")
        sl = slice(self.offset, self.offset + self.channels)
        return dense_norm(
            x, ctx.nbr_mean[:, sl], ctx.nbr_std[:, sl], self.gamma, self.beta, self.eps, self.activation
        )
