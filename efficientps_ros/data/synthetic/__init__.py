"""Procedural street scenes with exact panoptic ground truth.

They stand in for a camera where no real data may be used: the demo streams
them, the tests feed them to the node, and training on them gives a model
that has to tell classes apart by shape and context. A pinhole camera looks
down a street of facades, pavements and traffic (`world`); the renderer
(`render`) gives every pixel its colour, class and instance, with sunlight,
shadows, exposure and blur. Each scene is drawn from a seed, so a frame is
reproducible anywhere.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .camera import Camera
from .renderer import make_look, render
from .scene import Scene, scene_seed
from .world import LANE, make_street

__all__ = ["Scene", "scene_seed", "street_scene", "street_drive", "DRIVE_FPS"]

DRIVE_FPS = 10.0


def street_scene(height: int = 256, width: int = 512, seed: int = 0) -> Scene:
    """One frame of a street drawn from `seed`: sky, buildings, road, traffic and people."""
    return next(street_drive(seed, height, width, frames=1))


def street_drive(seed: int, height: int = 256, width: int = 512, frames: int | None = None) -> Iterator[Scene]:
    """Consecutive frames at DRIVE_FPS of a car driving down the street of `seed`.

    The camera moves forward at a steady speed and the traffic and people
    move on their own; `frames` None goes on for ever.
    """
    if height < 8 or width < 8:
        raise ValueError(f"street scenes need at least 8x8 pixels, got {height}x{width}")
    street = make_street(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    look = make_look(rng, height)
    lanes = max(2, int(2 * street.half_width / LANE))
    lane_width = 2 * street.half_width / lanes
    # A lane right of the middle, driving with the traffic.
    lane = int(rng.integers(lanes // 2, max(lanes // 2 + 1, lanes - 1)))
    x = street.centre - street.half_width + lane_width * (lane + 0.5) + rng.normal(0, 0.25)
    camera_height = rng.uniform(1.2, 1.7)
    focal = width * rng.uniform(0.75, 1.05)
    horizon = height * rng.uniform(0.38, 0.5)
    yaw = rng.normal(0, 0.05)
    speed = rng.uniform(4, 12)
    start = rng.uniform(0, 40)
    frame = 0
    while frames is None or frame < frames:
        time = frame / DRIVE_FPS
        camera = Camera(height, width, focal, horizon, np.array([x, camera_height, start + speed * time]), yaw)
        noise = np.random.default_rng(np.random.SeedSequence([seed, 4, frame]))
        yield render(street, camera, time, look, noise)
        frame += 1
