"""A pinhole camera over the ground plane.

World axes: x to the right of the street, y up, z along the street. The
camera looks along +z turned by `yaw` about y, with its optical axis level, so
the horizon is the image row `cy`. Depths are camera-z distances, which is
what a per-pixel depth test needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

NEAR = 0.3  # metres; geometry closer than this is clipped away


@dataclass
class Camera:
    height: int  # image rows
    width: int  # image columns
    focal: float  # pixels
    cy: float  # horizon row
    position: np.ndarray  # (3,) world
    yaw: float = 0.0  # radians, positive turns the view to the right

    @cached_property
    def rotation(self) -> np.ndarray:
        """Camera axes (right, up, forward) as the columns of a world rotation."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    @cached_property
    def rays(self) -> np.ndarray:
        """HxWx3 world direction of each pixel centre, scaled to unit camera depth."""
        u = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        v = (self.cy - np.arange(self.height) - 0.5) / self.focal
        cam = np.empty((self.height, self.width, 3))
        cam[..., 0] = u[None, :]
        cam[..., 1] = v[:, None]
        cam[..., 2] = 1.0
        return cam @ self.rotation.T

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] world points -> [N, 3] camera coordinates (right, up, depth)."""
        return (points - self.position) @ self.rotation

    def project(self, cam_points: np.ndarray) -> np.ndarray:
        """[N, 3] camera coordinates in front of the camera -> [N, 2] pixel (column, row)."""
        z = cam_points[:, 2]
        return np.stack(
            [self.width / 2 + self.focal * cam_points[:, 0] / z, self.cy - self.focal * cam_points[:, 1] / z], axis=1
        )


def clip_near(cam_points: np.ndarray) -> np.ndarray:
    """A convex polygon ([N, 3] camera coordinates, in order) cut to depth >= NEAR."""
    if cam_points[:, 2].min() >= NEAR:
        return cam_points
    out = []
    count = len(cam_points)
    for i in range(count):
        a, b = cam_points[i], cam_points[(i + 1) % count]
        a_in, b_in = a[2] >= NEAR, b[2] >= NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)
