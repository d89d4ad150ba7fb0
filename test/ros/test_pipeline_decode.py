"""decode(): the node's one entry from a message to pixels refuses, from the header alone,
what the network could not afford and what cannot be a complete image."""
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from efficientps_ros.ros.image_codec import array_to_image, rgb8_to_compressed
from efficientps_ros.ros.pipeline import decode

NODE_DEFAULT_MAX_PIXELS = 8192 * 4096


def test_a_1x100000_raw_frame_is_refused_before_its_data_is_read():
    # 300 KB that the network would see as 32x100000: 24 times a 100x1000 frame.
    message = array_to_image(np.zeros((1, 100_000, 3), np.uint8), "rgb8")
    with pytest.raises(ValueError, match=r"image of 100000x1 has an aspect ratio of 100000:1; allowed: at most 16:1"):
        decode(message, "raw", NODE_DEFAULT_MAX_PIXELS, size_divisor=32)


def test_a_1x33554432_header_is_refused_without_data():
    # The largest area the default limit allows, all in one row: about 1 G network pixels once padded.
    message = Image(height=1, width=33_554_432, encoding="rgb8", step=3 * 33_554_432, data=b"\0" * 16)
    with pytest.raises(ValueError, match="aspect ratio of 33554432:1"):
        decode(message, "raw", NODE_DEFAULT_MAX_PIXELS, size_divisor=32)


def test_the_raw_limit_counts_padding_given_the_models_divisor():
    message = array_to_image(np.zeros((100, 1000, 3), np.uint8), "rgb8")
    with pytest.raises(ValueError, match=r"padded to 1024x128 for the network"):
        decode(message, "raw", 120_000, size_divisor=32)
    assert decode(message, "raw", 120_000).shape == (100, 1000, 3)
    assert decode(message, "raw", 131_072, size_divisor=32).shape == (100, 1000, 3)


def test_a_fixed_inference_size_is_checked_as_the_network_sees_it():
    message = array_to_image(np.zeros((100, 100, 3), np.uint8), "rgb8")
    with pytest.raises(ValueError, match=r"resized and padded to 1024x1024"):
        decode(message, "raw", 1_000_000, size_divisor=32, inference_size=(1000, 1000))


def test_a_truncated_8000x4000_jpeg_is_refused():
    pixels = np.zeros((4000, 8000, 3), np.uint8)
    pixels[:100] = 200
    good = rgb8_to_compressed(pixels, "jpeg")
    for data in (bytes(good.data)[:10_000], bytes(good.data)[:10_000] + b"\xff\xd9"):
        message = CompressedImage(format="jpeg", data=data)
        with pytest.raises(ValueError, match="corrupt jpeg image .*truncated"):
            decode(message, "compressed", NODE_DEFAULT_MAX_PIXELS, size_divisor=32)


def test_a_compressed_frame_with_an_extreme_aspect_ratio_is_refused():
    message = rgb8_to_compressed(np.zeros((2, 2000, 3), np.uint8), "png")
    with pytest.raises(ValueError, match="aspect ratio of 1000:1"):
        decode(message, "compressed", NODE_DEFAULT_MAX_PIXELS, size_divisor=32)


def test_a_message_like_object_with_a_text_height_is_bad_input_not_a_crash():
    class Odd:
        height, width, encoding, step, data, is_bigendian = "4", 4, "rgb8", 12, b"\0" * 48, 0

    with pytest.raises(ValueError, match="cannot decode the image \\(TypeError"):
        decode(Odd(), "raw", NODE_DEFAULT_MAX_PIXELS, size_divisor=32)
