"""The ``dnrt::dense_norm`` torch custom op: DenseNorm for PyTorch.

It is a ``torch.library.custom_op`` so that ONNX export emits it as one node (domain
``dnrt``, :mod:`dnrt.ops`) instead of tracing through its arithmetic. On CUDA tensors it
dispatches to the fused kernel of ``libdnrt_kernels.so`` when that is built
(:mod:`dnrt.kernels`), else it runs the eager separable form, as on the CPU. The layer that
calls it, ``DenseNorm2d``, is :mod:`dnrt.models.norm`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_weights(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[n, 3]`` weights of the previous/own/next tile along one axis (docs/semantics.md 4.4)."""
    p = torch.arange(n, device=device, dtype=dtype) + 0.5
    d = (p - n / 2) / n
    before = torch.clamp(-d, min=0)
    after = torch.clamp(d, min=0)
    return torch.stack([before, 1 - before - after, after], dim=1)


def dense_norm_reference(
    x: Tensor, mean: Tensor, std: Tensor, gamma: Tensor, beta: Tensor, eps: float, activation: str
) -> Tensor:
    """Eager implementation of DenseNorm: separable interpolation of mean and 1/(std+eps)."""
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"DenseNorm needs even map sizes, got {h}x{w}")
    wy = axis_weights(h, x.device)
    wx = axis_weights(w, x.device)
    # [h,3] @ [N,C,3,3] @ [3,w] -> [N,C,h,w]; the same contraction the ONNX body uses.
    mu = wy @ mean.float() @ wx.T
    rinv = wy @ (1.0 / (std.float() + eps)) @ wx.T
    y = (x.float() - mu) * rinv * gamma.view(1, c, 1, 1) + beta.view(1, c, 1, 1)
    if activation == "relu":
        y = torch.relu(y)
    return y.to(x.dtype)


_KERNELS: list = []  # [CudaKernels | None], resolved on the first CUDA call


def _cuda_kernels():  # -> CudaKernels | None
    """The fused CUDA kernel library when it is built (``dnrt build-plugins``), else None."""
    if not _KERNELS:
        try:
            from dnrt.kernels import CudaKernels, find_kernels_library

            path = find_kernels_library()
            _KERNELS.append(CudaKernels(path) if path is not None else None)
        except Exception:  # a stale or broken build falls back to the eager math
            _KERNELS.append(None)
    return _KERNELS[0]


def _dense_norm_cuda(
    kernels, x: Tensor, mean: Tensor, std: Tensor, gamma: Tensor, beta: Tensor, eps: float, activation: str
) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n, c, h, w = x.shape
    status = kernels.dense_norm(
        str(x.dtype).removeprefix("torch."),
        x.data_ptr(),
        mean.float().contiguous().data_ptr(),
        std.float().contiguous().data_ptr(),
        gamma.float().contiguous().data_ptr(),
        beta.float().contiguous().data_ptr(),
        y.data_ptr(),
        n,
        c,
        h,
        w,
        eps=eps,
        relu=activation == "relu",
        stream=torch.cuda.current_stream(x.device).cuda_stream,
    )
    kernels.check(status, "DenseNorm CUDA kernel")
    return y


@torch.library.custom_op("dnrt::dense_norm", mutates_args=())
def dense_norm(
    x: Tensor, mean: Tensor, std: Tensor, gamma: Tensor, beta: Tensor, eps: float, activation: str
) -> Tensor:
    """DenseNorm: ``x [N,C,H,W]``, ``mean/std [N,C,3,3]``, ``gamma/beta [C]`` -> ``[N,C,H,W]``.

    On CUDA tensors it runs dnrt's fused kernel (one read of X, one write of Y) when the
    kernels library is built; otherwise, and on the CPU, the eager separable form.
    """
    if x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        kernels = _cuda_kernels()
        if kernels is not None:
            return _dense_norm_cuda(kernels, x, mean, std, gamma, beta, eps, activation)
    return dense_norm_reference(x, mean, std, gamma, beta, eps, activation)


@dense_norm.register_fake
def _dense_norm_fake(
    x: Tensor, mean: Tensor, std: Tensor, gamma: Tensor, beta: Tensor, eps: float, activation: str
) -> Tensor:
    return torch.empty_like(x)
