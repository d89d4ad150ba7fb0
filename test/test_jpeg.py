"""JPEG decoding: Pillow's pixels, and libjpeg's warnings as errors but for junk before the end."""
import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from efficientps_ros.jpeg import decode_jpeg


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("channels, options", [
    (3, {}), (3, {"subsampling": 0}), (3, {"progressive": True}), (1, {}),
], ids=["4:2:0", "4:4:4", "progressive", "greyscale"])
def test_the_pixels_are_pillows(channels, options):
    data = _jpeg(_noise(37, 53, channels), **options)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.array(image.convert("RGB"))
    decoded = decode_jpeg(data, (37, 53))
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_stream_cut_short_and_closed_again_is_refused(options):
    good = _jpeg(_noise(160, 160, seed=1), **options)
    cut = good[: len(good) * 3 // 4] + b"\xff\xd9"
    Image.open(io.BytesIO(cut)).load()  # Pillow decodes it, the rest grey
    with pytest.raises(ValueError, match=r"^Corrupt JPEG data: premature end of data segment$"):
        decode_jpeg(cut, (160, 160))


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_junk_before_the_end_of_image_marker_leaves_the_image_whole_in_one_decode(monkeypatch, options):
    # Some webcams' MJPEG frames carry it; every scan decoded before libjpeg met it.
    good = _jpeg(_noise(48, 64, seed=2), **options)
    # More than the decoder's bit buffer reads ahead and drops silently.
    padded = good[:-2] + bytes(range(1, 33)) + b"\xff\xd9"
    with pytest.raises(ValueError, match=r"^Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9$"):
        simplejpeg.decode_jpeg(padded, strict=True)
    expected = simplejpeg.decode_jpeg(good, colorspace="RGB")
    decodes = []
    original = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *args, **kwargs: decodes.append(1) or original(*args, **kwargs))
    assert np.array_equal(decode_jpeg(padded, (48, 64)), expected)
    assert len(decodes) == 1


def test_junk_between_scans_is_refused():
    good = _jpeg(_noise(48, 64, seed=3), progressive=True)
    second_scan = good.index(b"\xff\xda", good.index(b"\xff\xda") + 2)
    damaged = good[:second_scan] + b"\x00\x12" + good[second_scan:]
    with pytest.raises(ValueError, match=r"^Corrupt JPEG data: 2 extraneous bytes before marker 0xda$"):
        decode_jpeg(damaged, (48, 64))


def test_no_jpeg_at_all_is_refused():
    with pytest.raises(ValueError):
        decode_jpeg(b"\x89PNG\r\n\x1a\n", (1, 1))


@pytest.mark.parametrize("size", [(48, 65), (49, 64), (1, 1)])
def test_a_frame_libjpeg_reads_at_another_size_than_checked_is_refused_before_decoding(monkeypatch, size):
    data = _jpeg(_noise(48, 64, seed=4))
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *args, **kwargs: pytest.fail("decoded"))
    with pytest.raises(ValueError, match=rf"^libjpeg reads the frame as 64x48 where its header was read as "
                                         rf"{size[1]}x{size[0]}$"):
        decode_jpeg(data, size)
