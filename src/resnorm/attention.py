"""Scaled dot-product attention and multi-head attention, written out in full.

Conventions (the same as ``torch.nn.functional.scaled_dot_product_attention``):

* tensors are batch-first: queries ``(B, H, Tq, d_k)``, keys ``(B, H, Tk, d_k)``;
* an attention mask is **boolean, True = may attend**, broadcastable to ``(B, H, Tq, Tk)``;
* a ``key_padding_mask`` (as in ``torch.nn.MultiheadAttention``) is ``(B, Tk)``, **True = PAD**.

Beware: ``torch.nn.MultiheadAttention``'s boolean ``attn_mask`` means the opposite
(True = *not* allowed). The functional SDPA and this module say True = allowed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("sdpa", "math")


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size, name: str = "mask") -> None:
    """Raise a clear error unless ``mask`` is boolean and broadcastable to ``scores_shape``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a boolean torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be boolean (True = may attend), got dtype {mask.dtype}")
    expected = "broadcastable to (B, H, Tq, Tk) = " + str(list(scores_shape))
    if mask.dim() < 2 or mask.dim() > len(scores_shape):
        raise ValueError(f"{name} of shape {list(mask.shape)} is not {expected}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {list(mask.shape)} is not {expected}") from None
    if tuple(broadcast) != tuple(scores_shape):
        raise ValueError(f"{name} of shape {list(mask.shape)} is not {expected}")


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p: float = 0.0):
    """``softmax(q kᵀ / sqrt(d_k) + mask) v``, step by step; returns ``(out, weights)``.

    ``q``: ``(..., Tq, d_k)``, ``k``: ``(..., Tk, d_k)``, ``v``: ``(..., Tk, d_v)``.
    ``mask``: boolean, True = may attend, broadcastable to ``(..., Tq, Tk)``.

    The division by ``sqrt(d_k)`` keeps the logits at unit variance when the entries of
    q and k have unit variance: a dot product of d_k such terms has variance d_k.
    A query row whose keys are all masked gets all-zero weights (and output 0), as in
    PyTorch's SDPA since 2.5, rather than the NaN that ``softmax`` of all ``-inf`` gives.
    Dropout, if any, is applied to the weights (so rows no longer sum to 1 in training).
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k, v need at least 2 dims (T, d); got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dim d_k; got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length Tk; got {k.shape[-2]} and {v.shape[-2]}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)
    if mask is not None:
        _check_mask(mask, scores.shape)
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # softmax of an all -inf row is NaN; such a query attends to nothing.
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def causal_mask(T: int, device=None) -> torch.Tensor:
    """``(T, T)`` boolean mask, True on and below the diagonal: position t may attend to 0..t."""
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(lengths_or_pad_bool, max_len: int | None = None, device=None) -> torch.Tensor:
    """A "may attend" mask of shape ``(B, 1, 1, T)`` that hides padded keys.

    Accepts either the sequence lengths (a 1-D integer tensor or list; ``max_len`` defaults
    to the longest) or a ``(B, T)`` boolean tensor with True = PAD (PyTorch's
    ``key_padding_mask``). The result broadcasts against scores ``(B, H, Tq, T)``.
    """
    x = lengths_or_pad_bool
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, device=device)
    if x.dtype == torch.bool:
        if x.dim() != 2:
            raise ValueError(f"a padding bool tensor must be (B, T) with True = PAD, got shape {list(x.shape)}")
        allowed = ~x
    else:
        if x.dim() != 1 or x.is_floating_point():
            raise ValueError(f"lengths must be a 1-D integer tensor, got shape {list(x.shape)} dtype {x.dtype}")
        if (x < 0).any():
            raise ValueError(f"lengths must be non-negative, got {x.tolist()}")
        T = int(x.max()) if max_len is None else int(max_len)
        if (x > T).any():
            raise ValueError(f"a length exceeds max_len={T}: {x.tolist()}")
        allowed = torch.arange(T, device=x.device)[None, :] < x[:, None]
    if device is not None:
        allowed = allowed.to(device)
    return allowed[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (batch-first).

    ``forward(query, key, value, attn_mask=None, key_padding_mask=None, is_causal=False)``
    returns the output ``(B, Tq, d_model)``. ``attn_mask`` is boolean, True = may attend,
    broadcastable to ``(B, H, Tq, Tk)``; ``key_padding_mask`` is ``(B, Tk)``, True = PAD.

    ``backend="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (fused
    kernels where available); ``backend="math"`` calls the didactic
    :func:`scaled_dot_product_attention`. Set ``store_attention = True`` to keep the last
    weights ``(B, H, Tq, Tk)`` in ``last_attention`` (computed with the math path).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, backend: str = "sdpa"):
        super().__init__()
        if d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive, got d_model={d_model}, n_heads={n_heads}")
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}: each head gets d_model / n_heads features"
            )
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout, self.backend = dropout, backend
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def _check_inputs(self, query, key, value, key_padding_mask):
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must be (B, T, d_model={self.d_model}), got shape {list(t.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"query/key/value batch and key/value lengths disagree: "
                f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}"
            )
        if key_padding_mask is not None:
            B, Tk = key.shape[:2]
            if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, Tk):
                raise ValueError(
                    f"key_padding_mask must be boolean (B, Tk) = {[B, Tk]} with True = PAD, "
                    f"got shape {list(key_padding_mask.shape)} dtype {key_padding_mask.dtype}"
                )

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, is_causal: bool = False):
        self._check_inputs(query, key, value, key_padding_mask)
        B, Tq, _ = query.shape
        Tk = key.shape[1]
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        return self._attend(q, k, v, B, Tq, Tk, attn_mask, key_padding_mask, is_causal, query.device)

    def _attend(self, q, k, v, B, Tq, Tk, attn_mask, key_padding_mask, is_causal, device):
        """Heads ``(B, H, T, d_head)`` -> attention with the merged masks -> output projection."""
        scores_shape = torch.Size((B, self.n_heads, Tq, Tk))
        if attn_mask is not None:
            _check_mask(attn_mask, scores_shape, "attn_mask")

        # Merge the three kinds of mask into one "may attend" mask, unless causal alone
        # can go to SDPA as is_causal=True (which lets it pick a fused causal kernel).
        use_math = self.backend == "math" or self.store_attention
        mask = attn_mask
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, None, None, :]
            mask = keep if mask is None else mask & keep
        sdpa_causal = is_causal and mask is None and not use_math
        if is_causal and not sdpa_causal:
            causal = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril()
            mask = causal if mask is None else mask & causal

        dropout_p = self.dropout if self.training else 0.0
        if use_math:
            out, weights = scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=dropout_p)
            if self.store_attention:
                self.last_attention = weights.detach()
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=sdpa_causal)
        out = out.transpose(1, 2).reshape(B, Tq, self.d_model)  # concatenate the heads
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, dropout={self.dropout}, backend={self.backend!r}"


class PackedMultiHeadAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` with its input projections packed into fewer matrix products.

    Self-attention projects q, k and v with one ``(3d, d)`` matrix product (``qkv_proj``);
    cross-attention projects q from the decoder and k, v from the memory with one ``(2d, d)``
    product (``kv_proj``). This is how ``torch.nn.MultiheadAttention`` stores its weights
    (``in_proj_weight``): one large product keeps the GPU busier than three small ones, and
    launches one kernel instead of three. The function is the same, and so is the state dict:
    ``state_dict()`` writes ``q_proj``, ``k_proj``, ``v_proj`` as the teaching module does, and
    ``load_state_dict`` accepts them, so checkpoints move freely between the two.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, backend: str = "sdpa",
                 self_attention: bool = True):
        super().__init__(d_model, n_heads, dropout, bias, backend)
        del self.q_proj, self.k_proj, self.v_proj
        self.self_attention = self_attention
        if self_attention:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self._packed = ("qkv_proj", ("q_proj", "k_proj", "v_proj")) if self_attention else ("kv_proj", ("k_proj", "v_proj"))
        self._register_state_dict_hook(PackedMultiHeadAttention._unpack_state)
        self._register_load_state_dict_pre_hook(self._pack_state)

    @staticmethod
    def _unpack_state(module, state_dict, prefix, local_metadata):
        packed, names = module._packed
        for kind in ("weight", "bias"):
            key = f"{prefix}{packed}.{kind}"
            if key in state_dict:
                for name, part in zip(names, state_dict.pop(key).chunk(len(names), dim=0)):
                    state_dict[f"{prefix}{name}.{kind}"] = part.clone()
        return state_dict

    def _pack_state(self, state_dict, prefix, *args, **kwargs):
        packed, names = self._packed
        for kind in ("weight", "bias"):
            keys = [f"{prefix}{name}.{kind}" for name in names]
            if all(k in state_dict for k in keys):
                state_dict[f"{prefix}{packed}.{kind}"] = torch.cat([state_dict.pop(k) for k in keys], dim=0)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, is_causal: bool = False):
        if self.self_attention and not (query is key and key is value):
            raise ValueError("a self-attention module (self_attention=True) needs query, key and value to be "
                             "the same tensor; use self_attention=False for cross-attention")
        self._check_inputs(query, key, value, key_padding_mask)
        B, Tq, _ = query.shape
        Tk = key.shape[1]
        if self.self_attention:
            q, k, v = self.qkv_proj(query).chunk(3, dim=-1)
        else:
            if key is not value:
                raise ValueError("cross-attention packs k and v into one product: key and value must be the same tensor")
            q = self.q_proj(query)
            k, v = self.kv_proj(key).chunk(2, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        return self._attend(q, k, v, B, Tq, Tk, attn_mask, key_padding_mask, is_causal, query.device)
