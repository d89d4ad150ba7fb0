"""RoI heads: features per box from the right FPN level, the box head and the mask head.

As in the authors' mmdetection v1 code: a box of side `s = sqrt(w * h)`
(inclusive widths) is read from level `floor(log2(s / finest_scale))`,
clamped to the four levels; RoIAlign is the legacy, unaligned one, whose
boxes reach one pixel past `x2` and keep sizes under one feature pixel
(`roi_align.py`); class index 0 is the background.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .boxes import assign_boxes, box_iou_inclusive, decode_boxes, encode_boxes, nms_inclusive, sample_boxes
from .config import RoIConfig
from .norm import SeparableConv
from .roi_align import multilevel_legacy_roi_align

# Smooth L1 of the box head's deltas: mmdetection's beta of 1.
BOX_SMOOTH_L1_BETA = 1.0


def roi_levels(boxes: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """FPN level `[K]` (0 = finest) each box's features are read from."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    # A diverged network's NaN box must still index a level, so that its step ends in a NaN loss, not a crash.
    return levels.nan_to_num(0.0).clamp(0, num_levels - 1).long()


def roi_features(
    features: Sequence[Tensor],
    strides: Sequence[int],
    rois: Tensor,
    output_size: int,
    config: RoIConfig,
) -> Tensor:
    """RoIAlign `[K, C, S, S]` of `rois` `[K, 5]` (image index, x1, y1, x2, y2), each from its level."""
    levels = roi_levels(rois[:, 1:], config.finest_scale, len(features))
    scales = [1.0 / stride for stride in strides]
    pooled = multilevel_legacy_roi_align(features, scales, rois, levels, output_size, config.sampling_ratio)
    return pooled.to(features[0].dtype)


class BoxHead(nn.Module):
    """Two shared fully connected layers, then class logits and class-specific deltas."""

    def __init__(self, in_channels: int, roi_size: int, fc_channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        # Registered before shared_fcs so the state dict keeps the authors' order.
        self.fc_cls = nn.Linear(fc_channels, num_classes)
        self.fc_reg = nn.Linear(fc_channels, num_classes * 4)
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`[K, C, S, S]` -> class logits `[K, num_classes]`, deltas `[K, num_classes, 4]`."""
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x).reshape(x.shape[0], self.num_classes, 4)


class MaskHead(nn.Module):
    """Four separable 3x3 convs with norm, a 2x transposed conv + ReLU, 1x1 to a logit per class."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, eps: float, num_convs: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(
            SeparableConv(in_channels if i == 0 else channels, channels, 3, eps=eps) for i in range(num_convs)
        )
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)
        for layer in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """`[K, C, S, S]` -> mask logits `[K, num_classes, 2S, 2S]`."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


def detect(
    class_logits: Tensor,
    deltas: Tensor,
    rois: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    config: RoIConfig,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image: boxes `[D, 4]`, scores `[D]` and labels `[D]` (0-based, background excluded).

    Softmax scores; each class's box decoded from its own deltas and clipped;
    kept when its score is above the threshold and it survives NMS within its
    class; at most `detections_per_image`, by decreasing score.
    """
    num_images = len(image_sizes)
    scores = F.softmax(class_logits.float(), dim=1)[:, 1:]
    image_index = rois[:, 0].long()
    sizes = torch.tensor(image_sizes, dtype=torch.float32, device=rois.device)[image_index].unsqueeze(1)
    boxes = decode_boxes(rois[:, None, 1:].float(), deltas[:, 1:].float(), _stds(config), sizes)
    num_things = scores.shape[1]
    labels = torch.arange(num_things, device=scores.device).expand_as(scores)
    images = image_index[:, None].expand_as(scores)

    boxes, scores, labels, images = boxes.reshape(-1, 4), scores.flatten(), labels.flatten(), images.flatten()
    confident = scores > config.score_threshold
    boxes, scores, labels, images = boxes[confident], scores[confident], labels[confident], images[confident]
    keep = nms_inclusive(boxes, scores, images * num_things + labels, config.nms_threshold)
    detections = []
    for i in range(num_images):
        mine = keep[images[keep] == i][: config.detections_per_image]
        detections.append((boxes[mine], scores[mine], labels[mine]))
    return detections


def _stds(config: RoIConfig) -> tuple[float, ...]:
    """The deltas' scales (mmdetection's target_stds) from torchvision-style coder weights."""
    return tuple(1.0 / w for w in config.box_coder_weights)


def sample_rois(
    proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], config: RoIConfig
) -> dict[str, Tensor]:
    """RoIs for the losses: the ground truth added to the proposals, assigned and sampled.

    Returns `rois` `[K, 5]`, `labels` `[K]` (0 background, else thing + 1),
    `box_targets` `[P, 4]` for the `P` positives, which come first in each
    image, `positive` `[K]` (bool) and `gt_index` `[P]`, the positives'
    ground truth within their image.
    """
    rois, labels, box_targets, positive, gt_index = [], [], [], [], []
    for i, (image_proposals, target) in enumerate(zip(proposals, targets)):
        gt_boxes = target["boxes"].float()
        candidates = torch.cat([gt_boxes, image_proposals.float()])
        assigned = assign_boxes(
            box_iou_inclusive(gt_boxes, candidates),
            config.fg_iou_threshold,
            config.bg_iou_threshold,
            # The authors' config sets the low-quality minimum (min_pos_iou) to the negative threshold.
            config.bg_iou_threshold,
        )
        (pos,), (neg,) = sample_boxes([assigned], config.batch_size_per_image, config.positive_fraction)
        chosen = torch.cat([pos, neg])
        matched = assigned[pos]
        rois.append(F.pad(candidates[chosen], (1, 0), value=float(i)))
        labels.append(torch.cat([target["labels"][matched].long() + 1, torch.zeros_like(neg)]))
        box_targets.append(encode_boxes(candidates[pos], gt_boxes[matched], _stds(config)))
        positive.append(torch.arange(chosen.numel(), device=chosen.device) < pos.numel())
        gt_index.append(matched)
    return {
        "rois": torch.cat(rois),
        "labels": torch.cat(labels),
        "box_targets": torch.cat(box_targets),
        "positive": torch.cat(positive),
        "gt_index": torch.cat(gt_index),
    }


def box_losses(class_logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the sampled RoIs; smooth L1 of the positives' own-class deltas.

    Both are averages over all sampled RoIs, as in mmdetection.
    """
    loss_cls = F.cross_entropy(class_logits.float(), labels)
    positive = labels > 0
    own = deltas[positive, labels[positive]].float()
    loss_box = F.smooth_l1_loss(own, box_targets, beta=BOX_SMOOTH_L1_BETA, reduction="sum")
    return loss_cls, loss_box / max(labels.numel(), 1)


def mask_targets(gt_masks: Tensor, gt_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Binary targets `[P, size, size]`: mask `gt_masks[gt_index[p]]` cropped to `boxes[p]` and resized.

    Like mmdetection's crop of the whole pixels `int(x1)..int(x2)` followed by
    a bilinear resize, with 0.5 as the threshold.
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, size, size, dtype=torch.float32)
    corners = boxes.detach().float().trunc()
    sides = (corners[:, 2:] - corners[:, :2] + 1.0).clamp(min=1.0)
    crop = torch.cat([gt_index[:, None].to(corners.dtype), corners[:, :2], corners[:, :2] + sides], dim=1)
    resized = roi_align(gt_masks[:, None].float(), crop, size, 1.0, sampling_ratio=1, aligned=True)
    return (resized[:, 0] >= 0.5).float()


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of each positive's own-class mask logits."""
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    own = mask_logits[torch.arange(labels.numel(), device=labels.device), labels].float()
    return F.binary_cross_entropy_with_logits(own, targets)
