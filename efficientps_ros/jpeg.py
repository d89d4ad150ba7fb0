"""JPEG decoding through libjpeg-turbo, refusing what libjpeg warns is damaged.

Pillow drops libjpeg's warnings, so a stream cut short and closed again with
an end-of-image marker decodes without complaint, its missing part grey.
simplejpeg passes them on, and decodes as Pillow does, bit for bit.
"""
from __future__ import annotations

import re

import numpy as np
import simplejpeg

# The one warning that leaves the image whole: junk between the last scan and
# the end-of-image marker, which some webcams' MJPEG frames carry. libjpeg
# warns at the first damage it meets, so when that is this one, everything
# before it decoded cleanly.
_HARMLESS_WARNING = re.compile(r"^Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9$")


def decode_jpeg(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB of a JPEG: greyscale, YCbCr (or RGB), CMYK or YCCK.

    ValueError with libjpeg's message for data it cannot decode, and for data
    it would decode only with a warning (truncated, damaged, junk between
    scans), but junk before the end-of-image marker. `size` is the (height,
    width) the caller read from the header and checked: where libjpeg reads
    the header otherwise, as a crafted file can make it, the data is refused
    before anything is allocated.
    """
    height, width = simplejpeg.decode_jpeg_header(data)[:2]
    if (height, width) != tuple(size):
        raise ValueError(
            f"libjpeg reads the frame as {width}x{height} where its header was read as {size[1]}x{size[0]}"
        )
    pixels = np.empty((height, width, 3), np.uint8)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, buffer=pixels)
    except ValueError as error:
        if not _HARMLESS_WARNING.match(str(error)):
            raise
    # libjpeg raises a warning once the decode is over, so the image is whole in the buffer.
    return pixels
