"""The whole EfficientPS network: backbone, 2-way FPN, semantic and instance heads.

Training and inference share one forward. With targets it returns the losses;
without, the raw outputs the panoptic fusion consumes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .config import EfficientPSConfig
from .fpn import TwoWayFPN
from .instance_head import InstanceHead
from .semantic_head import SemanticHead, semantic_loss


class EfficientPS(nn.Module):
    def __init__(self, config: EfficientPSConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        self.fpn = TwoWayFPN(list(self.backbone.out_channels), config.fpn_channels, eps=config.head_norm_eps)
        self.semantic_head = SemanticHead(config)
        self.instance_head = InstanceHead(config)

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict:
        """images: [B, 3, H, W] normalised, H and W multiples of `config.size_divisor`.

        image_sizes: the unpadded (h, w) of each image inside the batch.
        targets (training): per image `semantic` [H, W] train ids (255 ignored),
        `boxes` [N, 4] xyxy, `labels` [N] thing index, `masks` [N, H, W].
        Returns the losses with targets, else `semantic_logits` [B, C, H, W]
        and `detections` (one dict per image, see `InstanceHead`).
        """
        features = self.fpn(self.backbone(images))
        semantic_logits = self.semantic_head(features, images.shape[-2:])
        if targets is not None:
            semantic_target = torch.stack([t["semantic"] for t in targets])
            losses = {"loss_semantic": semantic_loss(semantic_logits, semantic_target)}
            losses.update(self.instance_head(features, image_sizes, targets))
            return losses
        return {"semantic_logits": semantic_logits, "detections": self.instance_head(features, image_sizes)}


def parameter_counts(model: EfficientPS) -> dict[str, int]:
    """Trainable parameters per top-level module, and in total."""
    counts = {
        name: sum(p.numel() for p in module.parameters() if p.requires_grad)
        for name, module in model.named_children()
    }
    counts["total"] = sum(counts.values())
    return counts
