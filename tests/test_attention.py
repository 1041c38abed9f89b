"""Attention against PyTorch: the didactic function vs F.scaled_dot_product_attention,
our MultiHeadAttention vs torch.nn.MultiheadAttention with copied weights, and the masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnorm.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention

torch.set_num_threads(1)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_didactic_matches_torch_sdpa_without_mask():
    q, k, v = _rand(2, 3, 5, 8, seed=1), _rand(2, 3, 6, 8, seed=2), _rand(2, 3, 6, 4, seed=3)
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-12)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5, dtype=q.dtype))
    # the explicit formula, once more by hand
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask_shape", [(5, 6), (2, 1, 5, 6), (2, 3, 5, 6), (2, 1, 1, 6)])
def test_didactic_matches_torch_sdpa_with_boolean_mask(mask_shape):
    q, k, v = _rand(2, 3, 5, 8, seed=1), _rand(2, 3, 6, 8, seed=2), _rand(2, 3, 6, 8, seed=3)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(4)) > 0.4
    mask[..., 0] = True  # every query keeps at least one key
    out, w = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=0, atol=1e-12)
    assert (w.masked_select(~mask.expand_as(w)) == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_fully_masked_row_gives_zeros_like_torch():
    q, k, v = _rand(1, 1, 3, 4, seed=1), _rand(1, 1, 3, 4, seed=2), _rand(1, 1, 3, 4, seed=3)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[..., 0, :] == 0).all() and (w[..., 0, :] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=0, atol=1e-12)


def test_causal_mask_and_is_causal_agree():
    q, k, v = _rand(2, 2, 5, 4, seed=1), _rand(2, 2, 5, 4, seed=2), _rand(2, 2, 5, 4, seed=3)
    m = causal_mask(5)
    assert m.dtype == torch.bool and m.shape == (5, 5)
    assert m[3, 3] and m[3, 0] and not m[3, 4]
    out, w = scaled_dot_product_attention(q, k, v, mask=m)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-12)
    assert (w.triu(1) == 0).all()


def test_padding_mask_from_lengths_and_from_pad_bool():
    from_lengths = padding_mask(torch.tensor([3, 1]), max_len=4)
    pad = torch.tensor([[False, False, False, True], [False, True, True, True]])
    from_pad = padding_mask(pad)
    assert from_lengths.shape == (2, 1, 1, 4)
    assert torch.equal(from_lengths, from_pad)
    assert torch.equal(from_lengths[:, 0, 0], ~pad)
    with pytest.raises(ValueError, match="max_len"):
        padding_mask([5], max_len=4)


@pytest.mark.parametrize("bad_shape", [(5, 5), (2, 3, 6, 5), (4, 1, 5, 6), (6,)])
def test_mask_of_wrong_shape_is_a_clear_error(bad_shape):
    q, k, v = _rand(2, 3, 5, 8), _rand(2, 3, 6, 8), _rand(2, 3, 6, 8)
    with pytest.raises(ValueError, match="broadcastable to"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(bad_shape, dtype=torch.bool))


def test_non_boolean_mask_is_a_clear_error():
    q = _rand(1, 1, 2, 4)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2))


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(8, 2, backend="flash")


def _mha_inputs(B=2, Tq=5, Tk=7, d=16, seed=0):
    x = _rand(B, Tq, d, seed=seed, dtype=torch.float32)
    mem = _rand(B, Tk, d, seed=seed + 1, dtype=torch.float32)
    kpm = torch.zeros(B, Tk, dtype=torch.bool)
    kpm[0, 5:] = True
    return x, mem, kpm


def test_math_and_sdpa_backends_agree():
    x, mem, kpm = _mha_inputs()
    torch.manual_seed(0)
    a = MultiHeadAttention(16, 4, backend="math")
    b = MultiHeadAttention(16, 4, backend="sdpa")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x, mem, mem, key_padding_mask=kpm), b(x, mem, mem, key_padding_mask=kpm), rtol=0, atol=1e-6)
    kpm_self = torch.zeros(2, 5, dtype=torch.bool)
    kpm_self[1, 4] = True
    for kw in (dict(is_causal=True), dict(is_causal=True, key_padding_mask=kpm_self), dict(attn_mask=causal_mask(5))):
        torch.testing.assert_close(a(x, x, x, **kw), b(x, x, x, **kw), rtol=0, atol=1e-6)


@pytest.mark.parametrize("self_attention", [True, False])
def test_matches_torch_multihead_attention(self_attention):
    x, mem, kpm = _mha_inputs()
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4, backend="sdpa")
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.load_state_dict(ours.out_proj.state_dict())
    if self_attention:
        kv, kpm, mask = x, torch.tensor([[False] * 4 + [True], [False] * 5]), causal_mask(5)
    else:
        kv, mask = mem, None
    ours.store_attention = True
    y = ours(x, kv, kv, attn_mask=mask, key_padding_mask=kpm)
    # torch.nn.MultiheadAttention's boolean attn_mask means True = NOT allowed: pass the complement
    y_ref, w_ref = theirs(
        x, kv, kv, key_padding_mask=kpm, attn_mask=None if mask is None else ~mask, average_attn_weights=False
    )
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.last_attention, w_ref, rtol=0, atol=1e-6)
    assert ours.last_attention.shape == (2, 4, 5, kv.shape[1])


def test_bad_key_padding_mask_and_input_shapes():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_model=8"):
        mha(torch.randn(2, 3, 6), x, x)
    with pytest.raises(ValueError, match="attn_mask"):
        mha(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.bool))


def test_didactic_attention_gradients_pass_gradcheck():
    q, k, v = (_rand(1, 2, 3, 4, seed=s).requires_grad_() for s in (1, 2, 3))
    mask = causal_mask(3)
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask=mask)[0], (q, k, v))


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5, backend="math")
    x = torch.randn(2, 5, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x), mha(x, x, x), rtol=0, atol=0)
    mha.train()
    assert (mha(x, x, x) - mha(x, x, x)).abs().max() > 1e-3
