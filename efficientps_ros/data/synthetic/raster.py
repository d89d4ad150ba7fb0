"""A depth-tested canvas: faces and blobs in, colour and labels out.

Every primitive is filled inside its own bounding box only, so a scene costs
what its visible surfaces cover rather than a full-image pass per object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .camera import Camera, clip_near

VOID = 255

# colour(a, b) -> [N, 3] float RGB from a face's local coordinates in metres.
Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Label:
    train_id: int  # 255 for void
    instance: int = 0  # 0 for stuff and void


class Canvas:
    def __init__(self, camera: Camera):
        self.camera = camera
        h, w = camera.height, camera.width
        self.image = np.zeros((h, w, 3), np.float32)
        self.semantic = np.full((h, w), VOID, np.uint8)
        self.instance = np.zeros((h, w), np.int32)
        self.depth = np.full((h, w), np.inf, np.float32)

    def polygon(self, pixels: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """The bounding-box window and inside mask of a convex polygon ([N, 2] column, row)."""
        if len(pixels) < 3:
            return None
        h, w = self.semantic.shape
        x0, y0 = np.floor(pixels.min(0)).astype(int)
        x1, y1 = np.ceil(pixels.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1) + 0.5
        ys = (np.arange(y0, y1) + 0.5)[:, None]
        points = pixels.tolist()
        edges = list(zip(points, points[1:] + points[:1]))
        # Twice the signed area: the sign says which side is inside.
        orientation = 1.0 if sum(ax * by - bx * ay for (ax, ay), (bx, by) in edges) >= 0 else -1.0
        inside = np.ones((y1 - y0, x1 - x0), bool)
        for (ax, ay), (bx, by) in edges:
            inside &= orientation * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= 0
        return (slice(y0, y1), slice(x0, x1)), inside

    def face(self, corners: np.ndarray, paint: Painter, label: Label, shade: float) -> None:
        """A planar quad (4 world corners: origin, +a, +a+b, +b) painted in its own coordinates."""
        camera = self.camera
        cam = clip_near(camera.to_camera(corners))
        if len(cam) < 3:
            return
        found = self.polygon(camera.project(cam))
        if found is None:
            return
        window, inside = found
        origin, along, up = corners[0], corners[1] - corners[0], corners[3] - corners[0]
        along, up = along / np.sqrt(along @ along), up / np.sqrt(up @ up)
        normal = np.array([along[1] * up[2] - along[2] * up[1], along[2] * up[0] - along[0] * up[2],
                           along[0] * up[1] - along[1] * up[0]])
        rays = camera.rays[window][inside]
        facing = rays @ normal
        facing[np.abs(facing) < 1e-9] = 1e-9
        depth = ((origin - camera.position) @ normal) / facing
        nearer = (depth > 0) & (depth < self.depth[window][inside])
        if not nearer.any():
            return
        rows, cols = np.nonzero(inside)
        rows, cols, depth = rows[nearer] + window[0].start, cols[nearer] + window[1].start, depth[nearer]
        hit = camera.position + depth[:, None] * rays[nearer] - origin
        self._write(rows, cols, depth, paint(hit @ along, hit @ up) * shade, label)

    def blob(self, centre: np.ndarray, radius: float, ragged: Callable[[np.ndarray], np.ndarray],
             paint: Painter, label: Label) -> None:
        """A camera-facing disc of `radius` metres at world `centre`, its rim scaled by ragged(angle)."""
        camera = self.camera
        cam = camera.to_camera(centre[None])[0]
        if cam[2] < 1.0:
            return
        cx, cy = camera.project(cam[None])[0]
        r = camera.focal * radius / cam[2]
        h, w = self.semantic.shape
        x0, x1 = max(int(cx - 1.5 * r), 0), min(int(cx + 1.5 * r) + 1, w)
        y0, y1 = max(int(cy - 1.5 * r), 0), min(int(cy + 1.5 * r) + 1, h)
        if x0 >= x1 or y0 >= y1:
            return
        dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
        dist = np.hypot(dx, dy) / max(r, 1e-6)
        inside = dist <= ragged(np.arctan2(dy, dx))
        window = (slice(y0, y1), slice(x0, x1))
        inside &= cam[2] < self.depth[window]
        rows, cols = np.nonzero(inside)
        if not len(rows):
            return
        # The texture is laid on the disc in metres, seen flat.
        metres = radius / max(r, 1e-6)
        a = (cols + x0 + 0.5 - cx) * metres
        b = (cy - rows - y0 - 0.5) * metres
        # A sphere's shading: brighter towards the upper rim.
        shade = 0.75 + 0.35 * np.clip(b / radius, -1, 1) - 0.25 * np.clip(dist[rows, cols], 0, 1) ** 2
        self._write(rows + y0, cols + x0, np.full(len(rows), cam[2]), paint(a, b) * shade[:, None], label)

    def _write(self, rows, cols, depth, colour, label: Label) -> None:
        self.image[rows, cols] = colour
        self.depth[rows, cols] = depth
        self.semantic[rows, cols] = label.train_id
        self.instance[rows, cols] = label.instance
