"""How large an input image may be, decided from its size alone, before it is decoded.

The network's cost follows the area it sees: the image padded on both sides
to a multiple of the size divisor, or the fixed inference size. A 1x100000
image is padded to 32x100000 rows and columns, 32 times its own area, so the
limit bounds the padded area, not the image's. Extreme aspect ratios are no
camera's and are refused outright: at most 16:1 either way, which leaves room
for panoramic strips (a 360-degree camera gives about 4:1 to 8:1).
"""
from __future__ import annotations

import math

MAX_ASPECT_RATIO = 16


def padded_side(side: int, divisor: int) -> int:
    """`side` rounded up to a multiple of `divisor`."""
    return -(-side // divisor) * divisor


def network_size(
    height: int, width: int, size_divisor: int, inference_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(height, width) of the padded input the network sees for an image of this size."""
    if inference_size is not None:
        height, width = inference_size
    return padded_side(height, size_divisor), padded_side(width, size_divisor)


def check_image_size(
    height: int,
    width: int,
    max_pixels: int,
    size_divisor: int = 1,
    inference_size: tuple[int, int] | None = None,
) -> None:
    """Refuse an empty image, an aspect ratio beyond 16:1, or an image whose own
    area or whose padded network input exceeds `max_pixels`; ValueError says which.

    `size_divisor` is the model's (1 where the padding is not known); with a
    fixed `inference_size` the network sees that size, whatever the image's.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image: {width}x{height} pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {width}x{height} has an aspect ratio of {_ratio(ratio)}:1; allowed: at most {MAX_ASPECT_RATIO}:1"
        )
    if height * width > max_pixels:
        raise ValueError(f"image of {width}x{height} exceeds max_image_pixels ({max_pixels})")
    net_height, net_width = network_size(height, width, size_divisor, inference_size)
    if net_height * net_width > max_pixels:
        how = "resized and padded" if inference_size is not None else "padded"
        raise ValueError(
            f"image of {width}x{height} is {how} to {net_width}x{net_height} for the network "
            f"(a multiple of {size_divisor}), {net_width * net_height} pixels, "
            f"which exceeds max_image_pixels ({max_pixels})"
        )


def _ratio(ratio: float) -> str:
    return str(math.floor(ratio)) if ratio >= 100 else f"{ratio:.3g}"
