"""RoIAlign as the authors' mmdetection v1 kernel computes it (`ROIAlignForwardV1`).

That kernel, unaligned with 2x2 samples per bin in the authors' config, reads
a RoI `(x1, y1, x2, y2)` at scale `s` as starting at `x1 * s` and ending at
`(x2 + 1) * s`, and clamps its size with `max(end - start, 0)`. torchvision's
kernels share its sample positions and bilinear reads, but the unaligned one
clamps the size to at least 1, and the aligned one starts at `x * s - 0.5`
with no clamp. So:

- a RoI at least one feature pixel wide and high, given to the unaligned
  kernel with its ends at `x2 + 1`, gets the legacy features bit for bit;
- a narrower one, moved by `+0.5 / s` with its ends raised to its starts (the
  legacy clamp of negative sizes), gets them from the aligned kernel. The
  shift is exact in float32 unless `x * s + 0.5` crosses a power of two, where
  it rounds by half a unit in the last place: at most 3e-5 of a feature pixel
  in a 2048-pixel image.

Both are torchvision's own kernels, with their speed, devices and backward.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align


def legacy_roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """`[K, C, S, S]` features of `rois` `[K, 5]` (image index, x1, y1, x2, y2) read from `features` `[N, C, H, W]`.

    `spatial_scale` is the level's `1 / stride`; a power of two keeps the
    scaled coordinates exact, as in the legacy kernel.
    """
    levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
    return multilevel_legacy_roi_align([features], [spatial_scale], rois, levels, output_size, sampling_ratio)


def multilevel_legacy_roi_align(
    features: Sequence[Tensor],
    spatial_scales: Sequence[float],
    rois: Tensor,
    levels: Tensor,
    output_size: int,
    sampling_ratio: int,
) -> Tensor:
    """`[K, C, S, S]`: RoI `k` of `rois` `[K, 5]` read from `features[levels[k]]` at `spatial_scales[levels[k]]`.

    One kernel call per level and kind of RoI (at least a feature pixel, or
    under one), in the order of the RoIs at the end. A RoI with a NaN or
    infinite coordinate gets NaN features.
    """
    # torchvision sizes its sampling grid from the RoI, and a non-finite one crashes
    # the process; such a RoI is read as an empty box and its features then poisoned.
    broken = ~torch.isfinite(rois).all(dim=1)
    rois = rois.float().masked_fill(broken[:, None], 0.0)
    scales = torch.tensor(spatial_scales, dtype=torch.float32, device=rois.device)[levels, None]
    ends = rois[:, 3:5] + 1.0  # rounded to float32 before it is scaled, as the kernel does
    sub_pixel = (ends * scales - rois[:, 1:3] * scales < 1.0).any(dim=1)
    group = 2 * levels + sub_pixel
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=2 * len(features)).tolist()
    legacy_ends = torch.cat([rois[:, :3], ends], dim=1)[order].split(counts)
    narrow = aligned_equivalent(rois[order], scales[order]).split(counts)
    pooled = []
    for index in (i for i, count in enumerate(counts) if count):
        level, is_narrow = divmod(index, 2)
        boxes = narrow[index] if is_narrow else legacy_ends[index]
        scale = spatial_scales[level]
        pooled.append(roi_align(features[level], boxes, output_size, scale, sampling_ratio, aligned=bool(is_narrow)))
    if not pooled:
        return features[0].new_zeros(0, features[0].shape[1], output_size, output_size)
    pooled = torch.cat(pooled).index_select(0, torch.argsort(order))
    return pooled.masked_fill(broken[:, None, None, None], float("nan"))


def aligned_equivalent(rois: Tensor, spatial_scale: float | Tensor) -> Tensor:
    """The RoIs `[K, 5]` that torchvision's aligned kernel reads as the legacy kernel reads `rois`.

    `spatial_scale` is one scale, or one per RoI `[K, 1]`.
    """
    shift = 0.5 / spatial_scale
    starts = rois[:, 1:3] + shift
    ends = torch.maximum((rois[:, 3:5] + 1.0) + shift, starts)
    return torch.cat([rois[:, :1], starts, ends], dim=1)
