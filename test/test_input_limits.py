"""Input sizes refused from the header alone: empty, too elongated, too large once padded."""
import re

import pytest

from efficientps_ros.input_limits import MAX_ASPECT_RATIO, check_image_size, network_size


@pytest.mark.parametrize("height, width", [(1, 100_000), (100_000, 1), (1, 33_554_432)])
def test_extreme_aspect_ratios_are_refused(height, width):
    expected = f"image of {width}x{height} has an aspect ratio of {max(height, width)}:1; allowed: at most 16:1"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_image_size(height, width, max_pixels=8192 * 4096, size_divisor=32)


def test_the_aspect_bound_is_inclusive():
    check_image_size(64, 64 * MAX_ASPECT_RATIO, max_pixels=10**6, size_divisor=32)
    with pytest.raises(ValueError, match=r"aspect ratio of 16\.2:1"):
        check_image_size(64, 1036, max_pixels=10**6, size_divisor=32)


def test_the_limit_bounds_the_padded_area_the_network_sees():
    assert network_size(100, 1000, 32) == (128, 1024)
    # 100,000 pixels of image, but 131,072 for the network.
    with pytest.raises(ValueError, match=re.escape(
        "image of 1000x100 is padded to 1024x128 for the network (a multiple of 32), 131072 pixels, "
        "which exceeds max_image_pixels (131071)"
    )):
        check_image_size(100, 1000, max_pixels=131_071, size_divisor=32)
    check_image_size(100, 1000, max_pixels=131_072, size_divisor=32)
    # Without the divisor only the image's own area counts.
    check_image_size(100, 1000, max_pixels=100_000)


def test_the_image_itself_is_bounded_too():
    with pytest.raises(ValueError, match=re.escape("image of 1024x1024 exceeds max_image_pixels (1000000)")):
        check_image_size(1024, 1024, max_pixels=1_000_000, size_divisor=32)


def test_a_fixed_inference_size_is_what_the_network_sees():
    assert network_size(100, 100, 32, inference_size=(1000, 1000)) == (1024, 1024)
    with pytest.raises(ValueError, match=re.escape("is resized and padded to 1024x1024 for the network")):
        check_image_size(100, 100, max_pixels=1_000_000, size_divisor=32, inference_size=(1000, 1000))
    # A large frame shrunk for the network still has to fit once decoded.
    check_image_size(960, 1920, max_pixels=2_000_000, size_divisor=32, inference_size=(512, 1024))
    with pytest.raises(ValueError, match="exceeds max_image_pixels"):
        check_image_size(1500, 2000, max_pixels=2_000_000, size_divisor=32, inference_size=(512, 1024))


@pytest.mark.parametrize("height, width", [(0, 0), (0, 10), (10, 0)])
def test_empty_images_are_refused(height, width):
    with pytest.raises(ValueError, match=re.escape(f"empty image: {width}x{height} pixels")):
        check_image_size(height, width, max_pixels=100)
