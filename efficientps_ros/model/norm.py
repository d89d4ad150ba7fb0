"""Norm + activation layers compatible with inplace_abn, and their folding.

The authors trained with inplace_abn's `InPlaceABN`, which is not a plain
batch norm: its scale is `|weight| + eps`, not `weight`. `NormAct` computes the
same function with the same state-dict entries, so their weights load as they
are. `fold_norms` merges every norm into the conv before it for inference.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

try:  # Only the CUDA kernels are worth it: they save the activations' memory.
    from inplace_abn.functions import inplace_abn as _inplace_abn
except ImportError:  # the package is optional
    _inplace_abn = None

ACTIVATIONS = ("leaky_relu", "identity")

IntOrPair = int | tuple[int, int]


class NormAct(nn.Module):
    """Batch norm with InPlaceABN's scale `|weight| + eps`, then an activation.

    `y = act((x - mean) / sqrt(var + eps) * (|weight| + eps) + bias)`, with the
    batch statistics in training and the running ones in eval.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        activation: str = "leaky_relu",
        slope: float = 0.01,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if num_features <= 0:
            raise ValueError(f"num_features: expected a positive count, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.activation = activation
        self.slope = slope
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked += 1
            if x.is_cuda and _inplace_abn is not None:
                # Overwrites x; every NormAct here follows a conv, whose backward does not need its output.
                return _inplace_abn(
                    x, self.weight, self.bias, self.running_mean, self.running_var,
                    True, self._momentum(), self.eps, self.activation, self.slope,
                )
        y = F.batch_norm(
            x, self.running_mean, self.running_var,
            self.weight.abs() + self.eps, self.bias,
            self.training, self._momentum(), self.eps,
        )
        if self.activation == "leaky_relu":
            return F.leaky_relu(y, self.slope)
        return y

    def activation_module(self) -> nn.Module:
        """The activation as a stand-alone module, for a folded network."""
        if self.activation == "leaky_relu":
            return nn.LeakyReLU(self.slope)
        return nn.Identity()

    def _momentum(self) -> float:
        # momentum None means a cumulative average, as in torch's batch norm.
        if self.momentum is None:
            return 1.0 / max(int(self.num_batches_tracked), 1)
        return self.momentum

    def extra_repr(self) -> str:
        act = f"leaky_relu({self.slope})" if self.activation == "leaky_relu" else "identity"
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, activation={act}"


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name}: expected a positive int or a pair of them, got {value!r}")
    return pair


class ConvNormAct(nn.Module):
    """Conv2d without bias, then `NormAct`; "same" padding for odd kernels."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: IntOrPair,
        stride: int = 1,
        dilation: IntOrPair = 1,
        groups: int = 1,
        eps: float = 1e-5,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        kernel = _pair(kernel_size, "kernel_size")
        dilations = _pair(dilation, "dilation")
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size: symmetric padding needs odd kernels, got {kernel_size!r}")
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilations))
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=padding,
            dilation=dilations, groups=groups, bias=False,
        )
        self.bn = NormAct(out_ch, eps=eps, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SeparableConv(nn.Module):
    """Depthwise conv + norm, then pointwise 1x1 conv + norm."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        dilation: IntOrPair = 1,
        eps: float = 1e-5,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvNormAct(
            in_ch, in_ch, kernel_size, dilation=dilation, groups=in_ch, eps=eps, activation=activation
        )
        self.pointwise_conv = ConvNormAct(in_ch, out_ch, 1, eps=eps, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


@torch.no_grad()
def fold_norms(model: nn.Module) -> nn.Module:
    """Fold every `NormAct` of `model` into its conv, in place, for inference.

    A norm folds into the conv registered just before it in the same parent
    module, skipping parameterless modules (activations, identities), which
    is how `ConvNormAct` and the backbone's blocks are built. The conv gains
    the bias, and the norm is replaced by its activation alone, so the result
    computes what the unfolded model computes in eval mode.
    """
    for parent in list(model.modules()):
        previous: tuple[str, nn.Module] | None = None
        for name, child in list(parent.named_children()):
            if isinstance(child, NormAct):
                _fold_pair(parent, previous, name, child)
                previous = None
            elif next(child.parameters(), None) is not None:
                previous = (name, child)
    return model


def _fold_pair(parent: nn.Module, previous: tuple[str, nn.Module] | None, name: str, norm: NormAct) -> None:
    conv = previous[1] if previous is not None else None
    if not isinstance(conv, nn.Conv2d) or conv.out_channels != norm.num_features:
        found = "nothing" if previous is None else f"{previous[0]} ({type(previous[1]).__name__})"
        raise ValueError(
            f"fold_norms: norm {name!r} of {type(parent).__name__} follows {found}, "
            f"not a Conv2d with {norm.num_features} output channels"
        )
    weight = conv.weight.double()
    scale = (norm.weight.double().abs() + norm.eps) / torch.sqrt(norm.running_var.double() + norm.eps)
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (conv_bias - norm.running_mean.double()) * scale + norm.bias.double()
    conv.weight.copy_((weight * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    setattr(parent, name, norm.activation_module())
