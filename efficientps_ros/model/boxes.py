"""Boxes as mmdetection v1 treats them, the convention the authors' weights learned.

A box `[x1, y1, x2, y2]` covers the pixels x1..x2 and y1..y2 inclusive, so its
width is `x2 - x1 + 1`. Overlaps, NMS, box coding and clipping all follow that
convention here. torchvision's ops measure `x2 - x1`, so they are called on
boxes whose far corner is moved out by one pixel.

Also here: the max-IoU assignment of boxes to ground truth and the random
sampling of positives and negatives, shared by the RPN and the RoI heads.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import batched_nms, box_iou

# Width and height deltas are clamped here: mmdetection's wh_ratio_clip of 16/1000.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)

# Assignment results besides a ground-truth index (>= 0).
NEGATIVE = -1
IGNORED = -2


def _exclusive(boxes: Tensor) -> Tensor:
    """Inclusive far corners -> exclusive, for torchvision's box ops."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def box_iou_inclusive(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU `[N, M]` with widths measured as `x2 - x1 + 1`."""
    return box_iou(_exclusive(boxes1.float()), _exclusive(boxes2.float()))


def nms_inclusive(boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float) -> Tensor:
    """Indices kept by NMS run separately per group, by decreasing score.

    A box is suppressed by a higher-scoring one of its group whose IoU with it
    is above `threshold`.
    """
    return batched_nms(_exclusive(boxes.float()), scores.float(), groups, threshold)


def encode_boxes(reference: Tensor, target: Tensor, stds: Sequence[float]) -> Tensor:
    """Deltas `[..., 4]` (dx, dy, dw, dh) that move `reference` onto `target`, divided by `stds`."""
    ref_w = reference[..., 2] - reference[..., 0] + 1.0
    ref_h = reference[..., 3] - reference[..., 1] + 1.0
    tgt_w = target[..., 2] - target[..., 0] + 1.0
    tgt_h = target[..., 3] - target[..., 1] + 1.0
    dx = ((target[..., 0] + target[..., 2]) - (reference[..., 0] + reference[..., 2])) * 0.5 / ref_w
    dy = ((target[..., 1] + target[..., 3]) - (reference[..., 1] + reference[..., 3])) * 0.5 / ref_h
    deltas = torch.stack([dx, dy, torch.log(tgt_w / ref_w), torch.log(tgt_h / ref_h)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def decode_boxes(
    reference: Tensor,
    deltas: Tensor,
    stds: Sequence[float],
    image_size: tuple[int, int] | Tensor | None = None,
) -> Tensor:
    """Boxes `[..., 4]` from `deltas` applied to `reference` (broadcast), optionally clipped.

    `image_size` is `(height, width)`, or a tensor of them broadcastable to
    the boxes' leading dimensions plus a last one of 2.
    """
    deltas = deltas * deltas.new_tensor(stds)
    dw = deltas[..., 2].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE)
    dh = deltas[..., 3].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE)
    ref_w = reference[..., 2] - reference[..., 0] + 1.0
    ref_h = reference[..., 3] - reference[..., 1] + 1.0
    center_x = (reference[..., 0] + reference[..., 2]) * 0.5 + ref_w * deltas[..., 0]
    center_y = (reference[..., 1] + reference[..., 3]) * 0.5 + ref_h * deltas[..., 1]
    half_w = ref_w * dw.exp() * 0.5
    half_h = ref_h * dh.exp() * 0.5
    # The +-0.5 turn a continuous extent back into inclusive pixel corners.
    boxes = torch.stack(
        [center_x - half_w + 0.5, center_y - half_h + 0.5, center_x + half_w - 0.5, center_y + half_h - 0.5],
        dim=-1,
    )
    return boxes if image_size is None else clip_boxes(boxes, image_size)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Corners clamped to the pixels of the image: x to [0, width - 1], y to [0, height - 1].

    `image_size` is `(height, width)` or a tensor `[..., 2]` of them that
    broadcasts against `boxes[..., :2]`.
    """
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device)
    largest_xy = size.flip(-1) - 1.0  # (h, w) -> (w - 1, h - 1)
    return torch.minimum(boxes.clamp(min=0.0), torch.cat([largest_xy, largest_xy], dim=-1))


def assign_boxes(iou: Tensor, positive_iou: float, negative_iou: float, min_positive_iou: float) -> Tensor:
    """Each box's ground-truth index, or NEGATIVE or IGNORED (mmdetection's MaxIoUAssigner).

    `iou` is `[num_gt, num_boxes]`. A box is negative below `negative_iou`,
    positive from `positive_iou` on. Then each ground truth also claims every
    box it overlaps best, when that overlap reaches `min_positive_iou`, so no
    ground truth is left without a positive; when two claim one box, the later
    ground truth wins, as in the authors' loop.
    """
    num_gt, num_boxes = iou.shape
    if num_gt == 0:
        return torch.full((num_boxes,), NEGATIVE, dtype=torch.long, device=iou.device)
    if num_boxes == 0:
        return torch.zeros(0, dtype=torch.long, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)
    assigned = torch.full((num_boxes,), IGNORED, dtype=torch.long, device=iou.device)
    assigned[(best_iou >= 0) & (best_iou < negative_iou)] = NEGATIVE
    assigned = torch.where(best_iou >= positive_iou, best_gt, assigned)

    gt_best = iou.max(dim=1, keepdim=True).values
    claims = (iou == gt_best) & (gt_best >= min_positive_iou)
    last_claim = num_gt - 1 - claims.flip(0).int().argmax(dim=0)
    return torch.where(claims.any(dim=0), last_claim, assigned)


def sample_boxes(
    assigned: list[Tensor], batch_size_per_image: int, positive_fraction: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Random positives (at most `fraction` of the batch) and negatives filling the rest, per image.

    Returns the indices of the sampled positives and negatives of each image.
    """
    # The sampler reads >= 1 as positive, 0 as negative and -1 as ignored.
    labels = [torch.where(a >= 0, 1, torch.where(a == NEGATIVE, 0, -1)) for a in assigned]
    sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
    positive_masks, negative_masks = sampler(labels)
    positives = [torch.nonzero(m, as_tuple=False).flatten() for m in positive_masks]
    negatives = [torch.nonzero(m, as_tuple=False).flatten() for m in negative_masks]
    return positives, negatives


def segment_boxes(instance: Tensor, count: int) -> Tensor:
    """[count, 4] x0, y0, x1, y1 enclosing the pixels of ids 1..count (edges exclusive).

    The fusion lets an instance claim pixels beyond its detection box, so the
    published box is the one around what the instance image shows.
    """
    height, width = instance.shape
    ids = instance.flatten().long()
    xs = torch.arange(width, device=instance.device).repeat(height)
    ys = torch.arange(height, device=instance.device).repeat_interleave(width)
    boxes = []
    for coords, reduce, fill in ((xs, "amin", width), (ys, "amin", height), (xs, "amax", -1), (ys, "amax", -1)):
        extreme = torch.full((count + 1,), fill, device=instance.device, dtype=torch.long)
        boxes.append(extreme.scatter_reduce(0, ids, coords, reduce)[1:])
    x0, y0, x1, y1 = boxes
    return torch.stack([x0, y0, x1 + 1, y1 + 1], dim=1).float()
