"""Procedural street scenes with exact panoptic ground truth.

They stand in for a camera where no real data may be used: the demo streams
them, the tests feed them to the node, and training on them gives a small
model that knows roads from cars. Each scene is drawn from a seed, so a frame
is reproducible anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.config import CITYSCAPES_CLASSES, VOID_TRAIN_ID

_BY_NAME = {c.name: c for c in CITYSCAPES_CLASSES}


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    semantic: np.ndarray  # HxW uint8 train ids, 255 void
    instance: np.ndarray  # HxW uint16, 0 = stuff, k = instance k
    instance_classes: list[int]  # train id of instance k at index k - 1


def _fill(scene: Scene, mask: np.ndarray, name: str, rng: np.random.Generator, instance: int = 0) -> None:
    """Paint a region with its class colour, lightly varied, and label it."""
    cls = _BY_NAME[name]
    shade = rng.integers(-18, 19, size=3)
    color = np.clip(np.array(cls.color) + shade, 0, 255).astype(np.uint8)
    scene.image[mask] = color
    scene.semantic[mask] = cls.train_id
    scene.instance[mask] = instance


def _rect(height: int, width: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[max(int(y0), 0) : max(int(y1), 0), max(int(x0), 0) : max(int(x1), 0)] = True
    return mask


def street_scene(height: int = 256, width: int = 512, seed: int = 0) -> Scene:
    """Sky, buildings, vegetation, road with sidewalk, poles, cars and people."""
    rng = np.random.default_rng(seed)
    scene = Scene(
        image=np.zeros((height, width, 3), np.uint8),
        semantic=np.full((height, width), VOID_TRAIN_ID, np.uint8),
        instance=np.zeros((height, width), np.uint16),
        instance_classes=[],
    )
    horizon = int(height * rng.uniform(0.38, 0.5))
    _fill(scene, _rect(height, width, 0, horizon, 0, width), "sky", rng)
    _draw_buildings(scene, horizon, rng)
    _draw_ground(scene, horizon, rng)
    _draw_poles(scene, horizon, rng)
    _draw_objects(scene, horizon, rng)
    noise = rng.integers(-6, 7, size=scene.image.shape)
    scene.image = np.clip(scene.image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return scene


def _draw_buildings(scene: Scene, horizon: int, rng: np.random.Generator) -> None:
    height, width = scene.semantic.shape
    x = 0
    while x < width:
        w = int(rng.uniform(0.1, 0.3) * width)
        top = int(horizon * rng.uniform(0.1, 0.7))
        name = "building" if rng.random() < 0.8 else "vegetation"
        _fill(scene, _rect(height, width, top, horizon, x, x + w), name, rng)
        x += w


def _draw_ground(scene: Scene, horizon: int, rng: np.random.Generator) -> None:
    height, width = scene.semantic.shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    # The road widens towards the camera, like a real perspective.
    depth = np.clip((rows - horizon) / max(height - horizon, 1), 0, 1)
    center = width * rng.uniform(0.4, 0.6)
    half = width * (0.05 + 0.55 * depth)
    road = (rows >= horizon) & (np.abs(cols - center) <= half)
    side = (rows >= horizon) & ~road
    _fill(scene, side, "sidewalk", rng)
    terrain = side & (np.abs(cols - center) > half + width * 0.25)
    _fill(scene, terrain, "terrain", rng)
    _fill(scene, road, "road", rng)


def _draw_poles(scene: Scene, horizon: int, rng: np.random.Generator) -> None:
    height, width = scene.semantic.shape
    for _ in range(rng.integers(1, 4)):
        x = rng.uniform(0, width)
        bottom = rng.uniform(horizon + 0.1 * height, height)
        _fill(scene, _rect(height, width, horizon * 0.3, bottom, x, x + max(2, width * 0.008)), "pole", rng)
        sign = "traffic sign" if rng.random() < 0.5 else "traffic light"
        _fill(scene, _rect(height, width, horizon * 0.3, horizon * 0.3 + 0.05 * height, x - 4, x + 8), sign, rng)


def _draw_objects(scene: Scene, horizon: int, rng: np.random.Generator) -> None:
    """Cars and people, far ones first so that near ones occlude them."""
    height, width = scene.semantic.shape
    objects = []
    for _ in range(rng.integers(2, 7)):
        bottom = rng.uniform(horizon + 0.08 * height, height)
        objects.append((bottom, "car" if rng.random() < 0.6 else "person"))
    for bottom, name in sorted(objects):
        scale = (bottom - horizon) / max(height - horizon, 1) + 0.15
        w = width * (0.22 if name == "car" else 0.05) * scale
        h = height * (0.22 if name == "car" else 0.4) * scale
        x = rng.uniform(0, width - w)
        mask = _rect(height, width, bottom - h, bottom, x, x + w)
        if not mask.any():
            continue
        scene.instance_classes.append(_BY_NAME[name].train_id)
        _fill(scene, mask, name, rng, instance=len(scene.instance_classes))
        if name == "car":
            window = _rect(height, width, bottom - h, bottom - 0.6 * h, x + 0.2 * w, x + 0.8 * w)
            scene.image[window & (scene.instance == len(scene.instance_classes))] = (150, 180, 200)
