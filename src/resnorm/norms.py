"""Normalization layers written out in full: LayerNorm, RMSNorm, and Dynamic Tanh.

LayerNorm and RMSNorm normalize over the trailing ``normalized_shape`` dimensions of each
example (each token, for a sequence model), never over the batch. DyT normalizes nothing:
it is the element-wise replacement for LayerNorm proposed by Zhu et al. (2025).

Half-precision inputs (float16, bfloat16) are computed in float32 and the result is cast
back, as PyTorch's own kernels do: the statistics of a token are a sum over hundreds of
features, which float16 cannot hold accurately, and ``eps=1e-5`` is below bfloat16's
resolution near 1.
"""

from __future__ import annotations

import numbers
import operator

import torch
from torch import nn

__all__ = ["layer_norm", "layer_norm_manual", "rms_norm", "LayerNorm", "LayerNormFunction", "RMSNorm", "DyT",
           "FusedLayerNorm", "FusedRMSNorm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    if isinstance(normalized_shape, str):
        normalized_shape = [normalized_shape]  # so that "8" fails below instead of becoming (8,)
    try:
        shape = tuple(operator.index(s) for s in normalized_shape)
    except (TypeError, ValueError):
        raise ValueError(f"normalized_shape must be a positive int or a tuple of positive ints, got {normalized_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be a positive int or a tuple of positive ints, got {normalized_shape!r}")
    return shape


def _check_input(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(
            f"{name} expects input whose last {len(shape)} dimension(s) are {list(shape)}, "
            f"got input of shape {list(x.shape)}"
        )


def _check_param(p, shape: tuple[int, ...], what: str, name: str) -> None:
    if p is not None and tuple(p.shape) != shape:
        raise ValueError(f"{name}: {what} must have shape {list(shape)} (the normalized_shape), got {list(p.shape)}")


def _opmath(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def layer_norm(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the trailing ``normalized_shape`` dims.

    The variance is the biased one (divide by n, not n - 1), as in Ba et al. (2016) and
    ``torch.nn.LayerNorm``. It is computed in two passes (mean first, then the mean of
    squared deviations), which keeps its precision when the mean is large.
    """
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "layer_norm")
    _check_param(weight, shape, "weight", "layer_norm")
    _check_param(bias, shape, "bias", "layer_norm")
    dims = tuple(range(-len(shape), 0))
    xf = _opmath(x)
    mean = xf.mean(dim=dims, keepdim=True)
    var = (xf - mean).pow(2).mean(dim=dims, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm with the backward pass derived by hand instead of recorded by autograd.

    With ``xhat = (x - mean) * rstd`` and ``g = dL/dy * weight``, over the ``n`` normalized
    features of each example:

        dL/dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dL/dweight = sum over examples of dL/dy * xhat
        dL/dbias   = sum over examples of dL/dy

    Only ``xhat``, ``rstd`` and ``weight`` are saved for the backward pass.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps):
        dims = tuple(range(-len(normalized_shape), 0))
        mean = x.mean(dim=dims, keepdim=True)
        rstd = torch.rsqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
        xhat = (x - mean) * rstd
        y = xhat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.dims = dims
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        xhat, rstd, weight = ctx.saved_tensors
        dims = ctx.dims
        batch_dims = tuple(range(grad_y.dim() - len(dims)))  # every dim that is not normalized
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            g = grad_y * weight if weight is not None else grad_y
            # The two means are the projections of g on the directions that the
            # normalization removes: the constant vector (centering) and xhat (scaling).
            grad_x = rstd * (g - g.mean(dim=dims, keepdim=True) - xhat * (g * xhat).mean(dim=dims, keepdim=True))
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad_y * xhat).sum(dim=batch_dims) if batch_dims else grad_y * xhat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(dim=batch_dims) if batch_dims else grad_y
        return grad_x, grad_w, grad_b, None, None


def layer_norm_manual(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """:func:`layer_norm` with the hand-derived backward pass of :class:`LayerNormFunction`."""
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "layer_norm_manual")
    _check_param(weight, shape, "weight", "layer_norm_manual")
    _check_param(bias, shape, "bias", "layer_norm_manual")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if x.dtype in _LOW_PRECISION:
        y = LayerNormFunction.apply(x.float(), None if weight is None else weight.float(),
                                    None if bias is None else bias.float(), shape, eps)
        return y.to(x.dtype)
    return LayerNormFunction.apply(x, weight, bias, shape, eps)


def rms_norm(x: torch.Tensor, normalized_shape, weight=None, eps: float | None = None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` (Zhang & Sennrich, 2019): no centring, no bias.

    ``eps=None`` follows ``torch.nn.RMSNorm``: the machine epsilon of the computation type
    (float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs).
    """
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "rms_norm")
    _check_param(weight, shape, "weight", "rms_norm")
    xf = _opmath(x)
    if eps is None:
        eps = torch.finfo(xf.dtype).eps
    dims = tuple(range(-len(shape), 0))
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


def _add_gain_and_bias(module: nn.Module, elementwise_affine: bool, bias: bool) -> None:
    """Per-feature gain (init 1) and bias (init 0) over ``module.normalized_shape``, named as in torch."""
    if elementwise_affine:
        module.weight = nn.Parameter(torch.ones(module.normalized_shape))
        module.bias = nn.Parameter(torch.zeros(module.normalized_shape)) if bias else None
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


class LayerNorm(nn.Module):
    """Layer normalization with a learnable gain (initialised to 1) and bias (initialised to 0).

    Same constructor and state-dict keys as ``torch.nn.LayerNorm``, so weights copy across.
    Gain 1 and bias 0 make the layer start as a pure standardization; a random gain (as in
    some tutorials) would rescale each feature arbitrarily before training has begun.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _add_gain_and_bias(self, elementwise_affine, bias)

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


class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al., 2025): ``weight * tanh(alpha * x) + bias``, a drop-in for LayerNorm.

    No statistics are computed: ``alpha`` is one learnable scalar shared by all features
    (initialised to ``alpha_init``, 0.5 in the paper), ``weight`` and ``bias`` are per-feature
    as in LayerNorm (initialised to 1 and 0). The constructor takes ``normalized_shape`` first
    so that ``DyT(d_model)`` can stand wherever ``LayerNorm(d_model)`` stands; unlike
    LayerNorm, the output is *not* invariant to rescaling the input.
    """

    def __init__(self, normalized_shape, alpha_init: float = 0.5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        alpha_init = float(alpha_init)
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be positive, got {alpha_init}")
        self.alpha_init = alpha_init
        self.elementwise_affine = elementwise_affine
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        _add_gain_and_bias(self, elementwise_affine, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.normalized_shape, "DyT")
        y = torch.tanh(self.alpha * x)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, alpha_init={self.alpha_init}, elementwise_affine={self.elementwise_affine}"


class FusedLayerNorm(LayerNorm):
    """:class:`LayerNorm` computed by PyTorch's fused kernel (``F.layer_norm``): one kernel per call.

    Same parameters, same state dict, same function (to float rounding) as the from-scratch
    :class:`LayerNorm`, which spends about ten elementwise and reduction kernels on a forward pass.
    The fast configuration of :class:`resnorm.transformer.TransformerConfig` (``fast=True``) uses it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.normalized_shape, "FusedLayerNorm")
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class FusedRMSNorm(RMSNorm):
    """:class:`RMSNorm` computed by ``F.rms_norm`` (same parameters and function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.normalized_shape, "FusedRMSNorm")
        return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)
