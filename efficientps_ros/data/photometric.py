"""Photometric augmentation: brightness, contrast, saturation and hue.

A camera's exposure and white balance change from frame to frame; a model
trained on one exposure reads a darker road as another class. Each call
draws new factors, so the training images cover the range a camera gives.
"""
from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma, the grey that contrast and saturation blend towards.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB <-> YIQ: hue is the angle of the (I, Q) chroma vector.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def photometric_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.5,
    contrast: float = 0.3,
    saturation: float = 0.4,
    hue: float = 0.05,
) -> np.ndarray:
    """`image` (HxWx3 uint8 RGB) with random brightness, contrast, saturation and hue.

    Brightness, contrast and saturation factors are drawn from [1 - x, 1 + x];
    the hue turns by up to `hue` of a full circle either way. 0 leaves that
    property unchanged. Returns a new HxWx3 uint8 image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"photometric_jitter takes an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
    x = image.astype(np.float32)
    x *= rng.uniform(1 - brightness, 1 + brightness)
    grey = x @ _LUMA
    x = _blend(x, grey.mean(), rng.uniform(1 - contrast, 1 + contrast))
    x = _blend(x, (x @ _LUMA)[..., None], rng.uniform(1 - saturation, 1 + saturation))
    x = rotate_hue(x, rng.uniform(-hue, hue) * 2 * np.pi)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _blend(x: np.ndarray, towards, factor: float) -> np.ndarray:
    """`factor` 1 keeps `x`, 0 gives `towards`, above 1 pushes away from it."""
    return towards + factor * (x - towards)


def rotate_hue(x: np.ndarray, angle: float) -> np.ndarray:
    """Float HxWx3 RGB with its chroma turned by `angle` radians, luma kept."""
    if angle == 0:
        return x
    c, s = np.cos(angle), np.sin(angle)
    turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    return x @ (_YIQ_TO_RGB @ turn @ _RGB_TO_YIQ).T
