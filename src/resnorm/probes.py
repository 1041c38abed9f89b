"""Measurements on a model: per-layer gradient norms, signal (activation) norms, saved outputs.

Every probe takes a model and the layers to look at, given either as modules or as the
dotted names of ``model.named_modules()`` (``"blocks.3.branch.fc1"``), and returns one value
per layer, in the order given. The probes only read: they remove their hooks on exit, leave
``requires_grad`` as it was, and restore the model's train/eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

REDUCTIONS = ("rms", "norm", "mean_norm")

LayerSpec = nn.Module | str


def resolve_modules(model: nn.Module, layers: Iterable[LayerSpec]) -> list[nn.Module]:
    """Turn a list of modules and/or dotted names into modules of ``model`` (an error names the bad one)."""
    modules = []
    known = None
    for layer in layers:
        if isinstance(layer, str):
            try:
                modules.append(model.get_submodule(layer))
            except AttributeError as err:
                raise ValueError(f"model has no submodule named {layer!r}") from err
        elif isinstance(layer, nn.Module):
            if known is None:
                known = {id(m) for m in model.modules()}
            if id(layer) not in known:
                raise ValueError(f"{type(layer).__name__} module is not a submodule of the model")
            modules.append(layer)
        else:
            raise ValueError(f"layers must be modules or names, got {type(layer).__name__}")
    if not modules:
        raise ValueError("layers is empty: give at least one module or name")
    return modules


def modules_of_type(model: nn.Module, kind: type | tuple[type, ...]) -> list[str]:
    """Dotted names of all submodules of a type, in registration order (``modules_of_type(m, nn.Linear)``)."""
    return [name for name, m in model.named_modules() if isinstance(m, kind) and name]


def reduce_tensor(t: torch.Tensor, reduction: str = "rms") -> float:
    """One number for a tensor: ``"rms"`` sqrt(mean(t^2)), ``"norm"`` the Frobenius norm,
    ``"mean_norm"`` the mean over the first (batch) dimension of each example's L2 norm."""
    t = t.detach().double()
    if reduction == "rms":
        return t.pow(2).mean().sqrt().item()
    if reduction == "norm":
        return t.norm().item()
    if reduction == "mean_norm":
        return t.reshape(t.shape[0], -1).norm(dim=1).mean().item()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@contextlib.contextmanager
def _mode(model: nn.Module, train: bool | None):
    was_training = model.training
    if train is not None:
        model.train(train)
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def record_outputs(model: nn.Module, layers: Iterable[LayerSpec], detach: bool = True):
    """Context manager that saves each layer's output during the forward passes inside it.

    Yields a list with one list per layer; every forward pass appends that layer's output
    (detached unless ``detach=False``). A layer called twice in one pass records twice.

        with record_outputs(model, ["blocks.0", "blocks.1"]) as outs:
            model(x)
        outs[1][0]  # output of blocks.1 in the first pass
    """
    modules = resolve_modules(model, layers)
    saved: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for i, module in enumerate(modules):
        def hook(_module, _inputs, output, i=i):
            if isinstance(output, tuple):  # e.g. nn.MultiheadAttention returns (output, weights)
                output = output[0]
            saved[i].append(output.detach() if detach else output)
        handles.append(module.register_forward_hook(hook))
    try:
        yield saved
    finally:
        for h in handles:
            h.remove()


def activation_norms(model: nn.Module, layers: Iterable[LayerSpec], *inputs, reduction: str = "rms",
                     train: bool | None = None, **kwargs) -> list[float]:
    """Run ``model(*inputs, **kwargs)`` without gradients and return each layer's output size.

    One value per layer, in the order given: the reduction (default RMS) of the layer's output
    in that forward pass. ``train`` sets the mode for the pass (``None`` keeps the current one;
    batch norm normalizes with batch statistics only in train mode).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    with _mode(model, train), torch.no_grad(), record_outputs(model, layers) as outs:
        model(*inputs, **kwargs)
    missing = [i for i, o in enumerate(outs) if not o]
    if missing:
        raise ValueError(f"layers at positions {missing} were not called in the forward pass")
    return [reduce_tensor(o[-1], reduction) for o in outs]


def weight_grad_norms(model: nn.Module, layers: Iterable[LayerSpec], param: str = "weight") -> list[float]:
    """Frobenius norm of ``layer.<param>.grad`` for each layer, read after a backward pass you ran."""
    values = []
    for module in resolve_modules(model, layers):
        p = getattr(module, param, None)
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"{type(module).__name__} has no parameter {param!r}")
        if p.grad is None:
            raise ValueError(f"{type(module).__name__}.{param} has no gradient: run a backward pass first")
        values.append(p.grad.detach().double().norm().item())
    return values


def grad_norms(model: nn.Module, layers: Iterable[LayerSpec], loss_fn: Callable[..., torch.Tensor], *inputs,
               param: str = "weight", train: bool | None = None) -> list[float]:
    """One forward and backward pass; the gradient norm of each layer's ``param``, one value per layer.

    ``loss_fn(model(*inputs))`` must return a scalar. The model's existing ``.grad`` fields are
    left as they were: the probe computes its gradients with ``torch.autograd.grad``.
    """
    modules = resolve_modules(model, layers)
    params = []
    for module in modules:
        p = getattr(module, param, None)
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(f"{type(module).__name__} has no trainable parameter {param!r}")
        params.append(p)
    with _mode(model, train):
        loss = loss_fn(model(*inputs))
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {list(loss.shape)}")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [0.0 if g is None else g.detach().double().norm().item() for g in grads]


def output_grad_norms(model: nn.Module, layers: Iterable[LayerSpec], loss_fn: Callable[..., torch.Tensor], *inputs,
                      reduction: str = "rms", train: bool | None = None) -> list[float]:
    """Size of ``d loss / d (layer output)`` for each layer: the backward signal reaching it.

    Unlike :func:`grad_norms` this does not depend on the layer's own weights, so it is the
    quantity to compare between layers of different kinds (blocks, norms, activations).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    with _mode(model, train), record_outputs(model, layers, detach=False) as outs:
        loss = loss_fn(model(*inputs))
    missing = [i for i, o in enumerate(outs) if not o]
    if missing:
        raise ValueError(f"layers at positions {missing} were not called in the forward pass")
    tensors = [o[-1] for o in outs]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [0.0 if g is None else reduce_tensor(g, reduction) for g in grads]


def input_grad_norm(model: nn.Module, x: torch.Tensor, loss_fn: Callable[..., torch.Tensor] | None = None,
                    reduction: str = "rms") -> float:
    """Size of ``d loss / d x`` at the model's input (default loss: the sum of the outputs)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    loss = out.sum() if loss_fn is None else loss_fn(out)
    (g,) = torch.autograd.grad(loss, x)
    return reduce_tensor(g, reduction)


def stack_profile(values: Sequence[float]) -> dict[str, float]:
    """Summary of a per-layer profile: first, last, and ``first/last`` (how much it shrinks toward the input)."""
    if not values:
        raise ValueError("values is empty")
    first, last = float(values[0]), float(values[-1])
    return {"first": first, "last": last, "first_over_last": first / last if last else float("inf")}


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine similarity between the feature vectors of different examples, in float64.

    ``features``: ``(N, ...)``, one example per row (trailing dimensions are flattened), N >= 2.
    Returns the mean of ``cos(f_i, f_j)`` over the ``N (N - 1)`` ordered pairs ``i != j``.
    About 0 when the examples point in unrelated directions; close to 1 when a network maps
    every input to nearly the same direction, so that what follows can barely tell them apart.
    Computed from the sum of the unit vectors, ``(|sum_i u_i|^2 - sum_i |u_i|^2) / (N (N - 1))``,
    in O(N d) memory instead of the N x N matrix of cosines.
    """
    if features.dim() < 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, ...) with N >= 2 examples, got shape {list(features.shape)}")
    flat = features.detach().double().reshape(features.shape[0], -1)
    norms = flat.norm(dim=1)
    zero = int((norms == 0).sum())
    if zero:
        raise ValueError(f"{zero} of {flat.shape[0]} feature vectors are zero: their cosine is undefined")
    unit = flat / norms[:, None]
    total = unit.sum(dim=0)
    n = flat.shape[0]
    return float((total @ total - unit.pow(2).sum()) / (n * (n - 1)))


# ----------------------------------------------------------------------------- rank collapse


RANK_NORMS = ("fro", "l1_linf")


def _masked_rows(x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    if x.dim() == 2:
        x = x[None]
        mask = None if mask is None else mask[None]
    if x.dim() != 3:
        raise ValueError(f"token representations must be (T, d) or (B, T, d), got shape {list(x.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must have shape {list(x.shape[:2])} (True = padding), got {list(mask.shape)}")
    rows = []
    for b in range(x.shape[0]):
        keep = slice(None) if mask is None else ~mask[b]
        rows.append(x[b][keep])
    return rows


def rank_one_residual(x: torch.Tensor, mask: torch.Tensor | None = None, norm: str = "fro") -> float:
    """How far token representations are from rank one: ``||X - 1 x^T|| / ||X||``, mean over the batch.

    Dong, Cordonnier & Loukas (2021) measure rank collapse with the residual
    ``res(X) = X - 1 x^T``, ``x = argmin_x ||X - 1 x^T||``: the part of the (T, d) matrix of
    token vectors that is not one vector repeated for every token. 0 means every token has
    the same representation (collapsed); for generic random tokens the ratio is close to
    ``sqrt(1 - 1/T)``. We take ``x`` = the mean token, which is the exact minimizer for the
    Frobenius norm (``norm="fro"``); for the paper's composite norm ``sqrt(||R||_1 ||R||_inf)``
    (``norm="l1_linf"``) the mean gives an upper bound on the minimum.

    ``x``: (T, d) or (B, T, d); ``mask``: (B, T), True at padding, whose rows are left out.
    """
    if norm not in RANK_NORMS:
        raise ValueError(f"norm must be one of {RANK_NORMS}, got {norm!r}")

    def size(m: torch.Tensor) -> torch.Tensor:
        if norm == "fro":
            return m.norm()
        l1 = m.abs().sum(dim=0).max()  # max column sum
        linf = m.abs().sum(dim=1).max()  # max row sum
        return (l1 * linf).sqrt()

    values = []
    for rows in _masked_rows(x.detach().double(), mask):
        if rows.shape[0] < 2:
            continue  # one token is trivially rank one
        total = size(rows)
        if total == 0:
            values.append(0.0)
            continue
        values.append(float(size(rows - rows.mean(dim=0, keepdim=True)) / total))
    if not values:
        raise ValueError("rank_one_residual needs at least one sequence with two or more unmasked tokens")
    return sum(values) / len(values)


def token_rms(x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Root mean square of the entries of the unmasked token vectors (the residual stream's size)."""
    rows = _masked_rows(x.detach().double(), mask)
    total = sum(float(r.pow(2).sum()) for r in rows)
    count = sum(r.numel() for r in rows)
    if count == 0:
        raise ValueError("token_rms: every token is masked")
    return (total / count) ** 0.5
