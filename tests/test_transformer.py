"""The Transformer against torch.nn.Transformer* with copied weights, plus masks, options and errors.

Parity runs in float32 with tolerance 1e-5 on outputs and on gradients w.r.t. inputs and
parameters; everything is in eval mode (dropout off) with autograd on, which also keeps
torch's inference fast path (nested tensors, which zero padded positions) out of the way.
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from resnorm import norms
from resnorm.transformer import (
    Transformer,
    TransformerConfig,
    deepnorm_constants,
    greedy_decode,
    to_torch_decoder_layer,
    to_torch_encoder_layer,
    to_torch_transformer,
    torch_core_forward,
)

torch.set_num_threads(1)
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny(**overrides) -> TransformerConfig:
    base = dict(
        src_vocab_size=23, tgt_vocab_size=19, d_model=16, n_heads=4, d_ff=32,
        n_encoder_layers=2, n_decoder_layers=2, max_len=32, dropout=0.1,
    )
    base.update(overrides)
    return TransformerConfig(**base)


def _tokens(B, T, vocab, seed, pad_from=None):
    x = torch.randint(1, vocab, (B, T), generator=torch.Generator().manual_seed(seed))
    if pad_from is not None:
        for b, start in enumerate(pad_from):
            x[b, start:] = 0
    return x


def _randomize_norms(model):
    """Norm gains and biases away from their init (1, 0), as after training, so parity tests see them."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model


def _attention_grads(ours_attn):
    """Our separate q/k/v gradients in torch's packed in_proj layout."""
    return (
        torch.cat([ours_attn.q_proj.weight.grad, ours_attn.k_proj.weight.grad, ours_attn.v_proj.weight.grad]),
        torch.cat([ours_attn.q_proj.bias.grad, ours_attn.k_proj.bias.grad, ours_attn.v_proj.bias.grad]),
    )


def _assert_layer_grads_equal(ours, theirs, attn_names):
    for name in attn_names:
        w, b = _attention_grads(getattr(ours, name))
        their_attn = getattr(theirs, name)
        torch.testing.assert_close(w, their_attn.in_proj_weight.grad, **TOL)
        torch.testing.assert_close(b, their_attn.in_proj_bias.grad, **TOL)
        torch.testing.assert_close(getattr(ours, name).out_proj.weight.grad, their_attn.out_proj.weight.grad, **TOL)
    for name in ("linear1", "linear2"):
        torch.testing.assert_close(getattr(ours.ff, name).weight.grad, getattr(theirs, name).weight.grad, **TOL)
        torch.testing.assert_close(getattr(ours.ff, name).bias.grad, getattr(theirs, name).bias.grad, **TOL)
    n_norms = 3 if hasattr(theirs, "norm3") else 2
    for i in range(1, n_norms + 1):
        torch.testing.assert_close(getattr(ours, f"norm{i}").weight.grad, getattr(theirs, f"norm{i}").weight.grad, **TOL)
        torch.testing.assert_close(getattr(ours, f"norm{i}").bias.grad, getattr(theirs, f"norm{i}").bias.grad, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ours = _randomize_norms(Transformer(tiny(norm_first=norm_first))).encoder.layers[0].eval()
    theirs = to_torch_encoder_layer(ours).eval()
    x = torch.randn(3, 7, 16)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[0, 4:] = True
    kpm[2, 6:] = True
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1, kpm), theirs(x2, src_key_padding_mask=kpm)
    torch.testing.assert_close(y1, y2, **TOL)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    _assert_layer_grads_equal(ours, theirs, ["self_attn"])


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ours = _randomize_norms(Transformer(tiny(norm_first=norm_first))).decoder.layers[0].eval()
    theirs = to_torch_decoder_layer(ours).eval()
    x, mem = torch.randn(3, 6, 16), torch.randn(3, 7, 16)
    tkpm = torch.zeros(3, 6, dtype=torch.bool)
    tkpm[1, 4:] = True
    mkpm = torch.zeros(3, 7, dtype=torch.bool)
    mkpm[0, 5:] = True
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    m1, m2 = mem.clone().requires_grad_(), mem.clone().requires_grad_()
    y1 = ours(x1, m1, tkpm, mkpm)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # torch: True = NOT allowed
    y2 = theirs(x2, m2, tgt_mask=causal, tgt_key_padding_mask=tkpm, memory_key_padding_mask=mkpm)
    torch.testing.assert_close(y1, y2, **TOL)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    torch.testing.assert_close(m1.grad, m2.grad, **TOL)
    _assert_layer_grads_equal(ours, theirs, ["self_attn", "multihead_attn"])


@pytest.mark.parametrize("norm_first", [False, True])
def test_full_model_matches_torch_transformer(norm_first):
    torch.manual_seed(0)
    model = _randomize_norms(Transformer(tiny(norm_first=norm_first))).eval()
    core = to_torch_transformer(model).eval()
    src = _tokens(3, 7, 23, seed=1, pad_from=[5, 7, 6])
    tgt = _tokens(3, 6, 19, seed=2, pad_from=[6, 3, 5])
    skpm, tkpm = model.key_padding_mask(src), model.key_padding_mask(tgt)

    ours = model(src, tgt, skpm, tkpm)
    g = torch.randn_like(ours)
    ours.backward(g)
    grads_ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    theirs = torch_core_forward(model, core, src, tgt, skpm, tkpm)
    torch.testing.assert_close(ours, theirs, **TOL)
    theirs.backward(g)
    # embeddings and the output layer are shared by both paths: their gradients must agree too
    for n in ("src_embed.weight", "tgt_embed.weight", "generator.weight"):
        torch.testing.assert_close(grads_ours[n], dict(model.named_parameters())[n].grad, **TOL)
    for i, layer in enumerate(model.encoder.layers):
        for p_name, p in layer.named_parameters():
            p.grad = grads_ours[f"encoder.layers.{i}.{p_name}"]
        _assert_layer_grads_equal(layer, core.encoder.layers[i], ["self_attn"])
    for i, layer in enumerate(model.decoder.layers):
        for p_name, p in layer.named_parameters():
            p.grad = grads_ours[f"decoder.layers.{i}.{p_name}"]
        _assert_layer_grads_equal(layer, core.decoder.layers[i], ["self_attn", "multihead_attn"])
    if norm_first:
        torch.testing.assert_close(grads_ours["encoder.norm.weight"], core.encoder.norm.weight.grad, **TOL)
        torch.testing.assert_close(grads_ours["decoder.norm.weight"], core.decoder.norm.weight.grad, **TOL)


def test_torch_transformer_adds_a_final_norm_even_in_post_ln():
    """Why to_torch_transformer drops torch's final norms for Post-LN: with them, outputs differ.

    (At init the difference is tiny, LayerNorm of a LayerNorm output with gain 1 and bias 0;
    once the last layer's norm has a trained gain and bias it is not.)"""
    torch.manual_seed(0)
    model = _randomize_norms(Transformer(tiny(norm_first=False))).eval()
    core = to_torch_transformer(model).eval()
    assert core.encoder.norm is None and core.decoder.norm is None
    default = nn.Transformer(16, 4, 2, 2, 32, batch_first=True)
    assert isinstance(default.encoder.norm, nn.LayerNorm) and isinstance(default.decoder.norm, nn.LayerNorm)
    src, tgt = _tokens(2, 5, 23, seed=1), _tokens(2, 4, 19, seed=2)
    with torch.no_grad():
        plain = torch_core_forward(model, core, src, tgt)
        core.encoder.norm, core.decoder.norm = nn.LayerNorm(16), nn.LayerNorm(16)
        with_norms = torch_core_forward(model, core, src, tgt)
    assert (plain - with_norms).abs().max() > 1e-4


def test_causal_decoder_ignores_future_tokens():
    torch.manual_seed(0)
    for backend in ("sdpa", "math"):
        model = Transformer(tiny(attention_backend=backend)).eval()
        src, tgt = _tokens(2, 6, 23, seed=1), _tokens(2, 8, 19, seed=2)
        changed = tgt.clone()
        t = 4
        changed[:, t + 1:] = (changed[:, t + 1:] + 5) % 18 + 1
        with torch.no_grad():
            a, b = model(src, tgt), model(src, changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
        assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-3  # later positions do see the change


def test_padded_source_tokens_are_invisible():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    src, tgt = _tokens(2, 7, 23, seed=1, pad_from=[4, 7]), _tokens(2, 5, 19, seed=2)
    skpm = model.key_padding_mask(src)
    other = src.clone()
    other[0, 4:] = 7  # different ids at the padded positions, same mask
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt, skpm), model(other, tgt, skpm), rtol=0, atol=1e-6)
        assert (model(src, tgt) - model(other, tgt)).abs().max() > 1e-3  # without the mask they leak


def test_decoder_self_attention_weights_are_lower_triangular():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    model.set_store_attention(True)
    with torch.no_grad():
        model(_tokens(2, 6, 23, seed=1), _tokens(2, 5, 19, seed=2))
    w = model.decoder.layers[0].self_attn.last_attention
    cross = model.decoder.layers[0].multihead_attn.last_attention
    assert w.shape == (2, 4, 5, 5) and cross.shape == (2, 4, 5, 6)
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 4, 5))


OPTIONS = [
    dict(residual="none"),
    dict(residual="none", norm_first=True),
    dict(residual="rezero", norm="none"),
    dict(residual="rezero", norm_first=True),
    dict(residual="deepnorm", init="deepnorm"),
    dict(norm="rmsnorm"),
    dict(norm="rmsnorm", norm_first=True),
    dict(norm="dyt"),
    dict(norm="dyt", norm_first=True),
    dict(norm="none", norm_first=True),
    dict(init="gpt2"),
    dict(init="deepnorm", norm_first=True),
    dict(positional="learned"),
    dict(share_embeddings=True, tgt_vocab_size=23),
    dict(activation="gelu"),
    dict(attention_backend="math", attention_dropout=0.1, activation_dropout=0.1),
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_runs_forward_and_backward(overrides):
    if overrides.get("norm") == "dyt" and not hasattr(norms, "DyT"):
        pytest.skip("resnorm.norms.DyT is not available yet")
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = Transformer(config).train()
    src = _tokens(2, 6, 23, seed=1, pad_from=[4, 6])
    tgt = _tokens(2, 5, config.tgt_vocab_size, seed=2, pad_from=[5, 3])
    logits = model(src, tgt, model.key_padding_mask(src), model.key_padding_mask(tgt))
    assert logits.shape == (2, 5, config.tgt_vocab_size)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=0)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # at least the output layer learns something in every configuration
    assert model.generator.weight.grad.abs().sum() > 0


def test_rezero_starts_as_identity_and_learns_its_gain():
    torch.manual_seed(0)
    model = Transformer(tiny(residual="rezero", norm="none")).eval()
    x = torch.randn(2, 5, 16, requires_grad=True)
    layer = model.encoder.layers[0]
    y = layer(x)
    torch.testing.assert_close(y, x)
    y.pow(2).sum().backward()
    assert layer.residual1.rezero_gain.grad.abs() > 0


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_dropout_hits_the_branch_not_the_shortcut(norm_first):
    from resnorm.transformer import ResidualBranch

    branch = ResidualBranch(tiny(dropout=0.5, norm_first=norm_first)).train()
    x = torch.randn(4, 8, 16)
    seen = []
    out = branch(x, lambda h: seen.append(h) or torch.ones_like(h), nn.Identity())
    assert torch.equal(seen[0], x)
    added = out - x  # the shortcut passes x untouched; the branch output is dropped or scaled by 1/(1-p)
    dropped, kept = added.abs() < 1e-5, (added - 2.0).abs() < 1e-5
    assert (dropped | kept).all() and dropped.any() and kept.any()


def test_shared_embeddings_are_one_matrix():
    model = Transformer(tiny(share_embeddings=True, tgt_vocab_size=23))
    assert model.src_embed.weight is model.tgt_embed.weight is model.generator.weight
    untied = Transformer(tiny(src_vocab_size=23, tgt_vocab_size=23))
    assert untied.num_parameters() - model.num_parameters() == 2 * 23 * 16


def test_inits_have_the_promised_scales():
    torch.manual_seed(0)
    c = dict(d_model=64, n_heads=4, d_ff=256, n_encoder_layers=3, n_decoder_layers=3)
    gpt2 = Transformer(tiny(init="gpt2", **c))
    assert abs(gpt2.encoder.layers[0].self_attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(gpt2.encoder.layers[0].ff.linear2.weight.std().item() - 0.02 / math.sqrt(6)) < 0.001
    assert abs(gpt2.decoder.layers[0].ff.linear2.weight.std().item() - 0.02 / math.sqrt(9)) < 0.001
    deep = Transformer(tiny(init="deepnorm", residual="deepnorm", **c))
    k = deepnorm_constants(3, 3)
    xavier_std = math.sqrt(2 / (64 + 64))
    assert abs(deep.encoder.layers[0].self_attn.v_proj.weight.std().item() / xavier_std - k["encoder_beta"]) < 0.05
    assert abs(deep.encoder.layers[0].self_attn.q_proj.weight.std().item() / xavier_std - 1.0) < 0.05
    assert deep.decoder.layers[0].residual1.residual_scale == pytest.approx(k["decoder_alpha"])
    xavier = Transformer(tiny(positional="learned", max_len=256, **c))
    assert abs(xavier.src_embed.weight.std().item() - 64**-0.5) < 0.01  # x sqrt(d_model) = unit variance
    assert abs(xavier.positional.embedding.weight.std().item() - 0.5**0.5) < 0.03  # the sinusoids' scale
    # DeepNet (Wang et al., 2022) encoder-decoder constants, for N = M = 6
    k6 = deepnorm_constants(6, 6)
    assert k6["encoder_alpha"] == pytest.approx(0.81 * (6**5) ** (1 / 16))
    assert k6["decoder_beta"] == pytest.approx(72 ** (-1 / 4))


def test_embeddings_are_scaled_by_sqrt_d_model():
    torch.manual_seed(0)
    model = Transformer(tiny(dropout=0.0)).eval()
    src = _tokens(1, 3, 23, seed=1)
    expected = model.src_embed(src) * 4.0 + model.positional.pe[:3]
    torch.testing.assert_close(model.embed_src(src), expected)


def test_base_configuration_parameter_count():
    """d_model 512, 8 heads, d_ff 2048, 6 + 6 layers, one shared 37000-token vocabulary."""
    config = TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000, share_embeddings=True)
    with torch.device("meta"):
        model = Transformer(config)
    d, f, V = 512, 2048, 37000
    attention = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    encoder_layer = attention + ffn + 2 * 2 * d
    decoder_layer = 2 * attention + ffn + 3 * 2 * d
    assert model.num_parameters() == 6 * encoder_layer + 6 * decoder_layer + V * d == 63_082_496


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(d_model=10, n_heads=4), "not divisible by n_heads"),
        (dict(norm="batchnorm"), "valid options: 'layernorm', 'rmsnorm', 'dyt', 'none'"),
        (dict(residual="highway"), "unknown residual='highway'"),
        (dict(init="kaiming"), "unknown init"),
        (dict(positional="rope"), "unknown positional"),
        (dict(activation="swish"), "unknown activation"),
        (dict(attention_backend="flash"), "unknown attention_backend"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(d_ff=0), "d_ff must be a positive int"),
        (dict(n_encoder_layers=0), "n_encoder_layers"),
        (dict(share_embeddings=True), "share_embeddings=True needs one shared vocabulary"),
        (dict(residual="deepnorm", norm_first=True), "Post-LN"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_clear_errors_at_run_time():
    model = Transformer(tiny(max_len=8))
    with pytest.raises(ValueError, match="max_len=8"):
        model(_tokens(1, 9, 23, seed=1), _tokens(1, 3, 19, seed=2))
    with pytest.raises(ValueError, match="outside"):
        model(torch.tensor([[1, 99]]), _tokens(1, 3, 19, seed=2))
    with pytest.raises(ValueError, match="only norm='layernorm'"):
        to_torch_transformer(Transformer(tiny(norm="rmsnorm")))


def test_greedy_decode_matches_step_by_step_argmax():
    torch.manual_seed(0)
    model = Transformer(tiny()).train()
    src = _tokens(3, 6, 23, seed=1, pad_from=[4, 6, 5])
    skpm = model.key_padding_mask(src)
    out = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=7, src_key_padding_mask=skpm)
    assert model.training  # mode restored
    assert out.shape[0] == 3 and out.shape[1] <= 8 and (out[:, 0] == 1).all()
    model.eval()
    with torch.no_grad():
        prefix = out[:, :1]
        for t in range(1, out.shape[1]):
            nxt = model(src, prefix, skpm)[:, -1].argmax(-1)
            finished = (prefix == 2).any(dim=1)
            expected = torch.where(finished, torch.zeros_like(nxt), nxt)
            assert torch.equal(out[:, t], expected)
            prefix = out[:, : t + 1]


def _constant_generator(token_id, vocab=19, d=16):
    head = nn.Linear(d, vocab)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 1.0
    return head


def test_greedy_decode_stops_when_every_sequence_has_eos():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    src = _tokens(2, 5, 23, seed=1)
    model.generator = _constant_generator(2)  # EOS always wins
    assert torch.equal(greedy_decode(model, src, bos_id=1, eos_id=2, max_len=10), torch.tensor([[1, 2], [1, 2]]))
    model.generator = _constant_generator(5)  # EOS never comes: stop at max_len
    out = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=10)
    assert out.shape == (2, 11) and (out[:, 1:] == 5).all()


def test_config_is_a_dataclass_with_the_paper_defaults():
    c = TransformerConfig(src_vocab_size=100, tgt_vocab_size=100)
    assert dataclasses.is_dataclass(c)
    assert (c.d_model, c.n_heads, c.d_ff, c.n_encoder_layers, c.dropout, c.norm_first) == (512, 8, 2048, 6, 0.1, False)


# ----------------------------------------------------------------------------- the fast configuration


from resnorm.attention import PackedMultiHeadAttention


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_fast_configuration_computes_the_teaching_function(norm_first, norm):
    """Same seed -> same initial weights and same state dict; same logits and gradients (float64)."""
    config = TransformerConfig(src_vocab_size=30, tgt_vocab_size=40, d_model=32, n_heads=4, d_ff=64,
                               n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, norm_first=norm_first, norm=norm)
    torch.manual_seed(7)
    teaching = Transformer(config).double()
    after_teaching = torch.rand(1)
    torch.manual_seed(7)
    fast = Transformer(dataclasses.replace(config, fast=True)).double()
    assert torch.equal(torch.rand(1), after_teaching)  # the random stream is left where the teaching model leaves it
    assert sum(isinstance(m, PackedMultiHeadAttention) for m in fast.modules()) == 3 * 2
    ts, fs = teaching.state_dict(), fast.state_dict()
    assert set(ts) == set(fs) and all(torch.equal(ts[k], fs[k]) for k in ts)
    gen = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(3, 30, (6, 9), generator=gen), torch.randint(3, 40, (6, 7), generator=gen)
    src_pad = torch.zeros(6, 9, dtype=torch.bool)
    src_pad[1, 6:] = src_pad[4, 2:] = True
    tgt_pad = torch.zeros(6, 7, dtype=torch.bool)
    tgt_pad[2, 3:] = True
    src[src_pad], tgt[tgt_pad] = 0, 0
    for masks in ((src_pad, tgt_pad), (None, None)):
        out_t, out_f = teaching(src, tgt, *masks), fast(src, tgt, *masks)
        assert (out_t - out_f).abs().max() < 1e-12
        teaching.zero_grad(), fast.zero_grad()
        out_t.pow(2).mean().backward(), out_f.pow(2).mean().backward()
        grads_t = {k: p.grad for k, p in teaching.named_parameters()}
        fast_grads = {}
        for name, module in fast.named_modules():
            if isinstance(module, PackedMultiHeadAttention):  # unpack the gradients like the state dict
                packed, parts = module._packed
                for kind in ("weight", "bias"):
                    g = getattr(getattr(module, packed), kind).grad
                    for part, chunk in zip(parts, g.chunk(len(parts))):
                        fast_grads[f"{name}.{part}.{kind}"] = chunk
        fast_grads.update({k: p.grad for k, p in fast.named_parameters() if "qkv_proj" not in k and "kv_proj" not in k})
        assert set(fast_grads) == set(grads_t)
        assert max((grads_t[k] - fast_grads[k]).abs().max().item() for k in grads_t) < 1e-12


def test_fast_state_dict_round_trips_and_packed_attention_checks_its_inputs():
    config = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32,
                               n_encoder_layers=1, n_decoder_layers=1, fast=True)
    a, b = Transformer(config), Transformer(config)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    attn = PackedMultiHeadAttention(16, 2, self_attention=True)
    x, y = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="same tensor"):
        attn(x, y, y)
    with pytest.raises(ValueError, match="teaching configuration"):
        to_torch_transformer(a)
