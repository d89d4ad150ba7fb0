"""Scale, crop, flip and colour augmentations keep image and labels aligned."""
import inspect

import numpy as np
import pytest

from efficientps_ros.data.synthetic import Scene
from efficientps_ros.data.targets import scene_target
from efficientps_ros.data.transforms import augment, fit_scale, hflip, random_crop, rescale
from efficientps_ros.model import load_config

CAR = 13
PALETTE = np.zeros((256, 3), np.uint8)
PALETTE[[0, 1, 2, CAR]] = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0]]


def _blocks(height: int = 48, width: int = 64) -> Scene:
    """Blocks of three stuff classes, the image painted by class, two cars."""
    semantic = np.zeros((height, width), np.uint8)
    semantic[: height // 2, width // 2 :] = 1
    semantic[height // 2 :, : width // 2] = 2
    instance = np.zeros((height, width), np.uint16)
    semantic[4:12, 4:20], instance[4:12, 4:20] = CAR, 1
    semantic[30:44, 40:60], instance[30:44, 40:60] = CAR, 2
    return Scene(PALETTE[semantic], semantic, instance, [CAR, CAR], [False, True])


def test_augment_defaults_take_the_authors_scales_and_flips_but_keep_the_image_size():
    # The authors crop 1024x2048 from Cityscapes; the defaults leave base and crop to the scene's own size.
    defaults = {k: p.default for k, p in inspect.signature(augment).parameters.items() if k not in ("scene", "rng")}
    assert defaults == {"scale_range": (0.5, 2.0), "base_size": None, "crop_size": None, "flip_probability": 0.5,
                        "size_divisor": None, "photometric": False}


def test_the_crop_is_a_multiple_of_the_size_divisor_where_the_image_allows():
    rng = np.random.default_rng(2)
    sizes = {augment(_blocks(), rng, crop_size=(40, 50), size_divisor=16).semantic.shape for _ in range(30)}
    # Crops of 32x48 from images scaled 0.5-2x: smaller images stay whole.
    assert (32, 48) in sizes and all(h <= 32 and w <= 48 for h, w in sizes)


def test_fit_scale_fits_the_long_side_and_the_short_side():
    assert fit_scale((1024, 2048), (1024, 2048)) == 1.0
    assert fit_scale((512, 1024), (1024, 2048)) == 2.0
    assert fit_scale((1000, 1000), (1024, 2048)) == pytest.approx(1.024)
    assert fit_scale((375, 1242), (1024, 2048)) == pytest.approx(2048 / 1242)


def test_rescale_samples_label_maps_nearest():
    scene = _blocks()
    doubled = rescale(scene, 2.0)
    assert doubled.semantic.shape == (96, 128) and doubled.image.shape == (96, 128, 3)
    assert np.array_equal(doubled.semantic, scene.semantic.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(doubled.instance, scene.instance.repeat(2, 0).repeat(2, 1))
    halved = rescale(scene, 0.5)
    assert np.array_equal(halved.semantic, scene.semantic[::2, ::2])
    assert halved.instance_classes == [CAR, CAR] and halved.crowd == [False, True]


def test_random_crop_takes_a_window_of_the_source():
    scene = _blocks()
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(200):
        crop = random_crop(scene, (40, 60), rng)
        assert crop.semantic.shape == (40, 60)
        matches = [
            (top, left) for top in range(9) for left in range(5)
            if np.array_equal(crop.semantic, scene.semantic[top : top + 40, left : left + 60])
            and np.array_equal(crop.image, scene.image[top : top + 40, left : left + 60])
        ]
        assert matches
        corners.update(matches)
    # Every offset, the far ones included, can occur.
    assert (0, 0) in corners and (8, 4) in corners


def test_a_crop_larger_than_the_scene_keeps_that_side_whole():
    crop = random_crop(_blocks(), (100, 30), np.random.default_rng(1))
    assert crop.semantic.shape == (48, 30)


def test_augment_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(3)
    for _ in range(20):
        out = augment(_blocks(), rng, crop_size=(40, 48))
        assert out.image.shape[:2] == out.semantic.shape == out.instance.shape
        # Where a pixel's 3x3 neighbourhood is one class, the bilinear image shows that class's colour.
        s = out.semantic
        inner = s[1:-1, 1:-1]
        uniform = np.ones_like(inner, bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                uniform &= s[dy : dy + inner.shape[0], dx : dx + inner.shape[1]] == inner
        error = np.abs(out.image[1:-1, 1:-1].astype(int) - PALETTE[inner].astype(int)).max(-1)
        assert uniform.mean() > 0.5 and (error[uniform] <= 2).all()
        things = out.instance > 0
        assert (out.semantic[things] == CAR).all()


def test_flip_mirrors_everything_and_only_the_flip_differs():
    scene = _blocks()
    flipped = augment(scene, np.random.default_rng(7), flip_probability=1.0)
    kept = augment(scene, np.random.default_rng(7), flip_probability=0.0)
    assert np.array_equal(flipped.semantic, kept.semantic[:, ::-1])
    assert np.array_equal(flipped.instance, kept.instance[:, ::-1])
    assert np.array_equal(flipped.image, kept.image[:, ::-1])
    assert np.array_equal(hflip(hflip(scene)).image, scene.image)


def test_photometric_jitter_changes_colours_only():
    scene = _blocks()
    plain = augment(scene, np.random.default_rng(5), scale_range=(1, 1), flip_probability=0)
    jittered = augment(scene, np.random.default_rng(5), scale_range=(1, 1), flip_probability=0, photometric=True)
    assert np.array_equal(plain.image, scene.image)
    assert not np.array_equal(jittered.image, scene.image)
    assert np.array_equal(jittered.semantic, scene.semantic) and np.array_equal(jittered.instance, scene.instance)


def test_instances_cropped_away_leave_the_targets():
    scene = _blocks()
    # The top-left 24x32 window holds instance 1 only; instance 2 is a crowd anyway.
    top_left = np.s_[:24, :32]
    window = Scene(scene.image[top_left], scene.semantic[top_left], scene.instance[top_left], [CAR, CAR], [False, False])
    target = scene_target(window, load_config("small"))
    assert target["boxes"].tolist() == [[4, 4, 19, 11]]


@pytest.mark.parametrize("kwargs, message", [
    ({"scale_range": (0.0, 1.0)}, "scale range"),
    ({"scale_range": (2.0, 1.0)}, "scale range"),
    ({"flip_probability": 1.5}, "flip probability"),
    ({"crop_size": (0, 10)}, "crop size"),
    ({"size_divisor": 0}, "size divisor"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment(_blocks(), np.random.default_rng(0), **kwargs)


def test_augment_returns_writable_maps_from_read_only_input():
    image = np.zeros((8, 8, 3), np.uint8)
    semantic = np.zeros((8, 8), np.uint8)
    instance = np.zeros((8, 8), np.uint16)
    for a in (image, semantic, instance):
        a.flags.writeable = False
    out = augment(Scene(image, semantic, instance, [], []), np.random.default_rng(0), scale_range=(1.0, 1.0),
                  flip_probability=0.0)
    assert out.image.flags.writeable and out.semantic.flags.writeable and out.instance.flags.writeable
