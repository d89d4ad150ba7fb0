"""Panoptic fusion: semantic logits and instance detections -> one panoptic labelling.

The steps of the authors' code (their `simple_test_mask_`), batched on the
logits' device:

1. detections with a score above the threshold, after NMS within each class,
   at most `max_instances`, by decreasing score;
2. each 28x28 mask logit pasted into the image (bilinear; zero outside the
   mask grid; mirrored for a box with x2 < x1). A box with no width or no
   height is dropped: the authors' paste divides by zero there;
3. in score order, an instance whose binary mask lies more than
   `overlap_threshold` of its area on instances kept before it is dropped;
4. per instance, MLA = `mask_logit_scale` x the pasted logits and MLB = the
   semantic logit of its class inside its box, zero outside; the fused logit
   is `(sigmoid(MLA) + sigmoid(MLB)) * (MLA + MLB)`;
5. each pixel goes to the argmax of [stuff logits; fused logits]: to an
   instance, or to stuff. Away from its box an instance's fused logit is 0,
   so where every stuff logit is negative the best-scoring instance takes
   the pixel, as in the authors' code;
6. stuff pixels take the argmax class over all semantic logits; where that
   is a thing class, they are void. A stuff class with fewer than
   `min_stuff_area` pixels in the image becomes void.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import nms_inclusive
from .config import VOID_TRAIN_ID, EfficientPSConfig

DETECTION_KEYS = ("boxes", "scores", "labels", "mask_logits")


@dataclass
class FusionOutput:
    """The fused maps of one image and its kept instances.

    `semantic` `[H, W]` train ids (255 void); `instance` `[H, W]`, 0 for none,
    else k for the k-th instance (1-based, every id present, by decreasing
    score); `boxes` `[K, 4]`, `scores` `[K]` and `class_ids` `[K]` (train ids)
    of instance k at row k - 1.
    """

    semantic: Tensor
    instance: Tensor
    boxes: Tensor
    scores: Tensor
    class_ids: Tensor


def panoptic_fusion(semantic_logits: Tensor, detections: dict[str, Tensor], config: EfficientPSConfig) -> FusionOutput:
    """Fuse `semantic_logits` `[C, H, W]` with one image's detections, at that `H x W`.

    `detections` is what `InstanceHead` returns for one image, with boxes in
    the pixels of `semantic_logits`.
    """
    _check_inputs(semantic_logits, detections, config)
    fusion, num_stuff = config.fusion, config.num_stuff
    logits = semantic_logits.float()
    size = tuple(logits.shape[-2:])

    order = select_detections(detections["boxes"], detections["scores"], detections["labels"], config)
    order = order[pasteable(detections["boxes"][order].float(), size, detections["mask_logits"].shape[-1])]
    boxes = detections["boxes"][order].float()
    scores = detections["scores"][order]
    labels = detections["labels"][order].long()
    pasted = paste_masks(detections["mask_logits"][order].float(), boxes, size)

    kept = drop_overlapping(pasted.sigmoid() > fusion.mask_threshold, fusion.overlap_threshold)
    boxes, scores, labels, pasted = boxes[kept], scores[kept], labels[kept], pasted[kept]

    fused = fuse_logits(pasted, logits[num_stuff + labels], boxes, fusion.mask_logit_scale)
    instance, present = dense_ids(_winning_instance(logits[:num_stuff], fused), labels.numel())
    class_ids = num_stuff + labels[present]

    semantic = stuff_semantic(logits, instance > 0, num_stuff, fusion.min_stuff_area)
    with_none = torch.cat([class_ids.new_zeros(1), class_ids])
    semantic = torch.where(instance > 0, with_none[instance], semantic)
    return FusionOutput(semantic, instance, boxes[present], scores[present], class_ids)


def _winning_instance(stuff_logits: Tensor, fused: Tensor) -> Tensor:
    """`[H, W]`: 1 + the index of the instance that wins each pixel, or 0 where stuff wins.

    The argmax over [stuff; fused], taken in two parts to spare a copy; on a tie
    the first wins, so stuff.
    """
    if fused.shape[0] == 0:
        return torch.zeros(stuff_logits.shape[-2:], dtype=torch.long, device=stuff_logits.device)
    best_fused, best_instance = fused.max(dim=0)
    return torch.where(best_fused > stuff_logits.max(dim=0).values, best_instance + 1, 0)


def select_detections(boxes: Tensor, scores: Tensor, labels: Tensor, config: EfficientPSConfig) -> Tensor:
    """Indices of the detections the fusion uses, by decreasing score."""
    fusion = config.fusion
    confident = torch.nonzero(scores > fusion.score_threshold, as_tuple=False).flatten()
    keep = nms_inclusive(boxes[confident], scores[confident], labels[confident], fusion.nms_threshold)
    return confident[keep[: fusion.max_instances]]


def paste_masks(mask_logits: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask logits `[K, M, M]` resampled into their boxes of an image: `[K, H, W]`.

    As the authors' inverse RoI sampling: image pixel centre `p + 0.5` falls
    at `M * (p + 0.5 - x1) / (x2 - x1)` in the mask, whose cell centres are at
    `k + 0.5`; values are interpolated bilinearly, with zero beyond the grid.
    The extent is signed, so a box with `x2 < x1` pastes its mask mirrored
    between `x2` and `x1`. A box with no extent gives NaN, as theirs does:
    leave out what `pasteable` refuses. Bilinear weights separate by axis, so
    the paste is two small matrix products.
    """
    grid = mask_logits.shape[-1]
    rows = _interpolation_weights(boxes[:, 1], boxes[:, 3], size[0], grid)
    cols = _interpolation_weights(boxes[:, 0], boxes[:, 2], size[1], grid)
    return rows @ mask_logits @ cols.transpose(1, 2)


def pasteable(boxes: Tensor, size: tuple[int, int], grid: int) -> Tensor:
    """Which boxes `[K, 4]` paste a finite mask: bool `[K]`.

    Where the authors' code divides by a zero extent, its paste is NaN over
    the whole image, and then no instance of the frame wins a pixel; only
    that detection is left out here.
    """
    finite = [
        torch.isfinite(torch.stack(_inverse_span(boxes[:, a], boxes[:, b], length, grid))).all(dim=0)
        for a, b, length in ((1, 3, size[0]), (0, 2, size[1]))
    ]
    return finite[0] & finite[1]


def _inverse_span(start: Tensor, end: Tensor, length: int, grid: int) -> tuple[Tensor, Tensor]:
    """Where the image's first and last edges fall in the mask grid, for boxes from `start` to `end`."""
    extent = end - start
    return -grid * start / extent, grid * (length - start) / extent


def _interpolation_weights(start: Tensor, end: Tensor, length: int, grid: int) -> Tensor:
    """`[K, length, grid]`: the weight of each mask cell in each image pixel along one axis.

    In the float32 operations of the authors' `invert_roi_bbx` and
    `roi_sampling`, so that a pixel falls where it falls in theirs: far from
    the box their span is large, and its rounding shows in the mask.
    """
    first, last = _inverse_span(start, end, length, grid)
    centres = (torch.arange(length, device=start.device, dtype=torch.float32) + 0.5) / length
    position = centres[None] * (last - first)[:, None] + first[:, None]
    # Their cell index and offset are taken in double precision.
    low = torch.floor(position.double() - 0.5)
    frac = (position.double() - (low + 0.5)).float()[..., None]
    low = low.float()[..., None]
    cells = torch.arange(grid, device=start.device, dtype=torch.float32)
    return (cells == low) * (1.0 - frac) + (cells == low + 1.0) * frac


def drop_overlapping(masks: Tensor, threshold: float) -> Tensor:
    """Which of `masks` `[K, H, W]` (by decreasing score) to keep: bool `[K]`.

    An instance is dropped when more than `threshold` of its pixels are already
    taken by instances kept before it. An empty mask is kept, as in the
    authors' code, where 0/0 is not above the threshold.
    """
    occupied = torch.zeros(masks.shape[-2:], dtype=torch.bool, device=masks.device)
    areas = masks.flatten(1).sum(dim=1).float()
    kept = []
    # Each decision depends on the ones before it; the flags stay on the device.
    for mask, area in zip(masks, areas):
        overlap = (mask & occupied).sum().float() / area
        keep = ~(overlap > threshold)
        occupied |= mask & keep
        kept.append(keep)
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.bool, device=masks.device)


def fuse_logits(pasted: Tensor, class_logits: Tensor, boxes: Tensor, scale: float) -> Tensor:
    """Fused logits `[K, H, W]` from pasted mask logits and each instance's semantic class logits.

    MLB is the semantic logit inside the box: rows `floor(y1 + 1)` up to
    `round(y2)` exclusive, columns likewise, which is how the authors' code
    cuts the box.
    """
    height, width = pasted.shape[-2:]
    rows = _box_span(boxes[:, 1], boxes[:, 3], height)
    cols = _box_span(boxes[:, 0], boxes[:, 2], width)
    mla = scale * pasted
    mlb = torch.where(rows[:, :, None] & cols[:, None, :], class_logits, class_logits.new_zeros(()))
    # In place on these fresh [K, H, W] tensors: at full resolution each one is large.
    fused = mla.sigmoid()
    mla += mlb
    fused += mlb.sigmoid_()
    return fused.mul_(mla)


def _box_span(start: Tensor, end: Tensor, length: int) -> Tensor:
    """`[K, length]`: the pixels from `floor(start + 1)` to `round(end - 1) + 1`, exclusive."""
    first = torch.floor(start + 1.0).clamp(min=0)
    stop = (torch.round(end - 1.0) + 1.0).clamp(max=length)
    pixels = torch.arange(length, device=start.device, dtype=start.dtype)
    return (pixels[None] >= first[:, None]) & (pixels[None] < stop[:, None])


def dense_ids(raw: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Instance ids renumbered `1..K'` over the instances that own pixels, in order.

    Returns the new `[H, W]` map and which of the `count` instances are present.
    """
    pixels = torch.bincount(raw.flatten(), minlength=count + 1)
    present = pixels[1:] > 0
    new_ids = torch.cat([present.new_zeros(1, dtype=torch.long), torch.cumsum(present, 0) * present])
    return new_ids[raw], present


def stuff_semantic(logits: Tensor, claimed: Tensor, num_stuff: int, min_area: int) -> Tensor:
    """Train ids `[H, W]` of the stuff pixels; void (255) elsewhere.

    The class is the argmax over all classes: a pixel no instance claimed
    whose argmax is a thing class is void. So is every pixel of a stuff class
    that covers fewer than `min_area` pixels of the image.
    """
    stuff = logits.argmax(dim=0)
    stuff = torch.where(claimed | (stuff >= num_stuff), num_stuff, stuff)
    area = torch.bincount(stuff.flatten(), minlength=num_stuff + 1)
    void = area < min_area
    void[num_stuff] = True
    return torch.where(void[stuff], VOID_TRAIN_ID, stuff)


def _check_inputs(semantic_logits: Tensor, detections: dict[str, Tensor], config: EfficientPSConfig) -> None:
    if semantic_logits.dim() != 3 or semantic_logits.shape[0] != config.num_classes:
        raise ValueError(
            f"semantic_logits: expected [{config.num_classes}, H, W], got {list(semantic_logits.shape)}"
        )
    missing = [key for key in DETECTION_KEYS if key not in detections]
    if missing:
        raise ValueError(f"detections: missing {missing}; expected {list(DETECTION_KEYS)}")
    count = detections["scores"].shape[0]
    expected = {"boxes": (count, 4), "scores": (count,), "labels": (count,)}
    for key, shape in expected.items():
        if tuple(detections[key].shape) != shape:
            raise ValueError(f"detections['{key}']: expected {list(shape)}, got {list(detections[key].shape)}")
    masks = detections["mask_logits"]
    if masks.dim() != 3 or masks.shape[0] != count or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"detections['mask_logits']: expected [{count}, M, M], got {list(masks.shape)}")
    labels = detections["labels"]
    if count and (labels.min() < 0 or labels.max() >= config.num_things):
        raise ValueError(f"detections['labels']: thing indices must be in 0..{config.num_things - 1}")
