"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge or OpenCV.

Incoming images become views of the message's own buffer (no copy), honouring
row padding (`step`) and byte order (`is_bigendian`). Outgoing images are filled
with `ndarray.tobytes()`, the one fast way to set `msg.data` from rclpy: handing
it an ndarray or a memoryview costs hundreds of milliseconds for a 6 MB frame.
Faster still, `array_to_serialized_image` gives the serialised message itself,
for publishing or a bag, with one copy of the pixels.

`to_rgb8` turns any colour, mono, Bayer or YUV 4:2:2 encoding into the HxWx3
uint8 RGB array the model eats. Compressed images go through libjpeg-turbo (jpeg) and Pillow (png).
"""
from __future__ import annotations

import io
import re
import sys
from collections.abc import Container
from typing import NamedTuple, Optional, Union

import numpy as np
from PIL import Image as PILImage
from PIL import PngImagePlugin
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..input_limits import check_image_size
from ..jpeg import decode_jpeg
from .cdr import serialized_image

# encoding -> (numpy dtype without byte order, channels per pixel). YUV 4:2:2
# holds two bytes per pixel: `yuv422`/`uyvy` orders them U Y V Y over a pixel
# pair, `yuv422_yuy2`/`yuyv` orders them Y U Y V.
_LAYOUTS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "mono16": ("u2", 1),
    "rgb16": ("u2", 3), "bgr16": ("u2", 3), "rgba16": ("u2", 4), "bgra16": ("u2", 4),
    **{f"bayer_{p}8": ("u1", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": ("u2", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    "yuv422": ("u1", 2), "uyvy": ("u1", 2), "yuv422_yuy2": ("u1", 2), "yuyv": ("u1", 2),
    **{
        f"{depth}C{k}": (dtype, k)
        for depth, dtype in (("8U", "u1"), ("8S", "i1"), ("16U", "u2"), ("16S", "i2"),
                             ("32S", "i4"), ("32F", "f4"), ("64F", "f8"))
        for k in (1, 2, 3, 4)
    },
}

# Colour encodings: which source channel feeds R, G and B, and the right shift
# that brings the samples to 8 bits.
_RGB_SOURCES: dict[str, tuple[tuple[int, int, int], int]] = {
    "rgb8": ((0, 1, 2), 0), "bgr8": ((2, 1, 0), 0),
    "rgba8": ((0, 1, 2), 0), "bgra8": ((2, 1, 0), 0),
    "rgb16": ((0, 1, 2), 8), "bgr16": ((2, 1, 0), 8),
    "rgba16": ((0, 1, 2), 8), "bgra16": ((2, 1, 0), 8),
    "mono8": ((0, 0, 0), 0), "mono16": ((0, 0, 0), 8),
}

# Index of the luma byte within each two-byte YUV 4:2:2 pixel.
_YUV_LUMA_INDEX = {"yuv422": 1, "uyvy": 1, "yuv422_yuy2": 0, "yuyv": 0}

_COMPRESSED_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
# PNG goes to Pillow's own class for it. Image.open would apply Pillow's global
# decompression-bomb limit (a warning above 89 M pixels, an error above 179 M),
# overriding `max_pixels`, and when no plugin accepts a file it names only the
# stream object, not the reason the plugin gave. The class leaves that global
# alone, as other code and other decoding threads expect to find it.
# JPEG goes to libjpeg-turbo, whose warnings refuse a damaged frame (`jpeg.py`).
# simplejpeg turns greyscale, YCbCr (or Adobe RGB), CMYK and YCCK into RGB, the
# last two within 2 levels of Pillow's conversion; 2 components, or more than
# 4, have no colour meaning it knows. It refuses sampling factors outside the
# layouts it names (4:4:4, 4:2:2, 4:2:0 ..., a fourth component sampled as
# the first), saying it "could not determine subsampling level".
_JPEG_COMPONENTS = {1: "greyscale", 3: "YCbCr or RGB", 4: "CMYK or YCCK"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# The IHDR chunk's length, always 13, and type, which must come first.
_PNG_HEADER_START = b"\x00\x00\x00\x0dIHDR"
# Bit depths each PNG colour type may have (PNG specification, table 11.1).
_PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Encoders write the pixels in IDAT chunks of 8 KiB (libpng, hence OpenCV) to
# 64 KiB (Pillow) or more, and a handful of other chunks. Pillow reads each
# chunk in Python, one to three microseconds apiece, so a few megabytes of
# empty chunks would take seconds. Allowed: 4096 chunks, room for an encoder writing
# one IDAT per row of a 4096-row image however small, plus one per KiB of data.
# That is eight times what 8 KiB IDATs need at any size: a 1<<30-pixel 16-bit
# RGBA image, 8 GiB before compression, would be 1 M such chunks against 8 M.
_PNG_MAX_CHUNKS = 4096
_PNG_BYTES_PER_EXTRA_CHUNK = 1024
# SOF0-2: the coding processes where each 8x8 block costs at least one bit.
# Arithmetic coding can spend less, so no size could prove such data complete.
_JPEG_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)
_JPEG_PROGRESSIVE_FRAME = 0xC2
_JPEG_START_OF_SCAN = b"\xff\xda"
# re finds this two-byte marker about three times as fast as bytes.find or
# bytes.count do (600 against 200 microseconds in a 1024x2048 frame's 700 KB).
_JPEG_START_OF_SCAN_SEARCH = re.compile(re.escape(_JPEG_START_OF_SCAN))
# Each component's 64 coefficients (DC and 63 AC), as bits: all set once coded to full precision.
_JPEG_ALL_COEFFICIENTS = (1 << 64) - 1
# Bytes after the end-of-image marker some encoders pad with (zeros or 0xFF).
_JPEG_TAIL_PADDING = 64
# Real files have a dozen segments before the first scan, up to a few hundred
# with a long ICC profile. The header is read here in Python before libjpeg
# reads it again: millions of tiny crafted ones would take seconds.
_JPEG_MAX_HEADER_SEGMENTS = 1024
# Fill bytes (extra 0xFF before a marker) are optional padding; libjpeg never
# writes them, and the encoders that pad with them write a few. More is no
# camera's, and each costs the header's reading here a step.
_JPEG_MAX_FILL_BYTES = 8192
_JPEG_FILL = re.compile(rb"\xff+")
# Markers that begin no segment: a stuffed 0x00, TEM, RST0..RST7 and a second start of image.
_JPEG_NOT_SEGMENTS = frozenset((0x00, 0x01, *range(0xD0, 0xD9)))
# libjpeg's default progressive script has 10 scans (6 for greyscale), and
# tuned scripts a few dozen at most. Each scan is another pass over every
# coefficient block, whatever few bytes it holds: one scan repeated a thousand
# times costs a thousand times the CPU. 100 bounds the decode at ten times a
# default progressive one.
_JPEG_MAX_SCANS = 100
# What Pillow and simplejpeg raise for a payload they cannot decode, including absurd sizes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PILImage.DecompressionBombError)

ImageOrArray = Union[Image, np.ndarray]


def supported_encodings() -> list[str]:
    """Every encoding `image_to_array` and `array_to_image` accept."""
    return list(_LAYOUTS)


def _layout(encoding: str) -> tuple[str, int]:
    try:
        return _LAYOUTS[encoding]
    except KeyError:
        named = ", ".join(e for e in _LAYOUTS if not e[0].isdigit())
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {named}, and the generic "
            "types {8U,8S,16U,16S,32S,32F,64F}C{1,2,3,4} (e.g. 8UC3, 16UC1, 32FC1)"
        ) from None


def image_to_array(msg: Image) -> np.ndarray:
    """A view of `msg.data` as HxW (one channel) or HxWxC, without copying.

    Padded rows (`step` larger than a row) give a strided view. Multi-byte
    samples keep the message's byte order: a big-endian image comes back with a
    big-endian dtype (e.g. `>u2`), whose values read correctly on any machine.
    The view shares memory with the message, so writing to it changes `msg.data`.
    """
    dtype_code, channels = _layout(msg.encoding)
    height, width, step = msg.height, msg.width, msg.step
    if height == 0 or width == 0:
        raise ValueError(f"empty {msg.encoding} image: {width}x{height} pixels")
    dtype = np.dtype(dtype_code).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"{msg.encoding} image {width}x{height}: step {step} is smaller than one row "
            f"of {row_bytes} bytes (width {width} x {channels * dtype.itemsize} bytes per pixel)"
        )
    expected = step * height
    if len(msg.data) != expected:
        problem = "truncated" if len(msg.data) < expected else "size mismatch"
        raise ValueError(
            f"{msg.encoding} image {width}x{height} {problem}: expected {expected} bytes "
            f"(step {step} x height {height}), got {len(msg.data)}"
        )
    shape = (height, width, channels)
    strides = (step, channels * dtype.itemsize, dtype.itemsize)
    dims = 2 if channels == 1 else 3
    return np.ndarray(shape[:dims], dtype=dtype, buffer=msg.data, strides=strides[:dims])


def _check_array(array: np.ndarray, encoding: str) -> None:
    dtype_code, channels = _layout(encoding)
    shape_ok = (array.ndim == 2 and channels == 1) or (array.ndim == 3 and array.shape[2] == channels)
    if not shape_ok:
        expected = "HxW or HxWx1" if channels == 1 else f"HxWx{channels}"
        raise ValueError(f"{encoding} needs an {expected} array, got shape {array.shape}")
    if array.dtype.newbyteorder("=") != np.dtype(dtype_code):
        raise ValueError(f"{encoding} needs dtype {np.dtype(dtype_code)}, got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty {encoding} array: shape {array.shape}")


def _is_big_endian(dtype: np.dtype) -> bool:
    return dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")


def _image_fields(array: np.ndarray, encoding: str) -> tuple[int, int, int, int]:
    """height, width, is_bigendian and packed step of the Image holding `array`."""
    _check_array(array, encoding)
    _, channels = _layout(encoding)
    height, width = int(array.shape[0]), int(array.shape[1])
    return height, width, int(_is_big_endian(array.dtype)), width * channels * array.dtype.itemsize


def array_to_image(array: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """An Image holding a copy of `array`, rows packed (`step` = width x pixel size).

    The byte order of the array's dtype sets `is_bigendian`; `header` is used as given.
    """
    height, width, is_bigendian, step = _image_fields(array, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = height, width, encoding, is_bigendian, step
    msg.data = array.tobytes()
    return msg


def array_to_serialized_image(array: np.ndarray, encoding: str, header: Optional[Header] = None) -> bytes:
    """The CDR bytes of `array_to_image(array, encoding, header)`, from one copy of the pixels.

    What `Publisher.publish` sends as is and a rosbag2 stores; a 20 MB frame
    costs a few milliseconds this way against tens through an Image.
    """
    height, width, is_bigendian, step = _image_fields(array, encoding)
    # A packed array is its own flat byte buffer; anything else is packed first, as tobytes would.
    pixels = memoryview(np.ascontiguousarray(array)).cast("B")
    return serialized_image(header or Header(), height, width, encoding, is_bigendian, step, pixels)


def _reorder_channels(array: np.ndarray, sources: tuple[int, int, int], shift: int) -> np.ndarray:
    # One strided copy per output channel is several times faster than fancy
    # indexing or a reversed-stride copy.
    rgb = np.empty(array.shape[:2] + (3,), np.uint8)
    for out_channel, source in enumerate(sources):
        plane = array if array.ndim == 2 else array[..., source]
        rgb[..., out_channel] = plane >> shift if shift else plane
    return rgb


def _box3_sum(plane: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood weighted [1 2 1] x [1 2 1], zero outside."""
    padded = np.pad(plane, 1)
    rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]
    return rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]


def _demosaic(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of an 8-bit Bayer mosaic; `pattern` names the top-left 2x2 block."""
    height, width = mosaic.shape
    if height < 2 or width < 2:
        raise ValueError(f"a Bayer image needs at least 2x2 pixels, got {width}x{height}")
    rows = np.arange(height)[:, None] % 2
    cols = np.arange(width)[None, :] % 2
    cell = rows * 2 + cols
    samples = mosaic.astype(np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    for channel, colour in enumerate("rgb"):
        mask = np.isin(cell, [i for i, c in enumerate(pattern) if c == colour])
        # Normalised convolution: the weighted mean of the neighbours that hold
        # this colour, which is bilinear interpolation on a Bayer grid.
        estimate = _box3_sum(samples * mask) / _box3_sum(mask.astype(np.float32))
        rgb[..., channel] = np.where(mask, mosaic, np.rint(estimate))
    return rgb


def _yuv422_to_rgb(pixels: np.ndarray, luma_index: int) -> np.ndarray:
    """HxWx2 YUV 4:2:2 bytes to RGB with BT.601 studio-swing integer math."""
    width = pixels.shape[1]
    if width % 2:
        raise ValueError(f"YUV 4:2:2 needs an even width, got {width}")
    y = pixels[..., luma_index].astype(np.int32) - 16
    chroma = pixels[..., 1 - luma_index].astype(np.int32) - 128
    u = np.repeat(chroma[:, 0::2], 2, axis=1)
    v = np.repeat(chroma[:, 1::2], 2, axis=1)
    luma = 298 * y + 128
    rgb = np.empty(pixels.shape[:2] + (3,), np.uint8)
    rgb[..., 0] = np.clip((luma + 409 * v) >> 8, 0, 255)
    rgb[..., 1] = np.clip((luma - 100 * u - 208 * v) >> 8, 0, 255)
    rgb[..., 2] = np.clip((luma + 516 * u) >> 8, 0, 255)
    return rgb


def _as_array(msg_or_array: ImageOrArray, encoding: Optional[str]) -> tuple[np.ndarray, str]:
    if isinstance(msg_or_array, np.ndarray):
        if encoding is None:
            raise ValueError("to_rgb8 of an ndarray needs its encoding")
        _check_array(msg_or_array, encoding)
        return msg_or_array, encoding
    if encoding is not None and encoding != msg_or_array.encoding:
        raise ValueError(
            f"encoding {encoding!r} given for an Image whose encoding is {msg_or_array.encoding!r}"
        )
    return image_to_array(msg_or_array), msg_or_array.encoding


def to_rgb8(msg_or_array: ImageOrArray, encoding: Optional[str] = None) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an Image, or from an array in `encoding`.

    rgb8 input comes back as the zero-copy view itself (possibly strided); every
    other encoding is converted into a new contiguous array: channels reordered,
    alpha dropped, mono replicated, 16-bit samples shifted right by 8, Bayer
    mosaics demosaiced bilinearly, YUV 4:2:2 converted with BT.601.
    """
    array, encoding = _as_array(msg_or_array, encoding)
    if encoding == "rgb8":
        return array
    if encoding in _RGB_SOURCES:
        sources, shift = _RGB_SOURCES[encoding]
        return _reorder_channels(array, sources, shift)
    if encoding.startswith("bayer_"):
        pattern = encoding[len("bayer_"):len("bayer_") + 4]
        mosaic = array.reshape(array.shape[:2])
        if mosaic.dtype.itemsize == 2:
            mosaic = (mosaic >> 8).astype(np.uint8)
        return _demosaic(mosaic, pattern)
    if encoding in _YUV_LUMA_INDEX:
        return _yuv422_to_rgb(array, _YUV_LUMA_INDEX[encoding])
    raise ValueError(
        f"encoding {encoding!r} is a generic or depth-like type with no colour meaning; "
        f"a colour model needs one of: {', '.join(_colour_encodings())}"
    )


def _colour_encodings() -> list[str]:
    return [e for e in _LAYOUTS if e in _RGB_SOURCES or e.startswith("bayer_") or e in _YUV_LUMA_INDEX]


def _compressed_codec(fmt: str) -> str:
    """The codec, JPEG or PNG, of a CompressedImage format such as 'rgb8; jpeg compressed bgr8'."""
    words = fmt.lower().replace(";", " ").split()
    if "compresseddepth" in words:
        raise ValueError(f"compressed format {fmt!r} is a depth image; a colour model cannot use it")
    codecs = {_COMPRESSED_FORMATS[w] for w in words if w in _COMPRESSED_FORMATS}
    if len(codecs) != 1:
        raise ValueError(f"unsupported compressed format {fmt!r}; expected jpeg or png")
    return codecs.pop()


def _pil_to_rgb8(image: PILImage.Image) -> np.ndarray:
    if image.mode.startswith("I"):
        # 16-bit (or 32-bit integer) greyscale: keep the top 8 of 16 bits.
        grey = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))


def compressed_to_rgb8(
    msg: CompressedImage,
    max_pixels: Optional[int] = None,
    size_divisor: int = 1,
    inference_size: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """Decode a jpeg or png CompressedImage to an HxWx3 uint8 RGB array.

    The file's structure is read first, without a decoder, in a few linear scans.
    With `max_pixels`, the size in the header is checked as `check_image_size`
    does (the padded network input included, given the `size_divisor` and the
    `inference_size`); without it, against Pillow's own limit. Refused too:
    what would make the decode slow out of proportion to the data (JPEG fill
    bytes, header segments and scans, PNG chunks, each capped), headers a
    decoder could read at another size than the one checked (a second PNG
    IHDR, a JPEG marker that begins no segment where a segment is due; and
    libjpeg must read the size checked), and data that cannot be complete: a
    JPEG without its end-of-image marker, shorter than its size needs, short of
    a restart marker, or whose scans leave some coefficients of a component
    uncoded or coarse, as when it was cut between two scans (`_checked_jpeg`).
    The decoders refuse the rest of what is cut short or damaged: libjpeg's
    warnings are errors here (`jpeg.decode_jpeg`), and Pillow refuses a PNG
    that ends early (with `ImageFile.LOAD_TRUNCATED_IMAGES` off, its default). JPEGs of 1, 3 or 4 components (greyscale, YCbCr or RGB, CMYK
    or YCCK) come back as RGB.
    """
    codec = _compressed_codec(msg.format)
    # One copy, which bytes.count can search and the decoder's stream shares.
    data = bytes(msg.data)
    try:
        width, height = _checked_jpeg(data) if codec == "JPEG" else _checked_png(data)
    except ValueError as error:
        raise ValueError(f"corrupt {codec.lower()} image (format {msg.format!r}): {error}") from None
    if max_pixels is not None:
        check_image_size(height, width, max_pixels, size_divisor, inference_size)
    else:
        _check_pillow_limit(width, height)
    try:
        if codec == "JPEG":
            return decode_jpeg(data, (height, width))
        with PngImagePlugin.PngImageFile(io.BytesIO(data)) as image:
            image.load()
            return _pil_to_rgb8(image)
    except _DECODE_ERRORS as error:
        raise ValueError(f"corrupt {codec.lower()} image (format {msg.format!r}): {error}") from None


def _check_pillow_limit(width: int, height: int) -> None:
    """The size Image.open would refuse: above twice Image.MAX_IMAGE_PIXELS, where set."""
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is not None and width * height > 2 * limit:
        raise ValueError(
            f"image of {width}x{height} exceeds Pillow's limit of {2 * limit} pixels "
            "(twice PIL.Image.MAX_IMAGE_PIXELS); pass max_pixels to set another"
        )


def _checked_png(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, once the chunks are seen to end with IEND."""
    if data[:8] != _PNG_SIGNATURE or data[8:16] != _PNG_HEADER_START or len(data) < 33:
        raise ValueError("no PNG signature and header chunk of 13 bytes")
    if data[-12:] != _PNG_END:
        raise ValueError(f"truncated: {len(data)} bytes without the closing IEND chunk")
    _check_png_format(bit_depth=data[24], colour_type=data[25])
    _check_png_chunks(data)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return _declared(width, height)


def _check_png_format(bit_depth: int, colour_type: int) -> None:
    # Pillow only says that the file is not one it can identify.
    if colour_type not in _PNG_BIT_DEPTHS:
        allowed = ", ".join(map(str, _PNG_BIT_DEPTHS))
        raise ValueError(f"colour type {colour_type} is not defined; allowed: {allowed}")
    if bit_depth not in _PNG_BIT_DEPTHS[colour_type]:
        allowed = ", ".join(map(str, _PNG_BIT_DEPTHS[colour_type]))
        raise ValueError(f"bit depth {bit_depth} is not defined for colour type {colour_type}; allowed: {allowed}")


def _check_png_chunks(data: bytes) -> None:
    """Refuse more chunks than `_PNG_MAX_CHUNKS` allows, chunks that overrun the closing IEND, and a second IHDR.

    Pillow takes the size from the last IHDR it reads, where the size checked
    is the first's. The loop stops at the cap, so it runs at most once per KiB
    of data, and a few thousand times more.
    """
    most = _PNG_MAX_CHUNKS + len(data) // _PNG_BYTES_PER_EXTRA_CHUNK
    end = len(data) - len(_PNG_END)
    pos = start = len(_PNG_SIGNATURE)
    chunks = 0
    while pos < end:
        chunks += 1
        if chunks > most:
            raise ValueError(
                f"more than {most} chunks in {len(data)} bytes; at most {most} allowed "
                f"({_PNG_MAX_CHUNKS} and one more per {_PNG_BYTES_PER_EXTRA_CHUNK} bytes)"
            )
        if data[pos + 4:pos + 8] == b"IHDR" and pos != len(_PNG_SIGNATURE):
            raise ValueError(f"a second IHDR chunk at byte {pos}")
        start, pos = pos, pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
    if pos != end:
        raise ValueError(f"the chunk at byte {start} runs past the closing IEND chunk, to byte {pos}")


class _JpegHeader(NamedTuple):
    """What the segments before the first scan declare."""

    frame: int  # the start-of-frame marker: 0xC0 for FF C0
    precision: int  # bits per sample
    width: int
    height: int
    sampling: list[tuple[int, int]]  # each component's (horizontal, vertical) factors
    component_ids: list[int]  # each component's identifier, by which scans name it
    restart_interval: int  # coding units between restart markers; 0 for none
    scan_start: int  # where the first start-of-scan marker is
    scan_components: int  # how many components the first scan holds


def _checked_jpeg(data: bytes) -> tuple[int, int]:
    """(width, height) from the frame header, once the data is seen to be possibly complete.

    It must end with the end-of-image marker (cameras may pad after it), and
    be long enough for the image it declares: every 8x8 block of every
    component codes at least one Huffman symbol of at least one bit. That
    refuses a stream cut short of that size even when an end-of-image marker
    was appended to it, which libjpeg would decode, filling the rest with
    grey. A frame coded in one scan with restart markers must hold them all,
    which refuses such a stream cut anywhere before its last restart interval.
    The scans' headers must code every coefficient of every component to full
    precision, which refuses a stream cut before its last scan and closed
    again: a progressive one, or a sequential one coded a component per scan.
    Cut between two scans, libjpeg would decode it without a warning, a
    component grey or the image blurred. A progressive file that never codes
    some coefficients by design, a script libjpeg's encoder refuses to write,
    is refused too. A stream cut inside its last scan past that least size
    and closed again, without restart markers (libjpeg's default, so Pillow's
    and OpenCV's) or with several scans, looks complete until its Huffman
    codes are decoded: libjpeg's warning then refuses it (`jpeg.decode_jpeg`).
    """
    header = _jpeg_header(data)
    if header.frame not in _JPEG_HUFFMAN_FRAMES:
        raise ValueError(
            f"frame type 0x{header.frame:02X} is not supported; "
            "allowed: baseline, extended or progressive Huffman-coded JPEG"
        )
    if header.precision != 8:
        raise ValueError(f"{header.precision}-bit samples are not supported; allowed: 8-bit")
    _check_jpeg_components(len(header.sampling))
    width, height = _declared(header.width, header.height)
    tail = data[-_JPEG_TAIL_PADDING:]
    end = tail.rfind(b"\xff\xd9")
    if end < 0 or tail[end + 2:].strip(b"\x00\xff"):
        raise ValueError(f"truncated: {len(data)} bytes without the closing end-of-image marker")
    least = _least_coded_bytes(width, height, header.sampling)
    if len(data) < least:
        raise ValueError(
            f"truncated: {len(data)} bytes cannot hold a {width}x{height} image, which needs at least {least} bytes"
        )
    _check_scans(data, header)
    return width, height


def _jpeg_header(data: bytes) -> _JpegHeader:
    """The segments up to the first scan, within the caps on their number and on fill bytes.

    They are read here in Python, so they are capped, before and after the
    frame header alike; the rest of the file is only counted, for libjpeg.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start-of-image marker")
    pos, segments, fill = 2, 0, 0
    frame, restart_interval = None, 0
    while True:
        pos, fill = _jpeg_marker(data, pos, fill)
        marker = data[pos + 1]
        if marker == 0xDA:
            if frame is None:
                raise ValueError("a scan starts before the frame header")
            scan_components = data[pos + 4] if pos + 4 < len(data) else 0
            return _JpegHeader(*frame, restart_interval, pos, scan_components)
        segments += 1
        if segments > _JPEG_MAX_HEADER_SEGMENTS:
            raise ValueError(
                f"more than {_JPEG_MAX_HEADER_SEGMENTS} segments before the first scan; "
                f"at most {_JPEG_MAX_HEADER_SEGMENTS} allowed"
            )
        if marker in _JPEG_NOT_SEGMENTS:
            # libjpeg skips a restart or TEM marker as having no length; read with
            # one, it would put the frame header this reads elsewhere than libjpeg's.
            raise ValueError(f"marker 0x{marker:02X} at byte {pos}, where a header segment is due")
        if marker == 0xD9 or pos + 4 > len(data):
            raise ValueError("the data ends before the first scan")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            raise ValueError(f"segment 0x{marker:02X} at byte {pos} declares a length of {length}")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if frame is not None:
                raise ValueError(f"a second frame header at byte {pos}")
            frame = _jpeg_frame(marker, data[pos + 4:pos + 2 + length])
        elif marker == 0xDD and length >= 4:
            restart_interval = int.from_bytes(data[pos + 4:pos + 6], "big")
        pos += 2 + length


def _jpeg_marker(data: bytes, pos: int, fill: int) -> tuple[int, int]:
    """Where the marker due at `pos` starts, past any fill bytes, and the count of fill bytes so far."""
    # The match stops one byte past the cap, however many fill bytes follow.
    run = _JPEG_FILL.match(data, pos, pos + _JPEG_MAX_FILL_BYTES - fill + 2)
    if run is None:
        if pos >= len(data):
            raise ValueError("the data ends before the first scan")
        raise ValueError(f"no marker at byte {pos} of the header")
    fill += run.end() - pos - 1
    if fill > _JPEG_MAX_FILL_BYTES:
        raise ValueError(
            f"more than {_JPEG_MAX_FILL_BYTES} fill bytes (0xFF before a marker) before the first scan; "
            f"at most {_JPEG_MAX_FILL_BYTES} allowed"
        )
    if run.end() >= len(data):
        raise ValueError("the data ends before the first scan")
    return run.end() - 1, fill


def _jpeg_frame(marker: int, segment: bytes) -> tuple[int, int, int, int, list[tuple[int, int]], list[int]]:
    """The marker, precision, width, height, and each component's sampling factors and identifier."""
    components = segment[5] if len(segment) > 5 else 0
    if components == 0 or len(segment) < 6 + 3 * components:
        raise ValueError("truncated frame header")
    height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
    sampling = [(f >> 4, f & 15) for f in (segment[7 + 3 * i] for i in range(components))]
    if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
        raise ValueError(f"sampling factors {sampling} outside 1..4")
    component_ids = list(segment[6:6 + 3 * components:3])
    return marker, segment[0], width, height, sampling, component_ids


def _check_jpeg_components(count: int) -> None:
    # libjpeg-turbo refuses e.g. 2 components only with "Could not determine subsampling level".
    if count not in _JPEG_COMPONENTS:
        *others, last = (f"{n} ({kind})" for n, kind in _JPEG_COMPONENTS.items())
        allowed = f"{', '.join(others)} or {last}"
        raise ValueError(f"{count} components are not supported; allowed: {allowed}")


def _check_scans(data: bytes, header: _JpegHeader) -> None:
    """Refuse more than `_JPEG_MAX_SCANS` scans, a single scan short of a restart marker, and incomplete scans."""
    starts = _jpeg_scan_starts(data, header.scan_start)
    if len(starts) == 1 and header.restart_interval and header.scan_components == len(header.sampling):
        _check_restart_markers(data, header)
    _check_coefficients(data, header, starts)


def _jpeg_scan_starts(data: bytes, start: int) -> list[int]:
    """Where each start-of-scan marker is, from the first scan's on, within `_JPEG_MAX_SCANS`.

    The search never finds too few: coded data cannot hold one, as an
    encoder writes each 0xFF in it as FF 00. A segment between scans could,
    which only makes the count higher.
    """
    starts = []
    for found in _JPEG_START_OF_SCAN_SEARCH.finditer(data, start):
        if len(starts) == _JPEG_MAX_SCANS:
            scans = _JPEG_MAX_SCANS + data.count(_JPEG_START_OF_SCAN, found.start())
            raise ValueError(f"{scans} scans; at most {_JPEG_MAX_SCANS} allowed")
        starts.append(found.start())
    return starts


def _check_coefficients(data: bytes, header: _JpegHeader, starts: list[int]) -> None:
    """Refuse scans that leave a coefficient of a component uncoded or short of its last bit.

    A stream cut between two scans and closed again with an end-of-image
    marker decodes without a warning from libjpeg: the coefficients of the
    missing scans are zero or coarse, a component grey or the image blurred.
    A sequential scan codes all 64 coefficients of its components; a
    progressive one codes Ss..Se, and to full precision once its low bit Al
    is 0. Every scan of a complete file is among `starts`, and its header
    parses (libjpeg refuses one that does not). Bytes of another segment
    that start like a scan are skipped unless they parse as one, when they
    can only add coverage: they never refuse a complete file.
    """
    progressive = header.frame == _JPEG_PROGRESSIVE_FRAME
    completed = dict.fromkeys(header.component_ids, 0)
    scans = 0
    for start in starts:
        scan = _jpeg_scan(data, start, completed)
        if scan is None:
            continue
        scans += 1
        component_ids, first, last, low_bit = scan
        if not progressive:
            # libjpeg decodes all 64 whatever the header says, and warns (refused here) when it says otherwise.
            coded = _JPEG_ALL_COEFFICIENTS
        elif low_bit == 0 and first <= last <= 63:
            coded = (1 << last + 1) - (1 << first)
        else:
            continue
        for component_id in component_ids:
            completed[component_id] |= coded
    for component_id, done in completed.items():
        if done != _JPEG_ALL_COEFFICIENTS:
            raise ValueError(
                f"truncated: component {component_id} has {_jpeg_coefficients(done ^ _JPEG_ALL_COEFFICIENTS)} "
                f"never completed in {scans} scan{'s' if scans != 1 else ''}"
            )


def _jpeg_scan(data: bytes, start: int, component_ids: Container[int]) -> Optional[tuple[bytes, int, int, int]]:
    """The component identifiers, Ss, Se and Al of the scan header at `start`.

    None for bytes that are no header of a scan of `component_ids`: after FF DA,
    its length, Ns, Ns (identifier, tables) pairs, Ss, Se and Ah << 4 | Al.
    """
    count = data[start + 4] if start + 4 < len(data) else 0
    end = start + 8 + 2 * count
    if not 1 <= count <= 4 or end > len(data) or int.from_bytes(data[start + 2:start + 4], "big") != 6 + 2 * count:
        return None
    scanned = data[start + 5:end - 3:2]
    if not all(component_id in component_ids for component_id in scanned):
        return None
    return scanned, data[end - 3], data[end - 2], data[end - 1] & 15


def _jpeg_coefficients(missing: int) -> str:
    """'coefficient 0', 'coefficients 1..63' or 'coefficients 0, 6..63': the set bits of `missing` as ranges."""
    ranges = []
    k = 0
    while k < 64:
        if missing >> k & 1:
            first = k
            while k + 1 < 64 and missing >> k + 1 & 1:
                k += 1
            ranges.append(str(first) if first == k else f"{first}..{k}")
        k += 1
    one = len(ranges) == 1 and ".." not in ranges[0]
    return f"coefficient{'' if one else 's'} {', '.join(ranges)}"


def _check_restart_markers(data: bytes, header: _JpegHeader) -> None:
    """Refuse a scan of every component that lacks its last restart marker.

    An encoder writes RST0, RST1 .. RST7, RST0 .. in turn after every
    `restart_interval` coding units but the last, so the scan's size says
    which marker comes last and how many of its kind there are. Counting that
    one kind is one pass over the data and, as with start-of-scan markers,
    never finds too few: only data cut short holds fewer.
    """
    units = _coding_units(header.width, header.height, header.sampling)
    due = _ceil_div(units, header.restart_interval) - 1
    if due == 0:
        return
    last, expected = (due - 1) % 8, (due - 1) // 8 + 1
    found = data.count(bytes((0xFF, 0xD0 + last)), header.scan_start)
    if found < expected:
        raise ValueError(
            f"truncated: {found} of the {expected} RST{last} markers that a {header.width}x{header.height} "
            f"image with a restart marker every {header.restart_interval} coding units holds"
        )


def _coding_units(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """Coding units in a scan of every component: one block each when there is only one component."""
    if len(sampling) == 1:
        return _ceil_div(width, 8) * _ceil_div(height, 8)
    most_h = max(h for h, _ in sampling)
    most_v = max(v for _, v in sampling)
    return _ceil_div(width, 8 * most_h) * _ceil_div(height, 8 * most_v)


def _least_coded_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """The fewest bytes the coded data of a complete image can take: one bit per 8x8 block."""
    most_h = max(h for h, _ in sampling)
    most_v = max(v for _, v in sampling)
    blocks = 0
    for h, v in sampling:
        columns = _ceil_div(_ceil_div(width * h, most_h), 8)
        rows = _ceil_div(_ceil_div(height * v, most_v), 8)
        blocks += columns * rows
    return blocks // 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _declared(width: int, height: int) -> tuple[int, int]:
    if width == 0 or height == 0:
        raise ValueError(f"the header declares {width}x{height} pixels")
    return width, height


def rgb8_to_compressed(
    array: np.ndarray, format: str = "jpeg", header: Optional[Header] = None, quality: int = 90
) -> CompressedImage:
    """Encode an HxWx3 uint8 RGB array as jpeg or png (`quality` applies to jpeg).

    The message's format reads e.g. 'rgb8; jpeg compressed bgr8', as
    image_transport writes it for an rgb8 source, so that its compressed
    subscriber decodes it back to rgb8.
    """
    _check_array(array, "rgb8")
    codec = _COMPRESSED_FORMATS.get(format.lower())
    if codec is None:
        raise ValueError(f"unsupported compressed format {format!r}; expected 'jpeg' or 'png'")
    buffer = io.BytesIO()
    options = {"quality": quality} if codec == "JPEG" else {}
    PILImage.fromarray(np.ascontiguousarray(array)).save(buffer, codec, **options)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"rgb8; {codec.lower()} compressed bgr8"
    msg.data = buffer.getvalue()
    return msg
