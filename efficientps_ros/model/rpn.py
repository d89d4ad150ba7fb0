"""Region proposal network: anchors, the shared head, proposals and its loss.

Anchors, their order and the box coding follow mmdetection v1, so that the
authors' `rpn_head` weights predict the same proposals here: per location the
anchors of ratios 0.5, 1, 2, centred on `(stride - 1) / 2`, with rounded
corners; outputs are laid out `(y, x, anchor)`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import (
    IGNORED,
    assign_boxes,
    box_iou_inclusive,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms_inclusive,
    sample_boxes,
)
from .config import RPNConfig

# The RPN regresses raw deltas: mmdetection's target_stds of 1.
RPN_STDS = (1.0, 1.0, 1.0, 1.0)
# Smooth L1 switches to L1 here, for the RPN's deltas.
RPN_SMOOTH_L1_BETA = 1.0 / 9.0


def base_anchors(base_size: int, scale: float, ratios: Sequence[float]) -> Tensor:
    """The anchors `[A, 4]` of the location at the origin, one per ratio (height / width).

    Width `base_size * scale / sqrt(ratio)`, height `base_size * scale * sqrt(ratio)`,
    centred on `(base_size - 1) / 2`, corners rounded.
    """
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    widths = base_size * scale / h_ratios
    heights = base_size * scale * h_ratios
    center = 0.5 * (base_size - 1)
    anchors = torch.stack(
        [center - 0.5 * (widths - 1), center - 0.5 * (heights - 1), center + 0.5 * (widths - 1), center + 0.5 * (heights - 1)],
        dim=-1,
    )
    return anchors.round()


def grid_anchors(base: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """All anchors `[H * W * A, 4]` of an `H x W` feature map, ordered `(y, x, anchor)`."""
    height, width = size
    ys = torch.arange(height, device=base.device, dtype=base.dtype) * stride
    xs = torch.arange(width, device=base.device, dtype=base.dtype) * stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels, then per-anchor objectness and deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits `[B, H*W*A]` and deltas `[B, H*W*A, 4]`."""
        objectness, deltas = [], []
        for x in features:
            x = F.relu(self.rpn_conv(x))
            batch = x.shape[0]
            objectness.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(batch, -1))
            deltas.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(batch, -1, 4))
        return objectness, deltas


def propose(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    pre_nms_top_n: int,
    post_nms_top_n: int,
    config: RPNConfig,
) -> list[Tensor]:
    """Proposals `[K, 4]` of each image, by decreasing objectness, without gradient.

    Per level: the `pre_nms_top_n` best anchors, decoded and clipped to the
    image, then NMS, at most `post_nms_top_n` kept; over all levels the
    `post_nms_top_n` best (mmdetection's nms_post and max_num, equal in the
    authors' configs).
    """
    boxes, scores, levels = [], [], []
    sizes = torch.tensor(image_sizes, dtype=torch.float32, device=anchors[0].device).unsqueeze(1)
    for level, (logits, level_deltas, level_anchors) in enumerate(zip(objectness, deltas, anchors)):
        logits = logits.detach().float()
        top, index = logits.topk(min(pre_nms_top_n, logits.shape[1]), dim=1)
        chosen = torch.gather(level_deltas.detach().float(), 1, index.unsqueeze(-1).expand(-1, -1, 4))
        boxes.append(clip_boxes(decode_boxes(level_anchors[index], chosen, RPN_STDS), sizes))
        scores.append(top.sigmoid())
        levels.append(torch.full_like(index[0], level))
    boxes_all, scores_all, levels_all = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels)
    return [
        _select_proposals(b, s, levels_all, len(anchors), post_nms_top_n, config)
        for b, s in zip(boxes_all, scores_all)
    ]


def _select_proposals(
    boxes: Tensor, scores: Tensor, levels: Tensor, num_levels: int, top_n: int, config: RPNConfig
) -> Tensor:
    """One image's candidates -> its proposals: size filter, NMS per level, per-level and total caps."""
    if config.min_box_size > 0:
        sides = boxes[:, 2:] - boxes[:, :2] + 1.0
        large = (sides >= config.min_box_size).all(dim=1)
        boxes, scores, levels = boxes[large], scores[large], levels[large]
    keep = nms_inclusive(boxes, scores, levels, config.nms_threshold)
    # NMS returns by decreasing score: a box's rank in its level is the count of its level so far.
    one_hot = F.one_hot(levels[keep], num_levels)
    rank_in_level = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    keep = keep[rank_in_level < top_n][:top_n]
    return boxes[keep]


def rpn_loss(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    gt_boxes: Sequence[Tensor],
    config: RPNConfig,
) -> tuple[Tensor, Tensor]:
    """Objectness (binary cross-entropy) and box (smooth L1) losses over sampled anchors.

    Only anchors wholly inside their image take part. Both losses are summed
    over the batch and divided by the number of sampled anchors.
    """
    logits = torch.cat(list(objectness), 1)
    all_deltas = torch.cat(list(deltas), 1)
    all_anchors = torch.cat(list(anchors), 0)
    assigned = [_assign_anchors(all_anchors, size, gt, config) for size, gt in zip(image_sizes, gt_boxes)]
    positives, negatives = sample_boxes(assigned, config.batch_size_per_image, config.positive_fraction)

    cls_logits, cls_targets, reg_deltas, reg_targets = [], [], [], []
    for i, (pos, neg) in enumerate(zip(positives, negatives)):
        cls_logits.append(logits[i, torch.cat([pos, neg])])
        cls_targets.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))
        reg_deltas.append(all_deltas[i, pos])
        reg_targets.append(encode_boxes(all_anchors[pos], gt_boxes[i][assigned[i][pos]].float(), RPN_STDS))
    sampled_logits = torch.cat(cls_logits).float()
    num_sampled = max(sampled_logits.numel(), 1)
    loss_cls = F.binary_cross_entropy_with_logits(
        sampled_logits, torch.cat(cls_targets).to(sampled_logits.dtype), reduction="sum"
    )
    loss_reg = F.smooth_l1_loss(
        torch.cat(reg_deltas).float(), torch.cat(reg_targets), beta=RPN_SMOOTH_L1_BETA, reduction="sum"
    )
    return loss_cls / num_sampled, loss_reg / num_sampled


def _assign_anchors(anchors: Tensor, image_size: tuple[int, int], gt_boxes: Tensor, config: RPNConfig) -> Tensor:
    """Ground-truth index per anchor; anchors reaching outside the image are IGNORED."""
    height, width = image_size
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < width) & (anchors[:, 3] < height)
    assigned = torch.full((anchors.shape[0],), IGNORED, dtype=torch.long, device=anchors.device)
    # The authors' config sets the low-quality minimum (min_pos_iou) to the negative threshold.
    assigned[inside] = assign_boxes(
        box_iou_inclusive(gt_boxes, anchors[inside]),
        config.fg_iou_threshold,
        config.bg_iou_threshold,
        config.bg_iou_threshold,
    )
    return assigned
