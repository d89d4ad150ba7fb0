"""The instance head of EfficientPS: Mask R-CNN with depthwise-separable mask convs.

`InstanceHead` owns the three parameterised parts under the authors' names
(`rpn_head`, `bbox_head`, `mask_head`) and runs them: proposals, boxes,
masks in inference; the five losses in training.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import EfficientPSConfig
from .roi_heads import (
    BoxHead,
    MaskHead,
    box_losses,
    detect,
    mask_loss,
    mask_targets,
    roi_features,
    sample_rois,
)
from .rpn import RPNHead, base_anchors, grid_anchors, propose, rpn_loss

# Strides of P4, P8, P16 and P32; an anchor's base size is its level's stride.
STRIDES = (4, 8, 16, 32)


class InstanceHead(nn.Module):
    """RPN and RoI heads over the four FPN levels.

    `forward(features, image_sizes, targets=None)`:

    - `features`: `[P4, P8, P16, P32]`, each `[B, fpn_channels, H/s, W/s]`.
    - `image_sizes`: the unpadded `(height, width)` of each image in the batch.
    - `targets` (training): per image `boxes` `[N, 4]` (x1, y1, x2, y2 in
      pixels), `labels` `[N]` (thing index `0..num_things-1`) and `masks`
      `[N, H, W]` (bool or 0/1) at the padded input size.

    With targets it returns the losses `loss_rpn_cls`, `loss_rpn_reg`,
    `loss_cls`, `loss_box`, `loss_mask`. Without, one dict per image:
    `boxes` `[K, 4]` in input pixels, `scores` `[K]` (decreasing), `labels`
    `[K]` (thing index) and `mask_logits` `[K, 28, 28]` of each box's class.
    """

    def __init__(self, config: EfficientPSConfig):
        super().__init__()
        self.config = config
        num_classes = config.num_things + 1  # index 0 is the background
        self.rpn_head = RPNHead(config.fpn_channels, len(config.rpn.anchor_ratios))
        self.bbox_head = BoxHead(
            config.fpn_channels, config.roi.box_roi_size, config.roi.box_fc_channels, num_classes
        )
        self.mask_head = MaskHead(config.fpn_channels, config.roi.mask_channels, num_classes, config.head_norm_eps)
        anchors = torch.stack(
            [base_anchors(stride, config.rpn.anchor_scale, config.rpn.anchor_ratios) for stride in STRIDES]
        )
        self.register_buffer("base_anchors", anchors, persistent=False)

    def forward(
        self,
        features: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        _check_features(features, self.config.fpn_channels)
        _check_image_sizes(image_sizes, features[0].shape[0])
        if targets is not None:
            _check_targets(targets, len(image_sizes), self.config.num_things)
        objectness, deltas = self.rpn_head(features)
        anchors = [
            grid_anchors(self.base_anchors[level].float(), stride, tuple(feature.shape[-2:]))
            for level, (feature, stride) in enumerate(zip(features, STRIDES))
        ]
        if targets is None:
            return self._infer(features, objectness, deltas, anchors, image_sizes)
        return self._losses(features, objectness, deltas, anchors, image_sizes, targets)

    def _infer(self, features, objectness, deltas, anchors, image_sizes) -> list[dict[str, Tensor]]:
        rpn, roi = self.config.rpn, self.config.roi
        proposals = propose(
            objectness, deltas, anchors, image_sizes, rpn.pre_nms_top_n_test, rpn.post_nms_top_n_test, rpn
        )
        rois = _to_rois(proposals)
        class_logits, box_deltas = self.bbox_head(roi_features(features, STRIDES, rois, roi.box_roi_size, roi))
        detections = detect(class_logits, box_deltas, rois, image_sizes, roi)

        mask_rois = _to_rois([boxes for boxes, _, _ in detections])
        labels = torch.cat([labels for _, _, labels in detections])
        mask_logits = self.mask_head(roi_features(features, STRIDES, mask_rois, roi.mask_roi_size, roi))
        own = mask_logits[torch.arange(labels.numel(), device=labels.device), labels + 1]
        per_image = own.split([labels.numel() for _, _, labels in detections])
        return [
            {"boxes": boxes, "scores": scores, "labels": labels, "mask_logits": masks}
            for (boxes, scores, labels), masks in zip(detections, per_image)
        ]

    def _losses(self, features, objectness, deltas, anchors, image_sizes, targets) -> dict[str, Tensor]:
        rpn, roi = self.config.rpn, self.config.roi
        gt_boxes = [t["boxes"].float() for t in targets]
        loss_rpn_cls, loss_rpn_reg = rpn_loss(objectness, deltas, anchors, image_sizes, gt_boxes, rpn)
        proposals = propose(
            objectness, deltas, anchors, image_sizes, rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train, rpn
        )

        sampled = sample_rois(proposals, targets, roi)
        class_logits, box_deltas = self.bbox_head(
            roi_features(features, STRIDES, sampled["rois"], roi.box_roi_size, roi)
        )
        loss_cls, loss_box = box_losses(class_logits, box_deltas, sampled["labels"], sampled["box_targets"])

        positive = sampled["positive"]
        positive_rois = sampled["rois"][positive]
        if positive_rois.shape[0] == 0:
            loss_mask = features[0].sum() * 0.0
        else:
            mask_logits = self.mask_head(roi_features(features, STRIDES, positive_rois, roi.mask_roi_size, roi))
            size = mask_logits.shape[-1]
            targets_per_image = [
                mask_targets(t["masks"], gt, rois[:, 1:], size)
                for t, gt, rois in zip(targets, *_by_image(positive_rois, sampled["gt_index"], len(targets)))
            ]
            loss_mask = mask_loss(mask_logits, sampled["labels"][positive], torch.cat(targets_per_image))
        return {
            "loss_rpn_cls": loss_rpn_cls,
            "loss_rpn_reg": loss_rpn_reg,
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_mask": loss_mask,
        }


def _to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> `[K, 5]` rows of (image index, x1, y1, x2, y2)."""
    return torch.cat(
        [torch.cat([b.new_full((b.shape[0], 1), float(i)), b.float()], dim=1) for i, b in enumerate(boxes)]
    )


def _by_image(rois: Tensor, gt_index: Tensor, num_images: int) -> tuple[list[Tensor], list[Tensor]]:
    """Split positives, which come grouped by image, into per-image gt indices and RoIs."""
    counts = torch.bincount(rois[:, 0].long(), minlength=num_images).tolist()
    return list(gt_index.split(counts)), list(rois.split(counts))


def _check_features(features: Sequence[Tensor], channels: int) -> None:
    if len(features) != len(STRIDES):
        raise ValueError(f"features: expected {len(STRIDES)} FPN levels (P4, P8, P16, P32), got {len(features)}")
    for level, (feature, stride) in enumerate(zip(features, STRIDES)):
        if feature.dim() != 4 or feature.shape[1] != channels or feature.shape[0] != features[0].shape[0]:
            raise ValueError(
                f"features[{level}] (P{stride}): expected [B, {channels}, H, W] with the batch of P4, "
                f"got {list(feature.shape)}"
            )


def _check_image_sizes(image_sizes: Sequence[tuple[int, int]], batch: int) -> None:
    if len(image_sizes) != batch:
        raise ValueError(f"image_sizes: expected one (height, width) per image, {batch}, got {len(image_sizes)}")


def _check_targets(targets: Sequence[dict[str, Tensor]], batch: int, num_things: int) -> None:
    if len(targets) != batch:
        raise ValueError(f"targets: expected one dict per image, {batch}, got {len(targets)}")
    for i, target in enumerate(targets):
        missing = {"boxes", "labels", "masks"} - set(target)
        if missing:
            raise ValueError(f"targets[{i}]: missing {sorted(missing)}")
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        n = boxes.shape[0] if boxes.dim() == 2 else -1
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes']: expected [N, 4], got {list(boxes.shape)}")
        if labels.shape != (n,) or masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(
                f"targets[{i}]: expected labels [{n}] and masks [{n}, H, W] for {n} boxes, "
                f"got {list(labels.shape)} and {list(masks.shape)}"
            )
        if n and (labels.min() < 0 or labels.max() >= num_things):
            raise ValueError(f"targets[{i}]['labels']: thing indices must be in 0..{num_things - 1}")
