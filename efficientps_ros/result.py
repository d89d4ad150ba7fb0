"""What the predictor returns for one image: plain numpy, no torch, no ROS."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Instance:
    """One thing instance. `id` is k in the instance map (1-based, dense)."""

    id: int
    class_id: int  # train id of the class
    class_name: str
    score: float
    # x0, y0, x1, y1 in input pixels: the box around the instance's pixels,
    # edges exclusive (a one-pixel instance at (x, y) has x1 = x + 1).
    box: tuple[float, float, float, float]


@dataclass
class PanopticResult:
    """Maps at the input image's resolution.

    semantic: HxW uint8 train ids, 255 = void.
    instance: HxW uint16, 0 = no instance, k = `instances[k - 1]`.
    panoptic: HxW int32, Cityscapes convention: stuff pixel = label id,
        thing pixel = label id * 1000 + k, void = 0.
    """

    semantic: np.ndarray
    instance: np.ndarray
    panoptic: np.ndarray
    instances: list[Instance] = field(default_factory=list)
    # Seconds spent in the network and the fusion, for diagnostics.
    model_time: float = 0.0
    # HxWx3 uint8, painted with the maps where the predictor was asked to (`set_overlay`), at this alpha.
    overlay: np.ndarray | None = None
    overlay_alpha: float | None = None
