import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnorm import probes as P
from resnorm import residual as R
from resnorm.residual import (
    BasicBlock,
    Bottleneck,
    MLPConfig,
    PlainMLPBlock,
    PreActBlock,
    ResidualMLPBlock,
    SourceArticleBlock,
    build_mlp,
    count_parameters,
    plain_mlp,
    residual_mlp,
)


def _randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = 0.5 + torch.rand(n, generator=g)


def _bn(x, bn):  # eval-mode batch norm through torch.nn.functional, a reference we did not write
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


# ---------------------------------------------------------------- MLP blocks


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_mlp_blocks_keep_shape(norm):
    x = torch.randn(8, 16)
    for block in (PlainMLPBlock(16, 32, norm=norm), ResidualMLPBlock(16, 32, norm=norm)):
        assert block(x).shape == (8, 16)


def test_residual_mlp_block_is_x_plus_scaled_branch():
    torch.manual_seed(0)
    block = ResidualMLPBlock(16, 24, residual_scale=0.25)
    x = torch.randn(5, 16)
    torch.testing.assert_close(block(x), x + 0.25 * block.branch(x))
    branch = block.branch
    by_hand = branch.fc2(torch.relu(branch.fc1(F.layer_norm(x, (16,), branch.norm.weight, branch.norm.bias))))
    torch.testing.assert_close(branch(x), by_hand)


def test_plain_and_residual_blocks_have_the_same_parameters():
    plain, res = PlainMLPBlock(16, 24), ResidualMLPBlock(16, 24)
    # the identity shortcut adds nothing; a fixed residual_scale is a buffer, not a parameter
    assert count_parameters(plain) == count_parameters(res) == 16 + 16 + 16 * 24 + 24 + 24 * 16 + 16
    assert count_parameters(ResidualMLPBlock(16, 24, learnable_scale=True)) == count_parameters(plain) + 1


def test_zero_initialized_branch_is_an_exact_identity():
    torch.manual_seed(0)
    x = torch.randn(7, 16)
    for kwargs in ({}, {"residual_scale": 3.0}, {"norm": None}, {"norm": "batch"}):
        block = ResidualMLPBlock(16, 32, zero_init=True, **kwargs)
        assert torch.equal(block(x), x)
    # without zero_init the block is not the identity (the test above can fail)
    assert not torch.allclose(ResidualMLPBlock(16, 32)(x), x)


def test_rezero_scale_starts_at_zero_and_learns():
    torch.manual_seed(0)
    block = ResidualMLPBlock(16, norm=None, residual_scale=0.0, learnable_scale=True)
    x = torch.randn(4, 16)
    assert isinstance(block.residual_scale, nn.Parameter) and block.residual_scale.item() == 0.0
    assert torch.equal(block(x), x)
    block(x).pow(2).sum().backward()
    assert block.residual_scale.grad is not None and block.residual_scale.grad.abs().item() > 0


def test_mlp_stack_plain_and_residual_share_parameter_count_and_skip_all_blocks():
    cfg = dict(in_features=12, out_features=3, width=16, depth=5)
    plain, res = build_mlp(residual=False, **cfg), build_mlp(residual=True, **cfg)
    assert count_parameters(plain) == count_parameters(res)
    res.load_state_dict(plain.state_dict())  # same keys: weights copy across
    x = torch.randn(6, 12)
    assert res(x).shape == (6, 3)
    everything = set(range(5))
    torch.testing.assert_close(res(x, skip=everything), res.head(res.final_norm(res.stem(x))))
    torch.testing.assert_close(plain(x, skip=everything), res(x, skip=everything))


def test_mlp_stack_rejects_bad_input_and_config():
    model = build_mlp(in_features=12, out_features=3, width=16, depth=2)
    with pytest.raises(ValueError, match=r"\[batch, 12\]"):
        model(torch.randn(4, 11))
    with pytest.raises(ValueError, match="outside"):
        model(torch.randn(4, 12), skip={2})
    with pytest.raises(ValueError, match="norm"):
        MLPConfig(in_features=4, out_features=2, norm="group")
    with pytest.raises(ValueError, match="init"):
        MLPConfig(in_features=4, out_features=2, init="orthogonal")
    with pytest.raises(ValueError, match="residual=True"):
        MLPConfig(in_features=4, out_features=2, residual=False, zero_init=True)
    with pytest.raises(ValueError, match="depth"):
        MLPConfig(in_features=4, out_features=2, depth=-1)
    with pytest.raises(ValueError, match="last dimension 16"):
        ResidualMLPBlock(16)(torch.randn(2, 8))


def test_plain_mlp_structure_and_init_variance():
    torch.manual_seed(0)
    net = plain_mlp(depth=6, width=8, in_features=5, out_features=2, init="kaiming")
    assert len(net.linears) == 6 and net(torch.randn(3, 5)).shape == (3, 2)
    torch.manual_seed(0)
    wide = plain_mlp(depth=1, width=2000, init="kaiming")
    # He init: Var(w) = 2 / fan_in
    assert math.isclose(wide.linears[0].weight.var().item(), 2 / 2000, rel_tol=0.02)
    default = plain_mlp(depth=1, width=2000, init="default")
    # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1/(3 fan_in)
    assert math.isclose(default.linears[0].weight.var().item(), 1 / (3 * 2000), rel_tol=0.02)


def test_residual_mlp_twin_has_the_same_parameters_as_plain():
    plain = plain_mlp(depth=4, width=8, head=False)
    res = residual_mlp(depth=4, width=8)
    assert count_parameters(plain) == count_parameters(res)
    assert len(plain) == 8 and plain(torch.randn(2, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="head=False"):
        plain_mlp(depth=4, width=8, out_features=3, head=False)
    x = torch.randn(3, 8)
    torch.testing.assert_close(res[0](x), x + torch.relu(res.linears[0](x)))


def test_residual_mlp_with_a_norm_matches_functional_reference_in_float64():
    """x + relu(BN(W x)) per block, batch statistics (train mode), against torch.nn.functional."""
    torch.manual_seed(0)
    net = residual_mlp(depth=3, width=8, init="kaiming", norm="batch").double()
    x = torch.randn(16, 8, dtype=torch.float64)
    h = x
    for block in net:
        bn = block.norm
        pre = F.linear(h, block.linear.weight, block.linear.bias)
        h = h + F.relu(F.batch_norm(pre, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
    torch.testing.assert_close(net(x), h, rtol=0, atol=1e-12)
    # the shortcut is the only difference from the plain twin: same parameter count
    plain = plain_mlp(depth=3, width=8, init="kaiming", norm="batch", head=False)
    assert count_parameters(net) == count_parameters(plain) == 3 * (8 * 8 + 8 + 2 * 8)


def test_residual_mlp_without_a_norm_keeps_its_parameters_and_function():
    torch.manual_seed(0)
    net = residual_mlp(depth=2, width=8)
    # norm=None adds no parameter or buffer: the state_dict has only the linear layers
    assert sorted(net.state_dict()) == ["0.linear.bias", "0.linear.weight", "1.linear.bias", "1.linear.weight"]
    x = torch.randn(3, 8)
    h = x + torch.relu(net.linears[0](x))
    torch.testing.assert_close(net(x), h + torch.relu(net.linears[1](h)))
    with pytest.raises(ValueError, match="norm"):
        residual_mlp(depth=2, width=8, norm="group")


# ---------------------------------------------------------------- probes used by the chapter


def _cosine_reference(features: torch.Tensor) -> float:
    """Mean over ordered pairs i != j of F.cosine_similarity, one pair at a time, float64."""
    f = features.double().reshape(features.shape[0], -1)
    n = f.shape[0]
    values = [F.cosine_similarity(f[i], f[j], dim=0).item() for i in range(n) for j in range(n) if i != j]
    return sum(values) / len(values)


def test_mean_pairwise_cosine_matches_pairwise_reference():
    torch.manual_seed(0)
    shared = torch.randn(1, 12)
    for weight in (0.0, 1.0, 5.0):  # from unrelated rows to rows that share one direction
        x = torch.randn(9, 12) + weight * shared
        assert P.mean_pairwise_cosine(x) == pytest.approx(_cosine_reference(x), abs=1e-12)
    images = torch.randn(5, 2, 3, 3)  # trailing dimensions are flattened
    assert P.mean_pairwise_cosine(images) == pytest.approx(_cosine_reference(images), abs=1e-12)


def test_mean_pairwise_cosine_extreme_cases():
    row = torch.randn(1, 6)
    assert P.mean_pairwise_cosine(row.repeat(4, 1) * torch.arange(1.0, 5.0)[:, None]) == pytest.approx(1.0, abs=1e-12)
    assert P.mean_pairwise_cosine(torch.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert P.mean_pairwise_cosine(torch.cat([row, -row])) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        P.mean_pairwise_cosine(torch.randn(1, 6))
    with pytest.raises(ValueError, match="1 of 3 feature vectors are zero"):
        P.mean_pairwise_cosine(torch.cat([torch.randn(2, 6), torch.zeros(1, 6)]))


# ---------------------------------------------------------------- ResNet blocks


@pytest.mark.parametrize(
    "in_ch, out_ch, stride, projection",
    [(16, 16, 1, False), (16, 32, 1, True), (16, 16, 2, True), (16, 32, 2, True)],
)
def test_projection_exists_iff_shape_changes(in_ch, out_ch, stride, projection):
    for block in (BasicBlock(in_ch, out_ch, stride), PreActBlock(in_ch, out_ch, stride)):
        assert block.has_projection is projection
        y = block(torch.randn(2, in_ch, 8, 8))
        assert y.shape == (2, out_ch, 8 // stride, 8 // stride)
    bottleneck = Bottleneck(in_ch, out_ch // 4, stride)
    assert bottleneck.has_projection is (stride != 1 or in_ch != out_ch)
    assert bottleneck(torch.randn(2, in_ch, 8, 8)).shape == (2, out_ch, 8 // stride, 8 // stride)


def test_identity_shortcut_adds_no_parameters():
    c = 16
    branch = 2 * (c * c * 9) + 2 * (2 * c)  # two 3x3 convs without bias, two batch norms
    assert count_parameters(BasicBlock(c, c)) == branch
    assert count_parameters(PreActBlock(c, c)) == branch
    # a projection costs exactly a 1x1 conv (+ its batch norm for the post-activation block)
    assert count_parameters(BasicBlock(c, 2 * c, stride=2)) == (c * 2 * c * 9 + 2 * c * 2 * c * 9 + 2 * 2 * (2 * c)) + (c * 2 * c + 2 * 2 * c)
    bottleneck = Bottleneck(64, 16)  # 64 -> 16 -> 16 -> 64: identity shortcut
    assert count_parameters(bottleneck) == 64 * 16 + 16 * 16 * 9 + 16 * 64 + 2 * (16 + 16 + 64)


def test_basic_block_matches_functional_reference_in_float64():
    torch.manual_seed(0)
    for in_ch, out_ch, stride in [(8, 8, 1), (8, 16, 2)]:
        block = BasicBlock(in_ch, out_ch, stride).double().eval()
        _randomize_bn(block)
        block.double()
        x = torch.randn(3, in_ch, 9, 9, dtype=torch.float64)
        out = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
        out = _bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
        if block.has_projection:
            conv, bn = block.shortcut
            short = _bn(F.conv2d(x, conv.weight, stride=stride), bn)
        else:
            short = x
        torch.testing.assert_close(block(x), F.relu(out + short))  # add, then ReLU


def test_bottleneck_matches_functional_reference_in_float64():
    torch.manual_seed(0)
    block = Bottleneck(16, 8, stride=2).double().eval()
    _randomize_bn(block)
    block.double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    out = F.relu(_bn(F.conv2d(x, block.conv1.weight), block.bn1))
    out = F.relu(_bn(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn2))
    out = _bn(F.conv2d(out, block.conv3.weight), block.bn3)
    conv, bn = block.shortcut
    torch.testing.assert_close(block(x), F.relu(out + _bn(F.conv2d(x, conv.weight, stride=2), bn)))


def test_preactivation_block_order_and_no_relu_after_the_sum():
    torch.manual_seed(0)
    block = PreActBlock(8, 8).double().eval()
    _randomize_bn(block)
    block.double()
    calls = []
    for name in ("bn1", "conv1", "bn2", "conv2", "relu"):
        getattr(block, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    y = block(x)
    assert calls == ["bn1", "relu", "conv1", "bn2", "relu", "conv2"]
    pre = F.relu(_bn(x, block.bn1))
    ref = x + F.conv2d(F.relu(_bn(F.conv2d(pre, block.conv1.weight, padding=1), block.bn2)), block.conv2.weight, padding=1)
    torch.testing.assert_close(y, ref)
    assert (y < 0).any()  # nothing after the addition clips the output


def test_preactivation_projection_takes_the_preactivated_input():
    torch.manual_seed(0)
    block = PreActBlock(8, 16, stride=2).double().eval()
    _randomize_bn(block)
    block.double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    pre = F.relu(_bn(x, block.bn1))
    branch = F.conv2d(F.relu(_bn(F.conv2d(pre, block.conv1.weight, stride=2, padding=1), block.bn2)), block.conv2.weight, padding=1)
    torch.testing.assert_close(block(x), branch + F.conv2d(pre, block.shortcut.weight, stride=2))


def test_zero_init_resnet_blocks_are_identities():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(PreActBlock(8, 8, zero_init=True)(x), x)
    # post-activation block: relu(x + 0) is the identity on the non-negative input a previous block produces
    assert torch.equal(BasicBlock(8, 8, zero_init=True)(x.relu()), x.relu())
    assert torch.equal(Bottleneck(32, 8, zero_init=True)(x.repeat(1, 4, 1, 1).relu()), x.repeat(1, 4, 1, 1).relu())
    assert not torch.equal(BasicBlock(8, 8)(x.relu()), x.relu())


def test_resnet_blocks_reject_wrong_input():
    with pytest.raises(ValueError, match=r"\[batch, 8, height, width\]"):
        BasicBlock(8, 8)(torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match="stride"):
        BasicBlock(8, 8, stride=0)


def test_source_article_block_defects():
    torch.manual_seed(0)
    # the projection comes after the addition, so a change of channels cannot be added at all
    with pytest.raises(RuntimeError):
        SourceArticleBlock(8, 16)(torch.randn(2, 8, 6, 6))
    # same shape: it still carries a 1x1 conv + batch norm (+ biases) that the correct block does not need
    extra = count_parameters(SourceArticleBlock(8, 8).downsample)
    assert extra == 8 * 8 + 8 + 2 * 8 > 0
    # and the output goes through ReLU after a convolution of the sum: no identity path
    block = SourceArticleBlock(8, 8)
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 8, 6, 6).relu()
    assert not torch.allclose(block(x), x)


def test_helpers_reject_unknown_names_and_build_the_shortcut_rule():
    with pytest.raises(ValueError, match="norm"):
        R.make_norm("group", 4)
    with pytest.raises(ValueError, match="activation"):
        R.make_activation("swish")
    with pytest.raises(ValueError, match="init"):
        R.init_linear(nn.Linear(2, 2), "orthogonal")
    with pytest.raises(ValueError, match="residual_scale"):
        ResidualMLPBlock(4, residual_scale=float("nan"))
    assert isinstance(R.projection_shortcut(8, 8, 1), nn.Identity)
    conv, bn = R.projection_shortcut(8, 16, 2)
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None and bn.num_features == 16
