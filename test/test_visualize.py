"""Panoptic colouring and overlays against straightforward per-pixel references."""
import numpy as np
import pytest

from efficientps_ros.model.config import load_config
from efficientps_ros.result import Instance, PanopticResult
from efficientps_ros.visualize import (
    INSTANCE_BASE,
    PanopticPainter,
    class_palette,
    colorize_panoptic,
    gather_rgb,
    instance_shades,
    overlay,
    panoptic_index,
)

CONFIG = load_config("small")
CAR = next(c for c in CONFIG.classes if c.name == "car")
ROAD = next(c for c in CONFIG.classes if c.name == "road")


def two_cars(height: int = 24, width: int = 40) -> PanopticResult:
    semantic = np.full((height, width), ROAD.train_id, np.uint8)
    semantic[:3] = 255
    instance = np.zeros((height, width), np.uint16)
    instance[5:12, 4:15] = 1
    instance[8:20, 20:33] = 2
    semantic[instance > 0] = CAR.train_id
    instances = [
        Instance(1, CAR.train_id, "car", 0.9, (4, 5, 15, 12)),
        Instance(2, CAR.train_id, "car", 0.8, (20, 8, 33, 20)),
    ]
    return PanopticResult(semantic, instance, np.zeros((height, width), np.int32), instances)


def test_class_palette_maps_train_ids_and_leaves_void_black():
    palette = class_palette(CONFIG.classes)
    assert palette.shape == (256, 3)
    for info in CONFIG.classes:
        assert tuple(palette[info.train_id]) == info.color
    assert tuple(palette[255]) == (0, 0, 0)


def test_colorize_gives_stuff_its_class_colour_and_void_black():
    result = two_cars()
    colors = colorize_panoptic(result, CONFIG)
    assert colors.shape == (24, 40, 3) and colors.dtype == np.uint8
    assert (colors[3:5] == ROAD.color).all()
    assert (colors[:3] == 0).all()


def test_instances_of_one_class_get_distinct_shades_near_the_class_colour():
    colors = colorize_panoptic(two_cars(), CONFIG)
    first, second = colors[6, 5], colors[10, 25]
    assert (colors[5:12, 4:15] == first).all()
    assert (colors[8:20, 20:33] == second).all()
    assert not np.array_equal(first, second)
    for shade in (first, second):
        assert np.abs(shade.astype(int) - CAR.color).max() <= 40


def test_instance_shades_are_deterministic_and_differ_for_neighbouring_ids():
    base = np.tile(np.array([[100, 100, 100]], np.uint8), (50, 1))
    ids = np.arange(50)
    shades = instance_shades(base, ids)
    assert np.array_equal(shades, instance_shades(base, ids))
    assert len({tuple(s) for s in shades[1:]}) == 49


def test_panoptic_index_uses_train_ids_then_offset_instance_ids():
    result = two_cars()
    index = panoptic_index(result)
    assert index[4, 0] == ROAD.train_id
    assert index[6, 5] == INSTANCE_BASE + 1
    assert index[10, 25] == INSTANCE_BASE + 2


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 64)])
def test_gather_rgb_equals_numpy_fancy_indexing(shape):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (300, 3), dtype=np.uint8)
    index = rng.integers(0, 300, shape)
    gathered = gather_rgb(palette, index)
    assert gathered.flags.c_contiguous
    assert np.array_equal(gathered, palette[index])


def test_gather_rgb_of_a_uint8_index_ending_in_its_largest_value():
    palette = np.random.default_rng(3).integers(0, 256, (256, 3), dtype=np.uint8)
    index = np.asarray([[0, 17, 255]], np.uint8)
    assert np.array_equal(gather_rgb(palette, index), palette[index])


def test_overlay_blends_with_integer_weights():
    image = np.full((2, 2, 3), 200, np.uint8)
    colors = np.full((2, 2, 3), 100, np.uint8)
    assert (overlay(image, colors, 0.0) == 200).all()
    assert (overlay(image, colors, 1.0) == 100).all()
    assert (overlay(image, colors, 0.5) == 150).all()
    white = np.full((2, 2, 3), 255, np.uint8)
    assert (overlay(white, white, 0.3) <= 255).all() and (overlay(white, white, 0.3) >= 253).all()


def test_overlay_refuses_mismatched_shapes_and_bad_alpha():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        overlay(image, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, image, 1.5)


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
def test_painter_overlay_equals_overlay_of_the_colouring(alpha):
    rng = np.random.default_rng(1)
    result = two_cars()
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    painter = PanopticPainter(CONFIG.classes)
    expected = overlay(image, colorize_panoptic(result, CONFIG), alpha)
    assert np.array_equal(painter.overlay(image, result, alpha), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_painter_overlay_in_bands_on_threads_equals_the_whole_image_overlay(threads):
    # 300 rows: bands of 128 rows, the last one short, with instances across both band edges.
    result = two_cars(300, 50)
    result.instance[120:140, 2:30] = 1
    result.instance[250:300, 35:49] = 2
    result.semantic[result.instance > 0] = CAR.train_id
    # Void (255, the largest uint8 index) ends the first band, which holds no instance.
    result.semantic[127, -1] = 255
    result.instance[:128] = 0
    image = np.random.default_rng(2).integers(0, 256, (300, 50, 3), dtype=np.uint8)
    expected = overlay(image, colorize_panoptic(result, CONFIG), 0.35)
    assert np.array_equal(PanopticPainter(CONFIG.classes, threads=threads).overlay(image, result, 0.35), expected)


def test_painter_refuses_an_image_of_another_size():
    painter = PanopticPainter(CONFIG.classes)
    with pytest.raises(ValueError, match="differ in size"):
        painter.overlay(np.zeros((10, 10, 3), np.uint8), two_cars(), 0.5)


def test_result_without_instances_is_coloured_by_class_only():
    result = two_cars()
    result = PanopticResult(result.semantic, np.zeros_like(result.instance), result.panoptic, [])
    colors = colorize_panoptic(result, CONFIG)
    assert (colors[6, 5] == CAR.color).all()
