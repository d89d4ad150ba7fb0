"""Two-way FPN: a top-down and a bottom-up path, summed at every level."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norm import ConvNormAct


def _accumulate(laterals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Add each level, resized by nearest neighbour, into the level before it, last to first."""
    out = list(laterals)
    for i in range(len(out) - 1, 0, -1):
        out[i - 1] = out[i - 1] + F.interpolate(out[i], size=out[i - 1].shape[-2:], mode="nearest")
    return out


class TwoWayFPN(nn.Module):
    """`[C4, C8, C16, C32] -> [P4, P8, P16, P32]`, each with `out_channels`.

    The top-down path starts at C32 and upsamples; the bottom-up path starts
    at C4 and downsamples (nearest, so it picks pixel [2i, 2j]). Its laterals
    are indexed from the coarsest level, as the authors' were.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, eps: float = 1e-5):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"in_channels: expected at least two levels, got {list(in_channels)}")
        self.lateral_convs_top = nn.ModuleList(ConvNormAct(c, out_channels, 1, eps=eps) for c in in_channels)
        self.lateral_convs_bottom = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, eps=eps) for c in reversed(in_channels)
        )
        self.fpn_convs = nn.ModuleList(ConvNormAct(out_channels, out_channels, 3, eps=eps) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.fpn_convs):
            raise ValueError(f"features: expected {len(self.fpn_convs)} levels, got {len(features)}")
        top = _accumulate([conv(c) for conv, c in zip(self.lateral_convs_top, features)])
        bottom = _accumulate([conv(c) for conv, c in zip(self.lateral_convs_bottom, reversed(features))])
        return [conv(t + b) for conv, t, b in zip(self.fpn_convs, top, reversed(bottom))]
