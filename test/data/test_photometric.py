"""Photometric jitter: new lighting each call, same shape and type, the image's content kept."""
import numpy as np
import pytest

from efficientps_ros.data.photometric import photometric_jitter, rotate_hue
from efficientps_ros.data.synthetic import street_scene


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return street_scene(64, 128, seed=2).image


def test_jitter_keeps_shape_and_type_and_is_seeded(image):
    a = photometric_jitter(image, np.random.default_rng(1))
    b = photometric_jitter(image, np.random.default_rng(1))
    c = photometric_jitter(image, np.random.default_rng(2))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_no_jitter_leaves_the_image_as_it_was(image):
    same = photometric_jitter(image, np.random.default_rng(0), brightness=0, contrast=0, saturation=0, hue=0)
    assert np.abs(same.astype(int) - image).max() <= 1


def test_brightness_alone_scales_the_pixels(image):
    rng = np.random.default_rng(5)
    out = photometric_jitter(image, rng, brightness=0.5, contrast=0, saturation=0, hue=0)
    factor = np.random.default_rng(5).uniform(0.5, 1.5)
    expected = np.clip(image * factor + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_jitter_covers_a_range_of_brightness(image):
    means = [photometric_jitter(image, np.random.default_rng(s)).mean() for s in range(40)]
    assert max(means) > 1.25 * image.mean() and min(means) < 0.75 * image.mean()


def test_hue_turns_colours_but_not_greys():
    grey = np.full((1, 1, 3), 120.0, np.float32)
    red = np.array([[[200.0, 40.0, 40.0]]], np.float32)
    assert np.allclose(rotate_hue(grey, 1.0), grey, atol=1e-3)
    turned = rotate_hue(red, 2 * np.pi / 3)
    assert turned[0, 0].argmax() != 0
    assert np.allclose(rotate_hue(turned, -2 * np.pi / 3), red, atol=1e-2)


def test_bad_input_is_refused_with_its_reason(image):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        photometric_jitter(image.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="brightness"):
        photometric_jitter(image, np.random.default_rng(0), brightness=1.5)
