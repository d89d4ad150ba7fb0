"""Image and CompressedImage <-> numpy: every encoding, padding, byte order, errors."""
from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image as PILImage
from PIL import ImageFile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from efficientps_ros.ros.image_codec import (array_to_image, compressed_to_rgb8, image_to_array,
                                             rgb8_to_compressed, supported_encodings, to_rgb8)

BAYER_PATTERNS = ("rggb", "bggr", "gbrg", "grbg")

# sensor_msgs/image_encodings: sample type and channels of what camera drivers emit.
NAMED_LAYOUTS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1),
    "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3), "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4),
    **{f"bayer_{p}8": (np.uint8, 1) for p in BAYER_PATTERNS},
    **{f"bayer_{p}16": (np.uint16, 1) for p in BAYER_PATTERNS},
    "yuv422": (np.uint8, 2), "uyvy": (np.uint8, 2), "yuv422_yuy2": (np.uint8, 2), "yuyv": (np.uint8, 2),
}
GENERIC_TYPES = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
                 "32S": np.int32, "32F": np.float32, "64F": np.float64}
GENERIC_LAYOUTS = {f"{depth}C{k}": (dtype, k) for depth, dtype in GENERIC_TYPES.items()
                   for k in (1, 2, 3, 4)}
LAYOUTS = {**NAMED_LAYOUTS, **GENERIC_LAYOUTS}


def random_array(encoding: str, height: int = 5, width: int = 6, seed: int = 0) -> np.ndarray:
    """Random pixels of `encoding`, HxW for one channel and HxWxC otherwise."""
    dtype, channels = LAYOUTS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def raw_image(array: np.ndarray, encoding: str, padding: int = 0) -> Image:
    """An Image built by hand from `array`'s bytes, each row followed by `padding` junk bytes."""
    rows = np.ascontiguousarray(array).view(np.uint8).reshape(array.shape[0], -1)
    data = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding,
                 is_bigendian=int(array.dtype.byteorder == ">"), step=data.shape[1],
                 data=data.tobytes())


def view_shares_message_buffer(view: np.ndarray, msg: Image) -> bool:
    return np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


def test_every_driver_encoding_is_supported() -> None:
    assert set(LAYOUTS) <= set(supported_encodings())


@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_round_trip_is_bit_exact(encoding: str) -> None:
    array = random_array(encoding)
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image(array, encoding, header)

    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 6, encoding, 0)
    assert msg.step == 6 * LAYOUTS[encoding][1] * array.itemsize
    assert msg.header is header
    back = image_to_array(msg)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert view_shares_message_buffer(back, msg)


@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_padded_rows_give_a_strided_view(encoding: str) -> None:
    array = random_array(encoding, seed=1)
    msg = raw_image(array, encoding, padding=8)

    view = image_to_array(msg)
    assert view.strides[0] == msg.step
    np.testing.assert_array_equal(view, array)
    assert view_shares_message_buffer(view, msg)


def test_writing_the_view_writes_the_message() -> None:
    msg = raw_image(np.zeros((2, 3), np.uint8), "mono8", padding=5)
    image_to_array(msg)[1, 2] = 77
    assert msg.data[1 * msg.step + 2] == 77


def test_step_that_is_not_a_multiple_of_the_sample_size() -> None:
    array = random_array("16UC1", seed=2)
    view = image_to_array(raw_image(array, "16UC1", padding=3))
    np.testing.assert_array_equal(view, array)


@pytest.mark.parametrize("encoding, dtype, struct_format", [
    ("mono16", ">u2", ">H"), ("16UC1", ">u2", ">H"), ("32FC1", ">f4", ">f"),
])
def test_big_endian_images(encoding: str, dtype: str, struct_format: str) -> None:
    values = random_array(encoding, seed=3)
    big = values.astype(dtype)

    msg = array_to_image(big, encoding)
    assert msg.is_bigendian == 1
    assert bytes(msg.data[:values.itemsize]) == struct.pack(struct_format, values.flat[0])

    back = image_to_array(msg)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, values)

    padded = image_to_array(raw_image(big, encoding, padding=4))
    np.testing.assert_array_equal(padded, values)


@pytest.mark.parametrize("encoding", ["foo8", "jpeg", "RGB8", "8UC5", ""])
def test_unknown_encoding_is_named(encoding: str) -> None:
    msg = Image(encoding=encoding, height=1, width=1, step=3, data=bytes(3))
    with pytest.raises(ValueError, match=f"unsupported image encoding '{encoding}'.*rgb8.*mono16"):
        image_to_array(msg)


def test_truncated_data_says_expected_and_got() -> None:
    msg = array_to_image(random_array("rgb8"), "rgb8")
    msg.data = bytes(msg.data[:-1])
    with pytest.raises(ValueError, match=r"truncated: expected 90 bytes .*got 89"):
        image_to_array(msg)


def test_excess_data_is_a_size_mismatch() -> None:
    msg = array_to_image(random_array("mono8"), "mono8")
    msg.data = bytes(msg.data) + b"\0"
    with pytest.raises(ValueError, match=r"size mismatch: expected 30 bytes .*got 31"):
        image_to_array(msg)


def test_step_smaller_than_a_row() -> None:
    msg = Image(encoding="mono16", height=2, width=4, step=7, data=bytes(14))
    with pytest.raises(ValueError, match=r"step 7 is smaller than one row of 8 bytes"):
        image_to_array(msg)


@pytest.mark.parametrize("height, width", [(0, 4), (4, 0), (0, 0)])
def test_empty_image(height: int, width: int) -> None:
    msg = Image(encoding="rgb8", height=height, width=width, step=3 * width)
    with pytest.raises(ValueError, match="empty rgb8 image"):
        image_to_array(msg)


@pytest.mark.parametrize("array, encoding, problem", [
    (np.zeros((2, 2), np.float32), "mono8", "needs dtype uint8, got float32"),
    (np.zeros((2, 2, 3), np.uint16), "mono16", r"needs an HxW or HxWx1 array, got shape \(2, 2, 3\)"),
    (np.zeros((2, 2), np.uint8), "rgb8", r"needs an HxWx3 array"),
    (np.zeros((2, 2), np.int64), "32SC1", "needs dtype int32, got int64"),
    (np.zeros((0, 2, 3), np.uint8), "rgb8", "empty rgb8 array"),
    (np.zeros((2, 2), np.uint8), "nope", "unsupported image encoding 'nope'"),
])
def test_array_to_image_validates(array: np.ndarray, encoding: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        array_to_image(array, encoding)


def test_non_contiguous_array_is_packed() -> None:
    big = random_array("rgb8", height=6, width=8, seed=4)
    part = big[::2, 1:7]
    msg = array_to_image(part, "rgb8")
    assert msg.step == 6 * 3
    np.testing.assert_array_equal(image_to_array(msg), part)


# --- to_rgb8 ---------------------------------------------------------------

def test_rgb8_is_returned_without_copy() -> None:
    msg = raw_image(random_array("rgb8", seed=5), "rgb8", padding=2)
    rgb = to_rgb8(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 6, 3)
    assert view_shares_message_buffer(rgb, msg)


@pytest.mark.parametrize("encoding, pixels, expected", [
    ("bgr8", [[[1, 2, 3], [4, 5, 6]]], [[[3, 2, 1], [6, 5, 4]]]),
    ("rgba8", [[[1, 2, 3, 9], [4, 5, 6, 9]]], [[[1, 2, 3], [4, 5, 6]]]),
    ("bgra8", [[[1, 2, 3, 9], [4, 5, 6, 9]]], [[[3, 2, 1], [6, 5, 4]]]),
    ("mono8", [[10, 200]], [[[10, 10, 10], [200, 200, 200]]]),
])
def test_8bit_colour_conversions(encoding: str, pixels: list, expected: list) -> None:
    msg = array_to_image(np.array(pixels, np.uint8), encoding)
    rgb = to_rgb8(msg)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.array(expected, np.uint8))


@pytest.mark.parametrize("encoding, order", [
    ("rgb16", (0, 1, 2)), ("bgr16", (2, 1, 0)), ("rgba16", (0, 1, 2)), ("bgra16", (2, 1, 0)),
])
def test_16bit_colour_keeps_the_high_byte(encoding: str, order: tuple) -> None:
    pixels = random_array(encoding, seed=6)
    rgb = to_rgb8(array_to_image(pixels, encoding))
    np.testing.assert_array_equal(rgb, (pixels[..., list(order)] >> 8).astype(np.uint8))


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_mono16_keeps_the_high_byte(dtype: str) -> None:
    values = np.array([[0x1234, 0xFF01], [0x00FF, 0x8000]], dtype)
    rgb = to_rgb8(array_to_image(values, "mono16"))
    expected = np.array([[0x12, 0xFF], [0x00, 0x80]], np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))


def bayer_mosaic(colour_planes: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an HxWx3 RGB image through the colour filter `pattern` (top-left 2x2, row-major)."""
    height, width, _ = colour_planes.shape
    cell = (np.arange(height)[:, None] % 2) * 2 + np.arange(width)[None, :] % 2
    channel = np.array(["rgb".index(c) for c in pattern])[cell]
    return np.take_along_axis(colour_planes, channel[..., None], axis=2)[..., 0]


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("height, width", [(6, 8), (5, 7)])
def test_bayer8_flat_colour_demosaics_to_that_colour(pattern: str, height: int, width: int) -> None:
    colour = np.array([200, 120, 30], np.uint8)
    mosaic = bayer_mosaic(np.broadcast_to(colour, (height, width, 3)), pattern)
    rgb = to_rgb8(array_to_image(mosaic, f"bayer_{pattern}8"))
    assert rgb.shape == (height, width, 3)
    np.testing.assert_array_equal(rgb, np.broadcast_to(colour, rgb.shape))


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_bayer16_flat_colour_demosaics_to_its_high_byte(pattern: str) -> None:
    colour = np.array([0xC812, 0x78FF, 0x1E00], np.uint16)
    mosaic = bayer_mosaic(np.broadcast_to(colour, (4, 6, 3)), pattern)
    rgb = to_rgb8(array_to_image(mosaic, f"bayer_{pattern}16"))
    np.testing.assert_array_equal(rgb, np.broadcast_to(np.array([0xC8, 0x78, 0x1E]), rgb.shape))


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_bayer_keeps_every_measured_sample(pattern: str) -> None:
    mosaic = random_array(f"bayer_{pattern}8", height=6, width=8, seed=10)
    rgb = to_rgb8(mosaic, f"bayer_{pattern}8")
    np.testing.assert_array_equal(bayer_mosaic(rgb, pattern), mosaic)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_bayer_reproduces_a_linear_scene_away_from_the_border(pattern: str) -> None:
    # Bilinear interpolation is exact for colours that vary linearly.
    ys, xs = np.mgrid[0:8, 0:10]
    scene = np.stack([20 * xs, 10 * (xs + ys), 20 * ys], axis=2).astype(np.uint8)
    rgb = to_rgb8(bayer_mosaic(scene, pattern), f"bayer_{pattern}8")
    np.testing.assert_array_equal(rgb[1:-1, 1:-1], scene[1:-1, 1:-1])


def test_bayer_smaller_than_one_filter_block_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2x2 pixels, got 5x1"):
        to_rgb8(np.zeros((1, 5), np.uint8), "bayer_rggb8")


# BT.601 studio swing: Y 16..235, chroma centred on 128.
WHITE, BLACK, GREY = (235, 128, 128), (16, 128, 128), (126, 128, 128)
RED = (81, 90, 240)  # Y, U, V of (255, 0, 0)


def yuv422_bytes(pairs: list, luma_first: bool) -> np.ndarray:
    """1xWx2 pixels from (Y0, Y1, U, V) pixel pairs in YUYV or UYVY order."""
    row = []
    for y0, y1, u, v in pairs:
        row += [y0, u, y1, v] if luma_first else [u, y0, v, y1]
    return np.array(row, np.uint8).reshape(1, -1, 2)


@pytest.mark.parametrize("encoding, luma_first", [
    ("yuyv", True), ("yuv422_yuy2", True), ("uyvy", False), ("yuv422", False),
])
def test_yuv422_known_pixels(encoding: str, luma_first: bool) -> None:
    pairs = [(WHITE[0], BLACK[0], 128, 128), (RED[0], RED[0], RED[1], RED[2]),
             (GREY[0], WHITE[0], 128, 128)]
    rgb = to_rgb8(array_to_image(yuv422_bytes(pairs, luma_first), encoding))
    expected = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [255, 0, 0], [128, 128, 128],
                [255, 255, 255]]
    np.testing.assert_array_equal(rgb, np.array([expected], np.uint8))


def test_yuv422_odd_width_is_refused() -> None:
    with pytest.raises(ValueError, match="even width, got 3"):
        to_rgb8(np.zeros((2, 3, 2), np.uint8), "yuyv")


@pytest.mark.parametrize("encoding", ["16UC1", "32SC1", "32FC1", "8UC3"])
def test_depth_like_types_are_not_colour(encoding: str) -> None:
    with pytest.raises(ValueError, match=f"'{encoding}' is a generic or depth-like type"):
        to_rgb8(array_to_image(random_array(encoding), encoding))


def test_to_rgb8_of_an_array_needs_a_matching_encoding() -> None:
    pixels = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="needs its encoding"):
        to_rgb8(pixels)
    with pytest.raises(ValueError, match="needs an HxWx4 array"):
        to_rgb8(pixels, "rgba8")
    with pytest.raises(ValueError, match="encoding 'bgr8' given for an Image whose encoding is 'rgb8'"):
        to_rgb8(array_to_image(pixels, "rgb8"), "bgr8")


# --- compressed images -----------------------------------------------------

def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 2 % 256], 2).astype(np.uint8)


def test_png_round_trip_is_bit_exact() -> None:
    pixels = random_array("rgb8", height=17, width=23, seed=8)
    header = Header(frame_id="cam_png")
    msg = rgb8_to_compressed(pixels, "png", header)
    assert "png" in msg.format and msg.header is header
    np.testing.assert_array_equal(compressed_to_rgb8(msg), pixels)


def test_jpeg_round_trip_is_close() -> None:
    pixels = smooth_rgb()
    msg = rgb8_to_compressed(pixels, "jpeg")
    assert "jpeg" in msg.format
    decoded = compressed_to_rgb8(msg)
    assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - pixels).mean() < 3


@pytest.mark.parametrize("fmt", ["png", "PNG", "rgb8; png compressed bgr8", "bgr8; png compressed bgr8"])
def test_format_strings_of_image_transport(fmt: str) -> None:
    pixels = random_array("rgb8", seed=9)
    msg = rgb8_to_compressed(pixels, "png")
    msg.format = fmt
    np.testing.assert_array_equal(compressed_to_rgb8(msg), pixels)


def test_grey_and_16bit_png_become_rgb() -> None:
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    deep = np.array([[0x0000, 0x1234], [0xAB00, 0xFFFF]], np.uint16)
    for pixels, expected in [(grey, grey), (deep, (deep >> 8).astype(np.uint8))]:
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, "PNG")
        msg = CompressedImage(format="png", data=buffer.getvalue())
        np.testing.assert_array_equal(compressed_to_rgb8(msg), np.repeat(expected[..., None], 3, 2))


@pytest.mark.parametrize("fmt, payload", [
    ("jpeg", b"definitely not a jpeg"),
    ("rgb8; jpeg compressed bgr8", None),
    ("png", None),
    ("png", b""),
])
def test_corrupt_payload_is_refused(fmt: str, payload) -> None:
    if payload is None:
        codec = "jpeg" if "jpeg" in fmt else "png"
        good = bytes(rgb8_to_compressed(smooth_rgb(), codec).data)
        payload = good[: len(good) // 2]
    codec_name = "jpeg" if "jpeg" in fmt else "png"
    with pytest.raises(ValueError, match=f"corrupt {codec_name} image"):
        compressed_to_rgb8(CompressedImage(format=fmt, data=payload))


@pytest.mark.parametrize("fmt", ["tiff", "", "16UC1; compressedDepth png"])
def test_unsupported_compressed_format(fmt: str) -> None:
    msg = CompressedImage(format=fmt, data=b"\0" * 16)
    with pytest.raises(ValueError, match=re.escape(repr(fmt))):
        compressed_to_rgb8(msg)


def test_rgb8_to_compressed_validates() -> None:
    with pytest.raises(ValueError, match="unsupported compressed format 'bmp'"):
        rgb8_to_compressed(np.zeros((2, 2, 3), np.uint8), "bmp")
    with pytest.raises(ValueError, match="rgb8 needs an HxWx3 array"):
        rgb8_to_compressed(np.zeros((2, 2), np.uint8), "png")


@pytest.fixture
def decoded(monkeypatch) -> list:
    """Records the (width, height) of every decode, by Pillow (png) or libjpeg (jpeg), to show that a refusal came before one."""
    calls = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(self.size) or original_load(self))
    original_decode = simplejpeg.decode_jpeg

    def decode_jpeg(data, **options):
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        calls.append((width, height))
        return original_decode(data, **options)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decode_jpeg)
    return calls


def test_a_compressed_image_over_the_pixel_limit_is_refused_before_decoding(decoded):
    msg = rgb8_to_compressed(np.zeros((40, 50, 3), np.uint8), "png")
    with pytest.raises(ValueError, match=r"image of 50x40 exceeds max_image_pixels \(1999\)"):
        compressed_to_rgb8(msg, max_pixels=1999)
    assert decoded == []
    assert compressed_to_rgb8(msg, max_pixels=2000).shape == (40, 50, 3)
    # The record is not empty by accident: a decode that is allowed shows in it.
    assert (50, 40) in decoded


def test_the_pixel_limit_counts_the_padded_network_input(decoded):
    msg = rgb8_to_compressed(np.zeros((40, 50, 3), np.uint8), "png")
    with pytest.raises(ValueError, match=r"padded to 64x64 for the network \(a multiple of 32\), 4096 pixels"):
        compressed_to_rgb8(msg, max_pixels=4095, size_divisor=32)
    assert decoded == []
    assert compressed_to_rgb8(msg, max_pixels=4096, size_divisor=32).shape == (40, 50, 3)


def test_a_1x100000_png_of_a_few_kilobytes_is_refused_from_its_header(decoded):
    msg = rgb8_to_compressed(np.zeros((1, 100_000, 3), np.uint8), "png")
    assert len(msg.data) < 2000
    with pytest.raises(ValueError, match=r"image of 100000x1 has an aspect ratio of 100000:1; allowed: at most 16:1"):
        compressed_to_rgb8(msg, max_pixels=8192 * 4096, size_divisor=32)
    assert decoded == []


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    return data[:16] + struct.pack(">II", width, height) + data[24:]


def test_a_png_header_beyond_the_limit_is_ours_to_refuse_not_pillows(decoded):
    small = bytes(rgb8_to_compressed(np.zeros((4, 4, 3), np.uint8), "png").data)
    msg = CompressedImage(format="png", data=_with_png_size(small, 30_000, 30_000))
    with pytest.raises(ValueError, match=r"^image of 30000x30000 exceeds max_image_pixels \(33554432\)$"):
        compressed_to_rgb8(msg, max_pixels=8192 * 4096)
    assert decoded == []


def _jpeg_with_size(data: bytes, width: int, height: int, frame: int = 0xC0) -> bytes:
    """The jpeg `data` with its frame header claiming another size (and frame type)."""
    start = data.index(b"\xff\xc0")
    return data[:start + 1] + bytes([frame]) + data[start + 2:start + 5] + struct.pack(">HH", height, width) + data[start + 9:]


def _noisy_jpeg(height: int = 160, width: int = 160) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return bytes(rgb8_to_compressed(pixels, "jpeg").data)


def test_a_10kb_jpeg_claiming_8000x4000_is_refused_before_decoding(decoded):
    # The first 10 KB of a frame, closed with an end-of-image marker: libjpeg
    # decodes it as an 8000x4000 frame, the rest filled grey, with a warning.
    data = _jpeg_with_size(_noisy_jpeg(), 8000, 4000)[:10_000] + b"\xff\xd9"
    msg = CompressedImage(format="jpeg", data=data)
    with pytest.raises(ValueError, match=(
        r"corrupt jpeg image \(format 'jpeg'\): truncated: 10002 bytes cannot hold a 8000x4000 image, "
        r"which needs at least 93750 bytes"
    )):
        compressed_to_rgb8(msg, max_pixels=8192 * 4096, size_divisor=32)
    assert decoded == []


def test_a_truncated_8000x4000_jpeg_is_refused_before_decoding(decoded):
    pixels = np.zeros((4000, 8000, 3), np.uint8)
    pixels[:100] = 200
    good = bytes(rgb8_to_compressed(pixels, "jpeg").data)
    msg = CompressedImage(format="jpeg", data=good[:10_000])
    with pytest.raises(ValueError, match=r"corrupt jpeg image .*truncated: 10000 bytes without the closing end-of-image marker"):
        compressed_to_rgb8(msg, max_pixels=8192 * 4096, size_divisor=32)
    assert decoded == []


def test_padding_after_the_end_of_image_marker_is_accepted():
    pixels = smooth_rgb()
    padded = bytes(rgb8_to_compressed(pixels, "jpeg").data) + b"\x00" * 13
    decoded = compressed_to_rgb8(CompressedImage(format="jpeg", data=padded))
    assert np.abs(decoded.astype(int) - pixels).mean() < 3


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True}, {"subsampling": 0}])
def test_flat_jpegs_of_any_coding_are_not_mistaken_for_truncated_ones(options):
    for pixels in (np.zeros((480, 640, 3), np.uint8), np.zeros((480, 640), np.uint8)):
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, "JPEG", **options)
        rgb = compressed_to_rgb8(CompressedImage(format="jpeg", data=buffer.getvalue()), max_pixels=640 * 480)
        assert rgb.shape == (480, 640, 3) and rgb.max() <= 1


def test_an_arithmetic_coded_jpeg_is_refused_by_frame_type():
    good = _noisy_jpeg(16, 16)
    msg = CompressedImage(format="jpeg", data=_jpeg_with_size(good, 16, 16, frame=0xC9))
    with pytest.raises(ValueError, match="frame type 0xC9 is not supported; allowed: baseline, extended or progressive"):
        compressed_to_rgb8(msg)


def test_a_png_without_its_closing_chunk_is_refused(decoded):
    good = bytes(rgb8_to_compressed(random_array("rgb8", 40, 50, seed=4), "png").data)
    with pytest.raises(ValueError, match=r"corrupt png image .*truncated: \d+ bytes without the closing IEND chunk"):
        compressed_to_rgb8(CompressedImage(format="png", data=good[:-12]))
    assert decoded == []


def test_a_png_cut_inside_its_data_and_closed_again_is_refused():
    good = bytes(rgb8_to_compressed(random_array("rgb8", 200, 300, seed=5), "png").data)
    truncated = good[: len(good) // 2] + good[-12:]
    with pytest.raises(ValueError, match="corrupt png image"):
        compressed_to_rgb8(CompressedImage(format="png", data=truncated))


def test_a_jpeg_header_declaring_no_pixels_is_refused():
    msg = CompressedImage(format="jpeg", data=_jpeg_with_size(_noisy_jpeg(16, 16), 0, 16))
    with pytest.raises(ValueError, match=r"corrupt jpeg image .*the header declares 0x16 pixels"):
        compressed_to_rgb8(msg)


def test_a_jpeg_header_of_endless_tiny_segments_is_refused():
    data = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 500_000 + b"\xff\xd9"
    with pytest.raises(ValueError, match=(
        r"corrupt jpeg image .*: more than 1024 segments before the first scan; at most 1024 allowed"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=data))


def _jpeg_read_two_ways(small: bytes, big: bytes) -> bytes:
    """One stream, two frames: read with a length after RST0, it is `small`; as libjpeg reads it, `big`.

    libjpeg skips RST0 as a marker without a segment, then two comments, the
    second of which (its length 0xFFE1) holds `small` but for its first and
    last markers. A length read from RST0 instead spans the first comment and
    the second's marker, and lands on an empty APP1 segment (0xFFE1) just
    before `small`'s segments.
    """
    first = b"\xff\xfe" + (65530).to_bytes(2, "big") + bytes(65528)
    second = (2).to_bytes(2, "big") + small[2:-2]
    second += bytes(0xFFE1 - 2 - len(second))
    return b"\xff\xd8\xff\xd0" + first + b"\xff\xfe\xff\xe1" + second + big[2:]


def test_a_jpeg_that_libjpeg_reads_as_a_larger_frame_than_its_header_is_refused(decoded):
    data = _jpeg_read_two_ways(_noisy_jpeg(16, 16), _noisy_jpeg(256, 256))
    assert simplejpeg.decode_jpeg_header(data)[:2] == (256, 256)
    with pytest.raises(ValueError, match=(
        r"^corrupt jpeg image \(format 'jpeg'\): marker 0xD0 at byte 2, where a header segment is due$"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=data), max_pixels=64 * 64)
    assert decoded == []


@pytest.mark.parametrize("marker", [0x00, 0x01, 0xD0, 0xD7, 0xD8])
def test_a_marker_without_a_segment_before_the_first_scan_is_refused(decoded, marker):
    good = _noisy_jpeg(16, 16)
    data = good[:2] + bytes((0xFF, marker)) + good[2:]
    with pytest.raises(ValueError, match=rf"marker 0x{marker:02X} at byte 2, where a header segment is due$"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=data))
    assert decoded == []


# --- costs out of proportion to the data, caught before decoding -----------

def _jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _progressive_jpeg_of(scans: int) -> bytes:
    """A small progressive jpeg whose last scan (a refinement) is repeated until it has `scans`."""
    data = _jpeg_bytes(smooth_rgb(), progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * (scans - data.count(b"\xff\xda")) + b"\xff\xd9"


def test_a_progressive_jpeg_of_100_scans_reaches_the_decoder(decoded):
    # 100 scans are allowed; repeating a refinement scan is then libjpeg's to refuse.
    with pytest.raises(ValueError, match=r"^corrupt jpeg image \(format 'jpeg'\): Inconsistent progression sequence"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=_progressive_jpeg_of(100)))
    assert decoded == [(64, 48)]


@pytest.mark.parametrize("scans", [101, 1010])
def test_a_progressive_jpeg_repeating_a_scan_is_refused_before_decoding(decoded, scans):
    # Each scan is a pass over every block: 1010 of them at 8000x4000 took 22 s.
    msg = CompressedImage(format="jpeg", data=_progressive_jpeg_of(scans))
    with pytest.raises(ValueError, match=(
        rf"^corrupt jpeg image \(format 'jpeg'\): {scans} scans; at most 100 allowed$"
    )):
        compressed_to_rgb8(msg)
    assert decoded == []


def _with_jpeg_fill(data: bytes, count: int) -> bytes:
    """`data` with `count` fill bytes before its frame header."""
    start = data.index(b"\xff\xc0")
    return data[:start] + b"\xff" * count + data[start:]


def test_a_few_fill_bytes_before_a_marker_are_accepted():
    good = _noisy_jpeg(16, 16)
    expected = compressed_to_rgb8(CompressedImage(format="jpeg", data=good))
    padded = compressed_to_rgb8(CompressedImage(format="jpeg", data=_with_jpeg_fill(good, 8192)))
    np.testing.assert_array_equal(padded, expected)


def test_fill_bytes_beyond_the_cap_are_refused_before_decoding(decoded):
    msg = CompressedImage(format="jpeg", data=_with_jpeg_fill(_noisy_jpeg(16, 16), 8193))
    with pytest.raises(ValueError, match=(
        r"corrupt jpeg image .*: more than 8192 fill bytes \(0xFF before a marker\) before the first scan; "
        r"at most 8192 allowed"
    )):
        compressed_to_rgb8(msg)
    assert decoded == []


def test_megabytes_of_fill_bytes_are_refused_with_what_they_are():
    data = b"\xff\xd8" + b"\xff" * 8_000_000 + b"\xff\xd9"
    with pytest.raises(ValueError, match="more than 8192 fill bytes"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=data))


@pytest.mark.parametrize("segment", [b"\xff\xfe\x00\x02", b"\xff\xe5\x00\x02"], ids=["COM", "APP5"])
def test_segments_after_the_frame_header_count_toward_the_cap(decoded, segment):
    good = _noisy_jpeg(16, 16)
    after_frame = good.index(b"\xff\xc4")  # the first table after the frame header
    msg = CompressedImage(format="jpeg", data=good[:after_frame] + segment * 1100 + good[after_frame:])
    with pytest.raises(ValueError, match="more than 1024 segments before the first scan; at most 1024 allowed"):
        compressed_to_rgb8(msg)
    assert decoded == []


def test_a_second_frame_header_is_refused_before_decoding(decoded):
    good = _noisy_jpeg(16, 16)
    start = good.index(b"\xff\xc0")
    end = start + 2 + int.from_bytes(good[start + 2:start + 4], "big")
    larger = _jpeg_with_size(good[start:end], 12_000, 12_000)
    msg = CompressedImage(format="jpeg", data=good[:end] + larger + good[end:])
    with pytest.raises(ValueError, match=rf"corrupt jpeg image .*: a second frame header at byte {end}$"):
        compressed_to_rgb8(msg)
    assert decoded == []


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(pixels: np.ndarray, idat_size: int = 1 << 20, extra: bytes = b"", colour_type: int = 2,
         bit_depth: int = 8) -> bytes:
    """A png of 8-bit RGB or grey `pixels`, its data in IDAT chunks of `idat_size`, `extra` chunks before them."""
    rows = pixels.reshape(pixels.shape[0], -1)
    compressed = zlib.compress(np.concatenate([np.zeros((len(rows), 1), np.uint8), rows], 1).tobytes())
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], bit_depth, colour_type, 0, 0, 0)
    idats = b"".join(_png_chunk(b"IDAT", compressed[i:i + idat_size]) for i in range(0, len(compressed), idat_size))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra + idats + _png_chunk(b"IEND", b"")


def test_the_png_helper_makes_pngs():
    pixels = random_array("rgb8", 6, 5, seed=11)
    np.testing.assert_array_equal(compressed_to_rgb8(CompressedImage(format="png", data=_png(pixels))), pixels)


def test_a_png_with_a_second_header_chunk_is_refused(decoded):
    # Pillow takes the size from the last IHDR: this one decodes as 256x256, past the limit.
    large = _png(np.zeros((256, 256, 3), np.uint8))
    small_header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    data = large[:8] + _png_chunk(b"IHDR", small_header) + large[8:]
    with pytest.raises(ValueError, match=r"^corrupt png image \(format 'png'\): a second IHDR chunk at byte 33$"):
        compressed_to_rgb8(CompressedImage(format="png", data=data), max_pixels=64 * 64)
    assert decoded == []


def test_a_png_header_chunk_of_another_length_is_refused(decoded):
    well_formed = _png(np.zeros((16, 16, 3), np.uint8))
    # The 13 bytes of the header chunk's fields, and one more.
    data = well_formed[:8] + _png_chunk(b"IHDR", well_formed[16:29] + b"\x00") + well_formed[33:]
    with pytest.raises(ValueError, match=r"no PNG signature and header chunk of 13 bytes$"):
        compressed_to_rgb8(CompressedImage(format="png", data=data))
    assert decoded == []
    assert compressed_to_rgb8(CompressedImage(format="png", data=well_formed)).shape == (16, 16, 3)


def test_a_png_of_one_idat_per_row_is_accepted():
    # 4096 chunks are allowed whatever the size, enough for an encoder that
    # flushes each row of a 4096-row image into its own chunk.
    pixels = random_array("mono8", 4000, 16, seed=12)
    data = _png(pixels, idat_size=len(zlib.compress(pixels.tobytes())) // 4000 + 1, colour_type=0)
    assert data.count(b"IDAT") > 3900
    rgb = compressed_to_rgb8(CompressedImage(format="png", data=data))
    np.testing.assert_array_equal(rgb[..., 0], pixels)


@pytest.mark.parametrize("data", [
    _png(np.zeros((64, 64, 3), np.uint8), extra=_png_chunk(b"prIv", b"") * 20_000),
    _png(random_array("rgb8", 64, 64, seed=13), idat_size=1),
], ids=["empty private chunks", "1-byte IDAT chunks"])
def test_a_png_of_many_tiny_chunks_is_refused_before_decoding(decoded, data):
    most = 4096 + len(data) // 1024
    with pytest.raises(ValueError, match=(
        rf"corrupt png image .*: more than {most} chunks in {len(data)} bytes; at most {most} allowed "
        r"\(4096 and one more per 1024 bytes\)"
    )):
        compressed_to_rgb8(CompressedImage(format="png", data=data))
    assert decoded == []


def test_a_png_chunk_running_past_the_closing_chunk_is_refused(decoded):
    good = _png(random_array("rgb8", 8, 8, seed=14))
    data = good[:33] + struct.pack(">I", int.from_bytes(good[33:37], "big") + 1) + good[37:]
    with pytest.raises(ValueError, match=r"corrupt png image .*: the chunk at byte 33 runs past the closing IEND"):
        compressed_to_rgb8(CompressedImage(format="png", data=data))
    assert decoded == []


# --- a jpeg cut short and closed again -------------------------------------

def test_a_jpeg_with_restart_markers_cut_and_closed_again_is_refused_before_decoding(decoded):
    # 10x10 coding units of 16x16 pixels, a restart marker after each row of them but the last:
    # nine markers, RST0 .. RST7 then RST0 again.
    good = _jpeg_bytes(random_array("rgb8", 160, 160, seed=15), restart_marker_rows=1)
    assert compressed_to_rgb8(CompressedImage(format="jpeg", data=good)).shape == (160, 160, 3)
    decoded.clear()
    cut = good[: len(good) // 2] + b"\xff\xd9"
    with pytest.raises(ValueError, match=(
        r"corrupt jpeg image .*: truncated: 1 of the 2 RST0 markers that a 160x160 image "
        r"with a restart marker every 10 coding units holds"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=cut))
    assert decoded == []


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_jpeg_without_restart_markers_cut_and_closed_again_is_refused_by_the_decoder(decoded, options):
    # Past the least size a complete image needs, only the Huffman codes show it
    # short; libjpeg warns, and would otherwise fill the rest grey.
    good = _jpeg_bytes(random_array("rgb8", 160, 160, seed=17), **options)
    cut = good[: len(good) * 3 // 4] + b"\xff\xd9"
    with pytest.raises(ValueError, match=(
        r"^corrupt jpeg image \(format 'jpeg'\): Corrupt JPEG data: premature end of data segment$"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=cut))
    assert decoded == [(160, 160)]


def test_complete_jpegs_with_restart_markers_are_accepted():
    for height, width in ((37, 53), (8, 8), (9, 130)):
        for encoding in ("rgb8", "mono8"):
            pixels = random_array(encoding, height, width, seed=16)
            for options in ({"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2},
                            {"progressive": True}):
                for restart in ({"restart_marker_blocks": 1}, {"restart_marker_blocks": 3},
                                {"restart_marker_rows": 1}):
                    data = _jpeg_bytes(pixels, **options, **restart)
                    assert b"\xff\xdd" in data
                    rgb = compressed_to_rgb8(CompressedImage(format="jpeg", data=data))
                    assert rgb.shape == (height, width, 3)


# --- a jpeg cut between two scans and closed again ---------------------------

def _scan_starts(data: bytes) -> list[int]:
    starts, pos = [], data.find(b"\xff\xda")
    while pos >= 0:
        starts.append(pos)
        pos = data.find(b"\xff\xda", pos + 2)
    return starts


def _cut_after_scans(data: bytes, scans: int) -> bytes:
    """`data` cut where its scan after `scans` of them starts, and closed with an end-of-image marker."""
    return data[:_scan_starts(data)[scans]] + b"\xff\xd9"


# libjpeg's progressive script: the scans that finish components' coefficients
# are the last four for colour (DC of all, then 1..63 of Cr, Cb and Y) and the
# last two for greyscale (DC, then 1..63).
@pytest.mark.parametrize("encoding, scans, missing", [
    ("rgb8", 1, "coefficients 0..63"), ("rgb8", 2, "coefficients 0..63"), ("rgb8", 5, "coefficients 0..63"),
    ("rgb8", 7, "coefficients 1..63"), ("rgb8", 9, "coefficients 1..63"),
    ("mono8", 1, "coefficients 0..63"), ("mono8", 4, "coefficients 0..63"), ("mono8", 5, "coefficients 1..63"),
])
def test_a_progressive_jpeg_cut_between_scans_and_closed_again_is_refused_before_decoding(
        decoded, encoding, scans, missing):
    # libjpeg decodes it without a warning, the image blurred or a component grey.
    good = _jpeg_bytes(random_array(encoding, 160, 160, seed=18), progressive=True)
    assert len(_scan_starts(good)) == (10 if encoding == "rgb8" else 6)
    assert compressed_to_rgb8(CompressedImage(format="jpeg", data=good)).shape == (160, 160, 3)
    cut = _cut_after_scans(good, scans)
    assert simplejpeg.decode_jpeg(cut, strict=True).shape[:2] == (160, 160)
    decoded.clear()
    with pytest.raises(ValueError, match=(
        rf"^corrupt jpeg image \(format 'jpeg'\): truncated: component 1 has {missing} never completed "
        rf"in {scans} scans?$"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=cut))
    assert decoded == []


def test_a_progressive_jpeg_without_its_dc_refinement_is_refused_before_decoding(decoded):
    good = _jpeg_bytes(random_array("rgb8", 64, 64, seed=19), progressive=True)
    starts = _scan_starts(good)
    msg = CompressedImage(format="jpeg", data=good[:starts[6]] + good[starts[7]:])
    with pytest.raises(ValueError, match=r"truncated: component 1 has coefficient 0 never completed in 9 scans$"):
        compressed_to_rgb8(msg)
    assert decoded == []


_DC_CODE_LENGTHS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # ITU T.81 table K.3: categories 0..11
_EOB_ONLY_CODE_LENGTHS = (1,) + (0,) * 15  # one AC symbol, end-of-block, coded as a single 0


def _huffman_codes(lengths: tuple[int, ...]) -> list[str]:
    """The canonical codes of a table's symbols, in order, as strings of bits."""
    codes, code = [], 0
    for length, count in enumerate(lengths, 1):
        for _ in range(count):
            codes.append(format(code, f"0{length}b"))
            code += 1
        code <<= 1
    return codes


def _dc_bits(difference: int) -> str:
    category = abs(difference).bit_length()
    code = _huffman_codes(_DC_CODE_LENGTHS)[category]
    if category == 0:
        return code
    value = difference if difference > 0 else difference + (1 << category) - 1
    return code + format(value, f"0{category}b")


def _scan_data(levels: np.ndarray, components: tuple[int, ...]) -> bytes:
    """The coded blocks of one scan, each only its DC coefficient and an end-of-block."""
    bits, predictions = [], dict.fromkeys(components, 0)
    for block in levels.reshape(-1, levels.shape[2]):
        for component in components:
            dc = 8 * (int(block[component - 1]) - 128)
            bits.append(_dc_bits(dc - predictions[component]) + "0")
            predictions[component] = dc
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    coded = int(stream, 2).to_bytes(len(stream) // 8, "big")
    return coded.replace(b"\xff", b"\xff\x00")


def _flat_block_jpeg(levels: np.ndarray, scans: list[tuple[int, ...]]) -> bytes:
    """A 4:4:4 sequential jpeg of flat 8x8 blocks, block (y, x) of (Y, Cb, Cr) `levels[y, x]`.

    Each scan holds the components listed (numbered from 1), so that scans of
    one component each, which Pillow never writes, can be made. With a
    quantisation table of ones, a flat block of level s codes its DC
    coefficient, 8 (s - 128), exactly.
    """
    def segment(marker: int, body: bytes) -> bytes:
        return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body

    rows, columns = levels.shape[:2]
    frame = struct.pack(">BHHB", 8, 8 * rows, 8 * columns, 3) + b"".join(bytes((c, 0x11, 0)) for c in (1, 2, 3))
    tables = (bytes((0x00, *_DC_CODE_LENGTHS, *range(12)))
              + bytes((0x10, *_EOB_ONLY_CODE_LENGTHS, 0x00)))
    data = b"\xff\xd8" + segment(0xDB, bytes(1) + bytes((1,)) * 64) + segment(0xC0, frame) + segment(0xC4, tables)
    for components in scans:
        header = bytes((len(components),)) + b"".join(bytes((c, 0x00)) for c in components) + bytes((0, 63, 0))
        data += segment(0xDA, header) + _scan_data(levels, components)
    return data + b"\xff\xd9"


def _block_levels() -> np.ndarray:
    return np.random.default_rng(20).integers(0, 256, (6, 10, 3), dtype=np.uint8)


def test_a_sequential_jpeg_of_one_scan_per_component_is_accepted():
    interleaved = _flat_block_jpeg(_block_levels(), [(1, 2, 3)])
    expected = compressed_to_rgb8(CompressedImage(format="jpeg", data=interleaved))
    with PILImage.open(io.BytesIO(interleaved)) as image:
        np.testing.assert_array_equal(expected, np.array(image.convert("RGB")))
    for scans in ([(1,), (2,), (3,)], [(3,), (1,), (2,)], [(1,), (2, 3)]):
        data = _flat_block_jpeg(_block_levels(), scans)
        np.testing.assert_array_equal(compressed_to_rgb8(CompressedImage(format="jpeg", data=data)), expected)


@pytest.mark.parametrize("scans, missing", [(1, 2), (2, 3)])
def test_a_sequential_jpeg_cut_after_a_component_and_closed_again_is_refused_before_decoding(
        decoded, scans, missing):
    cut = _cut_after_scans(_flat_block_jpeg(_block_levels(), [(1,), (2,), (3,)]), scans)
    # libjpeg decodes it without a warning, the missing components grey.
    assert simplejpeg.decode_jpeg(cut, strict=True).shape[:2] == (48, 80)
    decoded.clear()
    with pytest.raises(ValueError, match=(
        rf"^corrupt jpeg image \(format 'jpeg'\): truncated: component {missing} has coefficients 0..63 "
        rf"never completed in {scans} scans?$"
    )):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=cut))
    assert decoded == []


@pytest.mark.parametrize("comment", [
    b"\xff\xda",
    b"\xff\xda\x00\x08\x01\x09\x00\x00\x3f\x00",  # a scan of component 9, which the frame lacks
    b"\xff\xda\x00\x09\x01\x01\x00\x00\x3f\x00",  # a length that does not fit its components
], ids=["marker", "foreign component", "bad length"])
def test_a_segment_between_scans_that_holds_a_start_of_scan_marker_is_no_scan(comment):
    good = _jpeg_bytes(random_array("rgb8", 64, 64, seed=21), progressive=True)
    expected = compressed_to_rgb8(CompressedImage(format="jpeg", data=good))
    last = _scan_starts(good)[-1]
    data = good[:last] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + good[last:]
    np.testing.assert_array_equal(compressed_to_rgb8(CompressedImage(format="jpeg", data=data)), expected)


# --- Pillow's own limit and messages ---------------------------------------

@pytest.mark.parametrize("side", [40, 64], ids=["above the warning", "above the error"])
def test_pillows_pixel_limit_gives_way_to_max_pixels(monkeypatch, side):
    # Pillow warns above MAX_IMAGE_PIXELS (89 M by default) and refuses above
    # twice that; lowered here so that the images stay small.
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    msg = CompressedImage(format="png", data=_png(np.full((side, side, 3), 90, np.uint8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb = compressed_to_rgb8(msg, max_pixels=side * side)
    assert rgb.shape == (side, side, 3) and (rgb == 90).all()
    assert not [w for w in caught if issubclass(w.category, PILImage.DecompressionBombWarning)]
    assert PILImage.MAX_IMAGE_PIXELS == 1000


def test_without_max_pixels_pillows_limit_applies(monkeypatch, decoded):
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    small = CompressedImage(format="png", data=_png(np.zeros((40, 50, 3), np.uint8)))
    assert compressed_to_rgb8(small).shape == (40, 50, 3)
    decoded.clear()
    large = CompressedImage(format="png", data=_png(np.zeros((41, 50, 3), np.uint8)))
    with pytest.raises(ValueError, match=(
        r"^image of 50x41 exceeds Pillow's limit of 2000 pixels \(twice PIL.Image.MAX_IMAGE_PIXELS\)"
    )):
        compressed_to_rgb8(large)
    assert decoded == []


def _jpeg_with_components(data: bytes, components: int) -> bytes:
    start = data.index(b"\xff\xc0")
    return data[:start + 9] + bytes([components]) + data[start + 10:]


def _jpeg_with_precision(data: bytes, bits: int) -> bytes:
    """The jpeg `data` as an extended-process frame (the one that allows 12 bits) of `bits` per sample."""
    start = data.index(b"\xff\xc0")
    return data[:start + 1] + b"\xc1" + data[start + 2:start + 4] + bytes([bits]) + data[start + 5:]


@pytest.mark.parametrize("fmt, data, problem", [
    ("png", _png(np.zeros((4, 4, 3), np.uint8), colour_type=5),
     "colour type 5 is not defined; allowed: 0, 2, 3, 4, 6"),
    ("png", _png(np.zeros((4, 4, 3), np.uint8), bit_depth=4),
     "bit depth 4 is not defined for colour type 2; allowed: 8, 16"),
    ("jpeg", _jpeg_with_precision(_noisy_jpeg(16, 16), 12), "12-bit samples are not supported; allowed: 8-bit"),
    ("jpeg", _jpeg_with_components(_noisy_jpeg(16, 16), 2),
     "2 components are not supported; allowed: 1 (greyscale), 3 (YCbCr or RGB) or 4 (CMYK or YCCK)"),
], ids=["png colour type", "png bit depth", "12-bit jpeg", "2-component jpeg"])
def test_an_unsupported_format_is_named_not_the_stream_object(fmt, data, problem):
    with pytest.raises(ValueError) as refusal:
        compressed_to_rgb8(CompressedImage(format=fmt, data=data))
    assert str(refusal.value) == f"corrupt {fmt} image (format '{fmt}'): {problem}"


def _cmyk_jpeg(pixels: np.ndarray, ycck: bool = False, **options) -> bytes:
    """A CMYK jpeg, or with `ycck` the same bytes read as YCCK (the Adobe segment's colour transform 2)."""
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, "CMYK").save(buffer, "JPEG", **options)
    data = buffer.getvalue()
    adobe = data.index(b"\xff\xee")
    transform = adobe + 1 + int.from_bytes(data[adobe + 2:adobe + 4], "big")
    assert data[adobe + 4:adobe + 9] == b"Adobe" and data[transform] == 0
    return data[:transform] + bytes((2 if ycck else 0,)) + data[transform + 1:]


@pytest.mark.parametrize("ycck", [False, True], ids=["CMYK", "YCCK"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"quality": 100}])
def test_a_four_component_jpeg_decodes_as_pillow_converts_it(ycck, options):
    flat = np.full((16, 16, 4), (10, 20, 30, 40), np.uint8)
    noise = np.random.default_rng(22).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    for pixels in (flat, noise):
        data = _cmyk_jpeg(pixels, ycck, **options)
        rgb = compressed_to_rgb8(CompressedImage(format="jpeg", data=data))
        with PILImage.open(io.BytesIO(data)) as image:
            assert image.mode == "CMYK"
            expected = np.array(image.convert("RGB"))
        assert rgb.shape == expected.shape
        # The two round CMYK to RGB differently, by up to 2 levels.
        assert np.abs(rgb.astype(int) - expected).max() <= 2
