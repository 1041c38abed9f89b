"""Normalization layers written out in full: LayerNorm and RMSNorm.

Both normalize over the trailing ``normalized_shape`` dimensions of each example
(each token, for a sequence model), never over the batch.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be a positive int or a tuple of positive ints, got {normalized_shape!r}")
    return shape


def _check_input(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(
            f"{name} expects input whose last {len(shape)} dimension(s) are {list(shape)}, "
            f"got input of shape {list(x.shape)}"
        )


def layer_norm(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the trailing ``normalized_shape`` dims.

    The variance is the biased one (divide by n, not n - 1), as in Ba et al. (2016) and
    ``torch.nn.LayerNorm``. It is computed in two passes (mean first, then the mean of
    squared deviations), which keeps its precision when the mean is large.
    """
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "layer_norm")
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: torch.Tensor, normalized_shape, weight=None, eps: float | None = None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` (Zhang & Sennrich, 2019): no centring, no bias.

    ``eps=None`` follows ``torch.nn.RMSNorm``: the machine epsilon of the input's dtype.
    """
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "rms_norm")
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    dims = tuple(range(-len(shape), 0))
    y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y


class LayerNorm(nn.Module):
    """Layer normalization with a learnable gain (initialised to 1) and bias (initialised to 0).

    Same constructor and state-dict keys as ``torch.nn.LayerNorm``, so weights copy across.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class RMSNorm(nn.Module):
    """Root-mean-square normalization with a learnable gain (initialised to 1); keys match ``torch.nn.RMSNorm``."""

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be positive or None, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
