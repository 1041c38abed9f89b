import pytest
import torch
from torch import nn

from resnorm import probes as P
from resnorm.residual import build_mlp, plain_mlp


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def test_resolve_modules_by_name_and_module():
    net = _net()
    assert P.resolve_modules(net, ["0", net[2]]) == [net[0], net[2]]
    with pytest.raises(ValueError, match="no submodule named 'blocks.9'"):
        P.resolve_modules(net, ["blocks.9"])
    with pytest.raises(ValueError, match="not a submodule"):
        P.resolve_modules(net, [nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="empty"):
        P.resolve_modules(net, [])


def test_modules_of_type_lists_names_in_order():
    model = build_mlp(in_features=4, out_features=2, width=8, depth=2)
    names = P.modules_of_type(model, nn.Linear)
    assert names == ["stem", "blocks.0.branch.fc1", "blocks.0.branch.fc2",
                     "blocks.1.branch.fc1", "blocks.1.branch.fc2", "head"]


def test_reduce_tensor_by_hand():
    t = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert P.reduce_tensor(t, "norm") == pytest.approx(5.0)
    assert P.reduce_tensor(t, "rms") == pytest.approx((25 / 4) ** 0.5)
    assert P.reduce_tensor(t, "mean_norm") == pytest.approx(2.5)
    with pytest.raises(ValueError, match="reduction"):
        P.reduce_tensor(t, "max")


def test_activation_norms_match_a_hand_computation():
    net = _net()
    x = torch.randn(11, 5)
    values = P.activation_norms(net, ["0", "1", "2"], x)
    h0 = x @ net[0].weight.T + net[0].bias
    h1 = h0.clamp(min=0)
    h2 = h1 @ net[2].weight.T + net[2].bias
    assert len(values) == 3
    for v, h in zip(values, (h0, h1, h2)):
        assert v == pytest.approx(h.pow(2).mean().sqrt().item(), rel=1e-5)
    # hooks are gone afterwards
    assert all(len(m._forward_hooks) == 0 for m in net)


def test_activation_norms_restore_mode_and_complain_about_unused_layers():
    model = build_mlp(in_features=4, out_features=2, width=8, depth=2, norm="batch")
    model.eval()
    P.activation_norms(model, ["blocks.0"], torch.randn(6, 4), train=True)
    assert not model.training
    with pytest.raises(ValueError, match="not called"):
        P.activation_norms(model, ["blocks.1"], torch.randn(6, 4), skip={1})


def test_grad_norms_match_backward_and_leave_grads_alone():
    net = _net()
    x, target = torch.randn(9, 5), torch.randn(9, 3)
    loss_fn = lambda out: (out - target).pow(2).mean()  # noqa: E731
    values = P.grad_norms(net, [net[0], "2"], loss_fn, x)
    assert net[0].weight.grad is None  # the probe did not write .grad
    loss_fn(net(x)).backward()
    assert values == pytest.approx([net[0].weight.grad.norm().item(), net[2].weight.grad.norm().item()], rel=1e-6)
    assert P.weight_grad_norms(net, ["0", "2"]) == pytest.approx(values, rel=1e-6)
    assert P.grad_norms(net, ["0"], loss_fn, x, param="bias") == pytest.approx([net[0].bias.grad.norm().item()], rel=1e-6)


def test_grad_norms_by_hand_for_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    model = nn.Sequential(lin)
    x = torch.randn(6, 4)
    # loss = sum(W x + b): dL/dW[i, j] = sum_n x[n, j] for every output i
    expected = (x.sum(0).pow(2).sum() * 2).sqrt().item()
    assert P.grad_norms(model, ["0"], lambda out: out.sum(), x) == pytest.approx([expected], rel=1e-6)
    with pytest.raises(ValueError, match="scalar"):
        P.grad_norms(model, ["0"], lambda out: out, x)


def test_output_grad_norms_match_a_hand_computation():
    net = _net()
    x = torch.randn(8, 5)
    values = P.output_grad_norms(net, ["1", "2"], lambda out: out.sum(), x, reduction="norm")
    # d sum(W2 h + b2) / dh = 1 @ W2 for every example; the output's own gradient is all ones
    dh = torch.ones(8, 3) @ net[2].weight
    assert values == pytest.approx([dh.norm().item(), torch.ones(8, 3).norm().item()], rel=1e-6)


def test_input_grad_norm_of_a_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    x = torch.randn(2, 4)
    expected = (torch.ones(2, 3) @ lin.weight).pow(2).mean().sqrt().item()
    assert P.input_grad_norm(lin, x) == pytest.approx(expected, rel=1e-6)


def test_record_outputs_saves_each_call():
    net = _net()
    x = torch.randn(3, 5)
    with P.record_outputs(net, ["0", "2"]) as outs:
        y = net(x)
        net(x)
    assert [len(o) for o in outs] == [2, 2]
    torch.testing.assert_close(outs[1][0], y.detach())
    assert not outs[0][0].requires_grad


def test_probes_show_vanishing_signal_with_default_init():
    # the experiment of the residual chapter in miniature: PyTorch's default init shrinks a deep
    # ReLU network's signal, He init keeps it; one value per hidden layer
    x = torch.randn(256, 256)
    torch.manual_seed(0)
    default = plain_mlp(depth=20, width=256, init="default")
    torch.manual_seed(0)
    kaiming = plain_mlp(depth=20, width=256, init="kaiming")
    d = P.activation_norms(default, default.linears, x)
    k = P.activation_norms(kaiming, kaiming.linears, x)
    assert len(d) == len(k) == 20
    # the default init's biases keep a floor under the signal, but it still shrinks many-fold
    assert d[-1] / d[0] < 0.2
    assert 0.2 < k[-1] / k[0] < 5


def test_stack_profile():
    assert P.stack_profile([4.0, 2.0, 1.0]) == {"first": 4.0, "last": 1.0, "first_over_last": 4.0}
    with pytest.raises(ValueError):
        P.stack_profile([])
