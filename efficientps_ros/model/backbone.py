"""EfficientNet backbone as the authors built it: no SE, inplace_abn-style norms.

timm builds the network's layout (channel rounding, depth scaling, strides,
TF "same" padding of the `tf_` variants); its convs are kept, and each block is
rebuilt around them with `NormAct` norms where the authors had them. Module
names equal the authors' `backbone.*` names, so their weights load as they are.
"""
from __future__ import annotations

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from .config import BACKBONE_NAMES, BackboneConfig
from .norm import NormAct

LEAKY_SLOPE = 0.01
TAP_STRIDES = (4, 8, 16)


class DepthwiseSeparableBlock(nn.Module):
    """Stage-0 block: depthwise conv, norm, pointwise conv, norm; both norms leaky."""

    def __init__(self, conv_dw: nn.Conv2d, conv_pw: nn.Conv2d, eps: float, has_skip: bool, drop_path: nn.Module):
        super().__init__()
        self.conv_dw = conv_dw
        self.bn1 = NormAct(conv_dw.out_channels, eps=eps, slope=LEAKY_SLOPE)
        self.conv_pw = conv_pw
        self.bn2 = NormAct(conv_pw.out_channels, eps=eps, slope=LEAKY_SLOPE)
        self.drop_path = drop_path
        self.has_skip = has_skip
        self.out_channels = conv_pw.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return self.drop_path(out) + x if self.has_skip else out


class InvertedResidualBlock(nn.Module):
    """Expand, depthwise, project; `bn1` is linear with a separate leaky ReLU, `bn3` linear."""

    def __init__(
        self,
        conv_pw: nn.Conv2d,
        conv_dw: nn.Conv2d,
        conv_pwl: nn.Conv2d,
        eps: float,
        has_skip: bool,
        drop_path: nn.Module,
    ):
        super().__init__()
        self.conv_pw = conv_pw
        self.bn1 = NormAct(conv_pw.out_channels, eps=eps, activation="identity")
        self.act1 = nn.LeakyReLU(LEAKY_SLOPE)
        self.conv_dw = conv_dw
        self.bn2 = NormAct(conv_dw.out_channels, eps=eps, slope=LEAKY_SLOPE)
        self.conv_pwl = conv_pwl
        self.bn3 = NormAct(conv_pwl.out_channels, eps=eps, activation="identity")
        self.drop_path = drop_path
        self.has_skip = has_skip
        self.out_channels = conv_pwl.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(out))))
        return self.drop_path(out) + x if self.has_skip else out


def _rebuild_block(block: nn.Module, eps: float, name: str) -> nn.Module:
    """The authors' block around the convs of a timm block; its SE is left out."""
    if type(block) is DepthwiseSeparableConv and block.conv_s2d is None:
        return DepthwiseSeparableBlock(block.conv_dw, block.conv_pw, eps, block.has_skip, block.drop_path)
    if type(block) is InvertedResidual and block.conv_s2d is None:
        return InvertedResidualBlock(
            block.conv_pw, block.conv_dw, block.conv_pwl, eps, block.has_skip, block.drop_path
        )
    raise ValueError(
        f"backbone.name: {name!r} has a {type(block).__name__} block; only EfficientNet "
        "depthwise-separable and inverted-residual blocks are supported"
    )


def check_backbone_name(name: str) -> None:
    """Only plain architecture names reach timm: a hub prefix or a pretrained
    tag would make it download, in the middle of configuring a node."""
    if not isinstance(name, str) or not BACKBONE_NAMES.fullmatch(name):
        raise ValueError(
            f"backbone.name: {name!r} is not allowed; allowed: efficientnet_b0 .. efficientnet_b8 and "
            "tf_efficientnet_b0 .. tf_efficientnet_b8, plain timm names without a source prefix or pretrained tag"
        )


def _create_timm(config: BackboneConfig) -> nn.Module:
    check_backbone_name(config.name)
    try:
        net = timm.create_model(
            config.name, pretrained=False, num_classes=0, global_pool="", drop_path_rate=config.drop_path_rate
        )
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ValueError(f"backbone.name: {config.name!r} is not a timm model ({exc})") from None
    if not all(hasattr(net, part) for part in ("conv_stem", "blocks", "conv_head")):
        raise ValueError(f"backbone.name: {config.name!r} is not an EfficientNet")
    return net


class Backbone(nn.Module):
    """EfficientNet features at strides 4, 8, 16 and 32: `[C4, C8, C16, C32]`.

    C4..C16 are the outputs of `config.tap_stages`; C32 is `conv_head` + `bn2`
    after the last stage.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        net = _create_timm(config)
        eps = config.norm_eps
        self.conv_stem = net.conv_stem
        self.bn1 = NormAct(net.conv_stem.out_channels, eps=eps, slope=LEAKY_SLOPE)
        self.blocks = nn.Sequential(
            *(nn.Sequential(*(_rebuild_block(b, eps, config.name) for b in stage)) for stage in net.blocks)
        )
        self.conv_head = net.conv_head
        self.bn2 = NormAct(net.conv_head.out_channels, eps=eps, slope=LEAKY_SLOPE)
        self.tap_stages = tuple(config.tap_stages)
        self._check_strides()
        self.out_channels = [self.blocks[s][-1].out_channels for s in self.tap_stages] + [self.conv_head.out_channels]
        self.strides = [*TAP_STRIDES, 32]

    def _stage_stride(self, stage: int) -> int:
        """Total stride of the network after `stage`."""
        stride = self.conv_stem.stride[0]
        for blocks in self.blocks[: stage + 1]:
            for block in blocks:
                stride *= block.conv_dw.stride[0]
        return stride

    def _check_strides(self) -> None:
        taps, last = self.tap_stages, len(self.blocks) - 1
        if len(taps) != len(TAP_STRIDES) or not all(0 <= t <= last for t in taps):
            raise ValueError(f"backbone.tap_stages: expected {len(TAP_STRIDES)} stage indices in 0..{last}, got {taps}")
        strides = tuple(self._stage_stride(t) for t in taps)
        if strides != TAP_STRIDES:
            raise ValueError(f"backbone.tap_stages: stages {taps} have strides {strides}, expected {TAP_STRIDES}")
        if self._stage_stride(last) != 32:
            raise ValueError(f"backbone.name: the last stage must have stride 32, got {self._stage_stride(last)}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self.tap_stages:
                features.append(x)
        features.append(self.bn2(self.conv_head(x)))
        return features
