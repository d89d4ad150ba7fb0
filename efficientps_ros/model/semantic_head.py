"""Semantic head: DPC on the coarse levels, LSFE on the fine ones, MC between.

`SemanticHead` maps `[P4, P8, P16, P32]` to per-class logits at the input
resolution; `semantic_loss` is the paper's per-pixel log-loss that keeps the
worst quarter of each image's pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import EfficientPSConfig
from .norm import ConvNormAct, SeparableConv


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class DPC(nn.Module):
    """Dense prediction cells: five dilated separable convs, concatenated, then 1x1.

    Branch 0 takes the input; branches 1-3 take branch 0's output; branch 4
    takes branch 3's.
    """

    def __init__(self, in_ch: int, out_ch: int, dilations: Sequence[tuple[int, int]], eps: float = 1e-5):
        super().__init__()
        if len(dilations) != 5:
            raise ValueError(f"dilations: DPC has 5 branches, got {len(dilations)}")
        self.convs = nn.ModuleList(SeparableConv(in_ch, in_ch, 3, dilation=tuple(d), eps=eps) for d in dilations)
        self.conv = ConvNormAct(in_ch * 5, out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.convs[0](x)
        third = self.convs[3](first)
        branches = [first, self.convs[1](first), self.convs[2](first), third, self.convs[4](third)]
        return self.conv(torch.cat(branches, dim=1))


class LSFE(nn.Module):
    """Large-scale feature extractor: two separable 3x3 convs."""

    def __init__(self, in_ch: int, out_ch: int, eps: float = 1e-5):
        super().__init__()
        self.convs = nn.Sequential(SeparableConv(in_ch, out_ch, 3, eps=eps), SeparableConv(out_ch, out_ch, 3, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class MC(nn.Module):
    """Mismatch correction: two separable 3x3 convs, then bilinear x2."""

    def __init__(self, in_ch: int, out_ch: int, eps: float = 1e-5):
        super().__init__()
        self.convs = nn.Sequential(SeparableConv(in_ch, out_ch, 3, eps=eps), SeparableConv(out_ch, out_ch, 3, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return _resize(x, (2 * x.shape[-2], 2 * x.shape[-1]))


class SemanticHead(nn.Module):
    """`[P4, P8, P16, P32] -> [B, num_classes, H, W]` logits."""

    def __init__(self, config: EfficientPSConfig):
        super().__init__()
        fpn, mid, eps = config.fpn_channels, config.semantic_channels, config.head_norm_eps
        # Index 0 works on the coarser level of each pair, as in the authors' head.
        self.lateral_convs_ss = nn.ModuleList(DPC(fpn, mid, config.dpc_dilations, eps) for _ in range(2))
        self.lateral_convs_ls = nn.ModuleList(LSFE(fpn, mid, eps) for _ in range(2))
        self.aligning_convs = nn.ModuleList(MC(mid, mid, eps) for _ in range(2))
        self.conv_logits = nn.Conv2d(4 * mid, config.num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: Sequence[int]) -> torch.Tensor:
        if len(features) != 4:
            raise ValueError(f"features: expected [P4, P8, P16, P32], got {len(features)} levels")
        p4, p8, p16, p32 = features
        dpc32 = self.lateral_convs_ss[0](p32)
        dpc16 = self.lateral_convs_ss[1](p16)
        mc16 = self.aligning_convs[0](dpc16 + _resize(dpc32, dpc16.shape[-2:]))
        f8 = self.lateral_convs_ls[0](p8)
        f8 = f8 + _resize(mc16, f8.shape[-2:])
        mc8 = self.aligning_convs[1](f8)
        f4 = self.lateral_convs_ls[1](p4)
        f4 = f4 + _resize(mc8, f4.shape[-2:])
        size = f4.shape[-2:]
        fused = torch.cat([f4, _resize(f8, size), _resize(dpc16, size), _resize(dpc32, size)], dim=1)
        return _resize(self.conv_logits(fused), output_size)


def semantic_loss(
    logits: torch.Tensor, target: torch.Tensor, top_k: float = 0.25, ignore_index: int = 255
) -> torch.Tensor:
    """Cross-entropy over the worst `top_k` of each image's labelled pixels.

    Per image, the `ceil(top_k * n)` largest pixel losses among its `n`
    labelled pixels are averaged; the result is the mean over images with any
    labelled pixel (zero, still differentiable, when there is none).
    logits: [B, C, H, W]; target: [B, H, W] of class indices or `ignore_index`.
    """
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k: expected a fraction in (0, 1], got {top_k}")
    if logits.dim() != 4:
        raise ValueError(f"logits: expected [B, C, H, W], got shape {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target: expected shape {(logits.shape[0], *logits.shape[2:])}, got {tuple(target.shape)}")
    valid = target != ignore_index
    labels = target[valid]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"target: labels must be in 0..{logits.shape[1] - 1} or {ignore_index}")
    pixel_loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none").flatten(1)
    counts = valid.flatten(1).sum(dim=1)
    keep = torch.ceil(counts.double() * top_k).long()
    if int(keep.max()) == 0:
        return logits.sum() * 0.0
    # Losses are >= 0, so -1 puts the unlabelled pixels after every labelled one.
    ranked = pixel_loss.masked_fill(~valid.flatten(1), -1.0).topk(int(keep.max()), dim=1).values
    kept = torch.arange(ranked.shape[1], device=ranked.device) < keep[:, None]
    per_image = (ranked * kept).sum(dim=1) / keep.clamp(min=1)
    return per_image[counts > 0].mean()
