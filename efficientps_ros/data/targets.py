"""Ground truth in the form the network's losses take, and batches of it.

A sample is a uint8 image with its semantic map (train ids, 255 void) and its
instance map (0 none, k for instance k) plus the train id of each instance.
`make_target` turns the maps into the network's target dict; `collate` pads
a list of samples into one normalised batch. Boxes follow the network's
convention: `[x1, y1, x2, y2]` with inclusive far corners, so a one-pixel
instance at (x, y) has the box `[x, y, x, y]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..model.boxes import segment_boxes
from ..model.config import VOID_TRAIN_ID, EfficientPSConfig
from .synthetic import Scene


@dataclass
class Batch:
    """Network inputs for one training step."""

    images: Tensor  # [B, 3, H, W] normalised, padded with zeros (the mean colour)
    image_sizes: list[tuple[int, int]]  # unpadded (h, w) of each image
    targets: list[dict[str, Tensor]]  # per image, see `make_target`


def padded_size(size: tuple[int, int], divisor: int) -> tuple[int, int]:
    """`size` rounded up to multiples of `divisor` on both sides."""
    return size[0] + (-size[0] % divisor), size[1] + (-size[1] % divisor)


def instance_boxes(instance: np.ndarray, count: int) -> np.ndarray:
    """[count, 4] float32 inclusive boxes around the pixels of ids 1..count.

    An id without pixels gets the box [0, 0, -1, -1] (empty).
    """
    boxes = segment_boxes(torch.from_numpy(instance.astype(np.int64)), count)
    # segment_boxes' far edges are exclusive; the network's are the last pixel.
    boxes[:, 2:] -= 1
    boxes[boxes[:, 2] < 0] = torch.tensor([0.0, 0.0, -1.0, -1.0])
    return boxes.numpy()


def make_target(
    semantic: np.ndarray,
    instance: np.ndarray,
    instance_classes: Sequence[int],
    config: EfficientPSConfig,
    padded: tuple[int, int] | None = None,
    crowd: Sequence[bool] = (),
) -> dict[str, Tensor]:
    """The network's target dict for one image, padded to `padded` (h, w).

    semantic: HxW train ids, 255 void; instance: HxW, k for the k-th entry of
    `instance_classes` (train ids). Instances of stuff classes, without
    pixels, or flagged in `crowd` are left out: a crowd is one region of many
    objects, no instance to learn, though its pixels still teach the
    semantic head their class. Returns `semantic` [H', W'] long (255 in the padding),
    `boxes` [N, 4] float32, `labels` [N] long thing index, `masks` [N, H', W'] uint8.
    """
    height, width = semantic.shape
    padded = padded or (height, width)
    if padded[0] < height or padded[1] < width:
        raise ValueError(f"padded size {padded} is smaller than the maps' {(height, width)}")
    sem = torch.full(padded, VOID_TRAIN_ID, dtype=torch.long)
    sem[:height, :width] = torch.from_numpy(semantic.astype(np.int64))
    boxes = instance_boxes(instance, len(instance_classes))
    keep = [
        k for k, train_id in enumerate(instance_classes)
        if config.classes[train_id].is_thing and boxes[k, 2] >= 0 and not (k < len(crowd) and crowd[k])
    ]
    masks = torch.zeros((len(keep), *padded), dtype=torch.uint8)
    ids = torch.from_numpy(instance.astype(np.int64))
    for row, k in enumerate(keep):
        masks[row, :height, :width] = ids == k + 1
    return {
        "semantic": sem,
        "boxes": torch.from_numpy(boxes[keep]).reshape(-1, 4),
        "labels": torch.tensor([instance_classes[k] - config.num_stuff for k in keep], dtype=torch.long),
        "masks": masks,
    }


def scene_target(scene: Scene, config: EfficientPSConfig, padded: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """`make_target` for a scene, its crowds left out."""
    return make_target(scene.semantic, scene.instance, scene.instance_classes, config, padded, scene.crowd)


def normalize(image: np.ndarray, config: EfficientPSConfig, padded: tuple[int, int] | None = None) -> Tensor:
    """HxWx3 uint8 RGB -> [3, H', W'] float, normalised, zero-padded at the bottom and right."""
    height, width = image.shape[:2]
    padded = padded or (height, width)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    mean = torch.tensor(config.pixel_mean).view(3, 1, 1)
    std = torch.tensor(config.pixel_std).view(3, 1, 1)
    out = torch.zeros((3, *padded))
    out[:, :height, :width] = (x - mean) / std
    return out


def hflip(image: Tensor, target: dict[str, Tensor], width: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror an unpadded-width `width` image and its target left to right.

    The tensors may be padded on the right: only the first `width` columns are
    mirrored, so the padding stays where the network expects it.
    """
    flipped = {key: value.clone() for key, value in target.items()}
    image = image.clone()
    image[..., :width] = image[..., :width].flip(-1)
    flipped["semantic"][..., :width] = target["semantic"][..., :width].flip(-1)
    flipped["masks"][..., :width] = target["masks"][..., :width].flip(-1)
    boxes = target["boxes"]
    # Inclusive corners: column x maps to width - 1 - x, and the sides swap.
    flipped["boxes"] = torch.stack(
        [width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0], boxes[:, 3]], dim=1
    )
    return image, flipped


def collate(
    scenes: Sequence[Scene],
    config: EfficientPSConfig,
    flip_probability: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Batch:
    """One padded, normalised batch of scenes, each mirrored with `flip_probability`."""
    if not scenes:
        raise ValueError("collate needs at least one scene")
    rng = rng or np.random.default_rng()
    sizes = [tuple(scene.semantic.shape) for scene in scenes]
    padded = padded_size((max(h for h, _ in sizes), max(w for _, w in sizes)), config.size_divisor)
    images, targets = [], []
    for scene, (_, width) in zip(scenes, sizes):
        image = normalize(scene.image, config, padded)
        target = scene_target(scene, config, padded)
        if rng.random() < flip_probability:
            image, target = hflip(image, target, width)
        images.append(image)
        targets.append(target)
    return Batch(torch.stack(images), sizes, targets)
