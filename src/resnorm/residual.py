"""Residual blocks, and the plain blocks they are compared with.

Two families:

* **MLP blocks** (what a Transformer's feed-forward sub-layer is): a branch
  ``F(x) = W2 act(W1 norm(x))`` used either as a plain block ``y = F(x)`` or as a residual
  block ``y = x + s * F(x)``. Plain and residual stacks built from the same config have
  exactly the same parameters, so any difference between them comes from the shortcut.
* **ResNet blocks** (He et al., CVPR 2016; He et al., ECCV 2016): the basic block, the
  bottleneck, and the pre-activation block. The shortcut is the identity (no parameters)
  unless the block changes the shape (stride or channel count); only then is it a 1x1
  convolution followed by batch norm. The sum comes first, the ReLU after it.

:class:`SourceArticleBlock` is the block printed in one of the book's source articles
(projection, batch norm and ReLU applied *after* the addition). It is kept only so the book
can show what goes wrong with it; never use it in a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NORMS = (None, "layer", "batch")
INITS = ("default", "kaiming", "xavier")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def make_norm(kind: str | None, width: int) -> nn.Module:
    """``None`` -> identity, ``"layer"`` -> ``nn.LayerNorm``, ``"batch"`` -> ``nn.BatchNorm1d``."""
    if kind is None:
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def init_linear(layer: nn.Linear, init: str) -> None:
    """Initialise a linear layer's weight; biases start at zero except for ``"default"``.

    ``"default"`` keeps PyTorch's own init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: weight
    variance ``1/(3 fan_in)``, which shrinks a ReLU network's signal by a factor of about 6 in
    variance per layer. ``"kaiming"`` draws ``N(0, 2/fan_in)`` (He et al., ICCV 2015), the
    variance that keeps the second moment of a ReLU network's activations constant with depth.
    ``"xavier"`` draws ``N(0, 2/(fan_in + fan_out))`` (Glorot & Bengio, 2010), made for tanh.
    """
    if init == "default":
        return
    if init == "kaiming":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    elif init == "xavier":
        nn.init.xavier_normal_(layer.weight)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


# --------------------------------------------------------------------------- MLP blocks


class MLPBranch(nn.Module):
    """``F(x) = W2 act(W1 norm(x))``: the branch shared by the plain and the residual MLP block.

    The norm sits at the branch's input (pre-norm, as in Pre-LN Transformers), so a plain stack
    of these is normalized at every block and a residual stack keeps an untouched identity path.
    """

    def __init__(self, width: int, hidden: int | None = None, norm: str | None = "layer",
                 activation: str = "relu", init: str = "kaiming"):
        super().__init__()
        hidden = width if hidden is None else hidden
        _check_positive(width=width, hidden=hidden)
        self.width = width
        self.norm = make_norm(norm, width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, width)
        init_linear(self.fc1, init)
        init_linear(self.fc2, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.width:
            raise ValueError(f"{type(self).__name__} expects last dimension {self.width}, got shape {list(x.shape)}")
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PlainMLPBlock(nn.Module):
    """``y = F(x)``: the same branch as :class:`ResidualMLPBlock`, without the shortcut."""

    def __init__(self, width: int, hidden: int | None = None, norm: str | None = "layer",
                 activation: str = "relu", init: str = "kaiming"):
        super().__init__()
        self.branch = MLPBranch(width, hidden, norm, activation, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


class ResidualMLPBlock(nn.Module):
    """``y = x + s * F(x)``.

    ``residual_scale`` is the fixed ``s`` (e.g. ``1/sqrt(depth)`` to keep the residual stream's
    variance bounded as blocks are added). ``learnable_scale=True`` makes ``s`` a scalar
    parameter started at ``residual_scale`` (ReZero, Bachlechner et al., uses 0).
    ``zero_init=True`` zeroes the branch's last layer, so that at initialization ``F(x) = 0``
    and the block is exactly the identity, whatever ``s`` is.
    """

    def __init__(self, width: int, hidden: int | None = None, norm: str | None = "layer",
                 activation: str = "relu", init: str = "kaiming", residual_scale: float = 1.0,
                 learnable_scale: bool = False, zero_init: bool = False):
        super().__init__()
        if not math.isfinite(residual_scale):
            raise ValueError(f"residual_scale must be a finite number, got {residual_scale!r}")
        self.branch = MLPBranch(width, hidden, norm, activation, init)
        if zero_init:
            nn.init.zeros_(self.branch.fc2.weight)
            nn.init.zeros_(self.branch.fc2.bias)
        if learnable_scale:
            self.residual_scale = nn.Parameter(torch.tensor(float(residual_scale)))
        else:
            self.register_buffer("residual_scale", torch.tensor(float(residual_scale)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.branch(x)


@dataclass
class MLPConfig:
    """A deep MLP: ``stem -> depth blocks -> head``.

    ``residual=False`` gives a plain stack. With ``norm=None, hidden=None`` and
    ``residual=False`` each block is still two linear layers; use :func:`plain_mlp` for the
    textbook one-linear-layer-per-layer network of the gradient experiments.
    """

    in_features: int
    out_features: int
    width: int = 64
    depth: int = 8
    hidden: int | None = None
    residual: bool = True
    norm: str | None = "layer"
    activation: str = "relu"
    init: str = "kaiming"
    residual_scale: float = 1.0
    learnable_scale: bool = False
    zero_init: bool = False
    final_norm: bool = True

    def __post_init__(self):
        _check_positive(in_features=self.in_features, out_features=self.out_features, width=self.width)
        if not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {self.depth!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.residual and (self.zero_init or self.learnable_scale or self.residual_scale != 1.0):
            raise ValueError("zero_init, learnable_scale and residual_scale apply only to residual=True")


class MLPStack(nn.Module):
    """A stem, ``depth`` plain or residual MLP blocks, an optional final norm and a linear head.

    ``forward(x, skip=...)`` leaves out the blocks whose indices are in ``skip`` (the input
    passes on unchanged), which is how the ensemble view deletes single blocks.
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Linear(cfg.in_features, cfg.width)
        init_linear(self.stem, cfg.init)
        if cfg.residual:
            make = lambda: ResidualMLPBlock(cfg.width, cfg.hidden, cfg.norm, cfg.activation, cfg.init,  # noqa: E731
                                            cfg.residual_scale, cfg.learnable_scale, cfg.zero_init)
        else:
            make = lambda: PlainMLPBlock(cfg.width, cfg.hidden, cfg.norm, cfg.activation, cfg.init)  # noqa: E731
        self.blocks = nn.ModuleList(make() for _ in range(cfg.depth))
        self.final_norm = make_norm(cfg.norm, cfg.width) if cfg.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.width, cfg.out_features)

    def forward(self, x: torch.Tensor, skip=()) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.cfg.in_features:
            raise ValueError(f"MLPStack expects input of shape [batch, {self.cfg.in_features}], got {list(x.shape)}")
        bad = [i for i in skip if not 0 <= i < len(self.blocks)]
        if bad:
            raise ValueError(f"skip holds block indices outside 0..{len(self.blocks) - 1}: {bad}")
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i not in skip:
                h = block(h)
        return self.head(self.final_norm(h))


def build_mlp(**kwargs) -> MLPStack:
    """``build_mlp(in_features=64, out_features=10, depth=32, residual=False)``: an :class:`MLPStack`."""
    return MLPStack(MLPConfig(**kwargs))


def plain_mlp(depth: int, width: int, in_features: int | None = None, out_features: int | None = None,
              activation: str = "relu", init: str = "default", norm: str | None = None,
              head: bool = True) -> nn.Sequential:
    """The textbook deep network: ``depth`` times ``Linear -> (norm) -> act``, then a linear head.

    ``head=False`` leaves the head out (then ``out_features`` must be None), which makes the
    network the plain twin of :func:`residual_mlp`: same layers, no shortcuts.

    Returns an ``nn.Sequential`` whose hidden linear layers are listed in its attribute
    ``linears`` (input side first), ready for the probes of :mod:`resnorm.probes`.
    """
    _check_positive(depth=depth, width=width)
    in_features = width if in_features is None else in_features
    if not head and out_features is not None:
        raise ValueError("out_features is given but head=False: there is no head to size")
    out_features = width if out_features is None else out_features
    layers, linears = [], []
    for i in range(depth):
        linear = nn.Linear(in_features if i == 0 else width, width)
        init_linear(linear, init)
        linears.append(linear)
        layers += [linear, make_norm(norm, width), make_activation(activation)]
    modules = [m for m in layers if not isinstance(m, nn.Identity)]
    if head:
        modules.append(nn.Linear(width, out_features))
        init_linear(modules[-1], init)
    net = nn.Sequential(*modules)
    net.linears = linears  # a plain list: not registered twice as submodules
    return net


def residual_mlp(depth: int, width: int, init: str = "default", activation: str = "relu",
                 residual_scale: float = 1.0, norm: str | None = None) -> nn.Sequential:
    """``depth`` residual blocks ``x + s * act(norm(W x))``: the residual twin of :func:`plain_mlp`.

    Each block has one linear layer (and the same optional norm after it) like one layer of
    ``plain_mlp(..., norm=norm, head=False)``, so the two have the same parameters and differ
    only by the shortcut; the default ``norm=None`` gives ``x + s * act(W x)``. The hidden
    linear layers are listed in ``linears``.
    """
    _check_positive(depth=depth, width=width)
    blocks = [_OneLayerResidual(width, init, activation, residual_scale, norm) for _ in range(depth)]
    net = nn.Sequential(*blocks)
    net.linears = [b.linear for b in blocks]
    return net


class _OneLayerResidual(nn.Module):
    def __init__(self, width: int, init: str, activation: str, residual_scale: float,
                 norm: str | None = None):
        super().__init__()
        self.linear = nn.Linear(width, width)
        init_linear(self.linear, init)
        self.norm = make_norm(norm, width)  # nn.Identity for None: no parameters, no state
        self.act = make_activation(activation)
        self.residual_scale = residual_scale

    def forward(self, x):
        return x + self.residual_scale * self.act(self.norm(self.linear(x)))


# --------------------------------------------------------------------------- ResNet blocks


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the batch norm that follows has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The identity if the shape is kept; a 1x1 conv + batch norm only if it changes.

    He et al. (CVPR 2016) call this option B: projections only where the dimensions
    increase. (The book prints this function: keep its lines within 88 characters.)
    """
    _check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_channels, out_channels, stride),
                         nn.BatchNorm2d(out_channels))


def _check_image(x: torch.Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} expects input of shape [batch, {channels}, height, width], got {list(x.shape)}")


class BasicBlock(nn.Module):
    """``relu(F(x) + shortcut(x))`` with ``F = BN(conv3x3(relu(BN(conv3x3(x)))))`` (ResNet-18/34).

    ``zero_init=True`` starts the last batch norm's scale at 0 (as in Goyal et al., 2017, and
    torchvision's ``zero_init_residual``), so ``F(x) = 0``: with an identity shortcut the block
    is then ``relu(x)``, which is the identity on the non-negative outputs of a previous block.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, zero_init: bool = False):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.in_channels = in_channels
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)
        if zero_init:
            nn.init.zeros_(self.bn2.weight)

    @property
    def has_projection(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, type(self).__name__)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """``relu(F(x) + shortcut(x))`` with ``F = 1x1 (reduce) -> 3x3 -> 1x1 (expand)``, BN after each conv.

    Output channels are ``expansion * mid_channels`` (4x, ResNet-50/101/152). The stride sits on
    the 3x3 convolution, as in torchvision (the paper's Caffe model put it on the first 1x1).
    """

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1, zero_init: bool = False):
        super().__init__()
        _check_positive(in_channels=in_channels, mid_channels=mid_channels, stride=stride)
        out_channels = mid_channels * self.expansion
        self.in_channels = in_channels
        self.conv1 = conv1x1(in_channels, mid_channels)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv3x3(mid_channels, mid_channels, stride)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)
        if zero_init:
            nn.init.zeros_(self.bn3.weight)

    @property
    def has_projection(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, type(self).__name__)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """``x + F(x)`` with ``F = conv3x3(relu(BN(conv3x3(relu(BN(x))))))`` (He et al., ECCV 2016).

    Batch norm and ReLU come *before* each convolution, and nothing follows the addition, so
    the shortcut path from block to block is a pure identity. When the shape changes, the
    projection takes the pre-activated input ``relu(BN(x))``, as common implementations do.
    ``zero_init=True`` zeroes the last convolution: the block is then exactly the identity.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, zero_init: bool = False):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.in_channels = in_channels
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        # A bare 1x1 conv: the pre-activation already normalized its input.
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else conv1x1(in_channels, out_channels, stride))
        if zero_init:
            nn.init.zeros_(self.conv2.weight)

    @property
    def has_projection(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, type(self).__name__)
        pre = self.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if self.has_projection else x
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class SourceArticleBlock(nn.Module):
    """The block printed in a source article, kept only to show what goes wrong. Do not use.

    Its ``forward`` is ``downsample(x + conv2(relu(conv1(x))))`` with
    ``downsample = relu(BN(conv1x1(.)))``: the "shortcut" projection is applied *after* the
    addition, on every block. Consequences: the addition fails whenever the channels change
    (the projection comes too late to fix the shape); when they do not change, the block
    still carries a 1x1 convolution and a batch norm that a correct block does not need; and
    because the sum passes through a convolution, there is no identity path from one block to
    the next, so a stack of these is a plain network.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, 1, 0),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.downsample(shortcut + out)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as batch-norm running statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
