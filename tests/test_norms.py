"""resnorm.norms against PyTorch's own layers, gradcheck, and the error messages."""

import pytest
import torch
from torch import nn

from resnorm.norms import DyT, LayerNorm, RMSNorm, layer_norm, layer_norm_manual, rms_norm

# (dtype, atol): bf16 has an 8-bit mantissa, so one rounding of an O(1) output is ~4e-3;
# we allow two roundings (input and output casts can land on different sides).
TOLERANCES = {torch.float32: 2e-5, torch.float64: 1e-12, torch.bfloat16: 1.6e-2}


def random_case(seed: int):
    """A random input shape with 1 or 2 normalized dims, and an input with nonzero mean and scale."""
    g = torch.Generator().manual_seed(seed)
    n_lead = int(torch.randint(0, 3, (1,), generator=g))
    n_norm = int(torch.randint(1, 3, (1,), generator=g))
    lead = [int(s) for s in torch.randint(1, 5, (n_lead,), generator=g)]
    norm = tuple(int(s) for s in torch.randint(2, 17, (n_norm,), generator=g))
    x = torch.randn(*lead, *norm, generator=g, dtype=torch.float64) * 3.0 + 2.0
    return x, norm, g


def randomize_affine(module, g):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("seed", range(8))
def test_layernorm_matches_torch(seed, dtype):
    x, shape, g = random_case(seed)
    ref = nn.LayerNorm(shape, dtype=torch.float64)
    randomize_affine(ref, g)
    ours = LayerNorm(shape).double()
    ours.load_state_dict(ref.state_dict())  # same keys, so torch's weights load into ours
    ref, ours, x = ref.to(dtype), ours.to(dtype), x.to(dtype)
    with torch.no_grad():
        expected = ref(x)
        for got in (ours(x), layer_norm_manual(x, shape, ours.weight, ours.bias)):
            assert got.dtype == dtype and got.shape == x.shape
            diff = (got.double() - expected.double()).abs().max().item()
            assert diff <= TOLERANCES[dtype], f"{dtype} {list(x.shape)}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("seed", range(8))
def test_rmsnorm_matches_torch(seed, dtype):
    x, shape, g = random_case(seed)
    ref = nn.RMSNorm(shape, dtype=torch.float64)
    randomize_affine(ref, g)
    ours = RMSNorm(shape).double()
    ours.load_state_dict(ref.state_dict())
    ref, ours, x = ref.to(dtype), ours.to(dtype), x.to(dtype)
    with torch.no_grad():
        diff = (ours(x).double() - ref(x).double()).abs().max().item()
    assert diff <= TOLERANCES[dtype], f"{dtype} {list(x.shape)}: max abs diff {diff:.3g}"


def test_rmsnorm_explicit_eps_and_no_affine_match_torch():
    x = torch.randn(3, 8) * 1e-3  # small RMS, so the eps actually matters
    for kwargs in ({"eps": 1e-4}, {"eps": 1e-4, "elementwise_affine": False}):
        ref, ours = nn.RMSNorm(8, **kwargs), RMSNorm(8, **kwargs)
        torch.testing.assert_close(ours(x), ref(x))


def test_layernorm_without_affine_or_bias_matches_torch():
    x = torch.randn(2, 5, 12)
    for kwargs in ({"elementwise_affine": False}, {"bias": False}, {"eps": 1e-2}):
        ref, ours = nn.LayerNorm(12, **kwargs), LayerNorm(12, **kwargs)
        assert set(ref.state_dict()) == set(ours.state_dict())
        torch.testing.assert_close(ours(x), ref(x))


def test_state_dict_round_trip_both_ways():
    ref = nn.LayerNorm((4, 6))
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1.0, 1.0)
    ours = LayerNorm((4, 6))
    ours.load_state_dict(ref.state_dict())
    back = nn.LayerNorm((4, 6))
    back.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


def test_init_is_identity_affine():
    m = LayerNorm(7)
    assert torch.equal(m.weight, torch.ones(7)) and torch.equal(m.bias, torch.zeros(7))
    x = torch.randn(5, 7)
    y = m(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(6,), (3, 4)])
def test_gradcheck_module_float64(shape):
    m = LayerNorm(shape).double()
    randomize_affine(m, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    r = RMSNorm(shape).double()
    assert torch.autograd.gradcheck(r, (x,))


@pytest.mark.parametrize("with_affine", [True, False])
@pytest.mark.parametrize("shape", [(6,), (3, 4)])
def test_gradcheck_manual_function_float64(shape, with_affine):
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    if with_affine:
        w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w, b: layer_norm_manual(x, shape, w, b), (x, w, b))
    else:
        assert torch.autograd.gradcheck(lambda x: layer_norm_manual(x, shape), (x,))


def test_manual_backward_equals_autograd_of_torch():
    shape = (10,)
    x = (torch.randn(4, 3, 10, dtype=torch.float64) * 5 + 3).requires_grad_()
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(4, 3, 10, dtype=torch.float64)
    ours = torch.autograd.grad(layer_norm_manual(x, shape, w, b), (x, w, b), grad_y)
    ref = torch.autograd.grad(nn.functional.layer_norm(x, shape, w, b), (x, w, b), grad_y)
    for name, a, r in zip(("x", "weight", "bias"), ours, ref):
        assert (a - r).abs().max().item() < 1e-12, name


def test_input_gradient_is_orthogonal_to_ones_and_xhat():
    # Without affine params, LayerNorm's output does not change when x shifts along 1 or scales
    # along x - mean, so dL/dx has no component along either direction (exactly so as eps -> 0).
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer_norm_manual(x, 9, eps=1e-30), x, torch.randn(5, 9, dtype=torch.float64))
    xc = x.detach() - x.detach().mean(-1, keepdim=True)
    assert gx.sum(-1).abs().max() < 1e-12
    assert (gx * xc).sum(-1).abs().max() < 1e-12


def test_dyt_shapes_init_and_grad():
    m = DyT(8)
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    assert torch.equal(m.weight, torch.ones(8)) and torch.equal(m.bias, torch.zeros(8))
    x = torch.randn(2, 5, 8)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, torch.tanh(0.5 * x))
    y.pow(2).sum().backward()
    for p in (m.alpha, m.weight, m.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert DyT(8, alpha_init=2.0).alpha.item() == 2.0
    assert set(DyT(8).state_dict()) == {"alpha", "weight", "bias"}


def test_dyt_is_bounded_and_not_scale_invariant():
    m = DyT(4)
    x = torch.randn(3, 4) * 100
    assert m(x).abs().max() <= 1.0
    assert not torch.allclose(m(x), m(x / 100))  # LayerNorm would give the same output
    torch.testing.assert_close(LayerNorm(4)(x), LayerNorm(4)(x / 100), atol=1e-4, rtol=0)


def test_dyt_gradcheck_float64():
    m = DyT(5).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("factory", [LayerNorm, RMSNorm, DyT])
def test_wrong_input_shape_gives_clear_error(factory):
    m = factory(8)
    with pytest.raises(ValueError, match=r"last 1 dimension\(s\) are \[8\].*\[2, 3, 7\]"):
        m(torch.randn(2, 3, 7))


@pytest.mark.parametrize("fn", [layer_norm, layer_norm_manual, rms_norm])
def test_functional_wrong_shape_gives_clear_error(fn):
    with pytest.raises(ValueError, match=r"last 2 dimension\(s\) are \[4, 5\]"):
        fn(torch.randn(3, 5, 4), (4, 5))
    with pytest.raises(ValueError, match=r"last 2 dimension\(s\)"):
        fn(torch.randn(5), (4, 5))  # fewer dims than normalized_shape


@pytest.mark.parametrize("bad", [0, -3, (), (4, 0), "abc", "8", 2.5, (4, 2.5), None])
@pytest.mark.parametrize("factory", [LayerNorm, RMSNorm, DyT])
def test_bad_normalized_shape_rejected(factory, bad):
    with pytest.raises(ValueError, match="normalized_shape must be"):
        factory(bad)


def test_bad_weight_shape_and_eps_rejected():
    with pytest.raises(ValueError, match=r"weight must have shape \[6\].*\[5\]"):
        layer_norm(torch.randn(2, 6), 6, weight=torch.ones(5))
    with pytest.raises(ValueError, match="eps must be positive"):
        LayerNorm(6, eps=0.0)
    with pytest.raises(ValueError, match="eps must be positive"):
        RMSNorm(6, eps=-1.0)
    with pytest.raises(ValueError, match="alpha_init must be positive"):
        DyT(6, alpha_init=0.0)
