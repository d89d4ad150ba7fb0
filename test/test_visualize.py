"""Panoptic colouring and overlays against straightforward per-pixel references."""
import numpy as np
import pytest

from efficientps_ros.model.config import load_config
from efficientps_ros.result import Instance, PanopticResult
from efficientps_ros.visualize import (
    PALETTE_BLOCK,
    PanopticPainter,
    add_scaled,
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


def test_panoptic_index_is_the_instance_id_times_256_plus_the_train_id():
    result = two_cars()
    index = panoptic_index(result)
    assert index.dtype == np.uint16
    assert index[4, 0] == ROAD.train_id and index[0, 0] == 255
    assert index[6, 5] == PALETTE_BLOCK + CAR.train_id
    assert index[10, 25] == 2 * PALETTE_BLOCK + CAR.train_id


@pytest.mark.parametrize("count", [255, 256, 999])
def test_every_pixel_of_many_instances_gets_its_class_colour_or_its_shade(count):
    # 256 instances and more no longer fit a uint16 index.
    rng = np.random.default_rng(count)
    height, width = 40, 50
    semantic = rng.choice([c.train_id for c in CONFIG.classes] + [255], (height, width)).astype(np.uint8)
    instance = np.zeros((height, width), np.uint16)
    instance.ravel()[rng.choice(height * width, count, replace=False)] = np.arange(1, count + 1)
    class_ids = rng.choice([c.train_id for c in CONFIG.classes if c.is_thing], count)
    semantic[instance > 0] = class_ids[instance[instance > 0] - 1]
    instances = [Instance(k, int(class_ids[k - 1]), "thing", 0.9, (0, 0, 1, 1)) for k in range(1, count + 1)]
    result = PanopticResult(semantic, instance, np.zeros((height, width), np.int32), instances)
    palette = class_palette(CONFIG.classes)
    colors = colorize_panoptic(result, CONFIG)
    for y in range(height):
        for x in range(width):
            k = int(instance[y, x])
            if k == 0:
                expected = palette[semantic[y, x]]
            else:
                expected = instance_shades(palette[class_ids[k - 1]][None], np.asarray([k]))[0]
            assert np.array_equal(colors[y, x], expected), (y, x, k)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    painted = PanopticPainter(CONFIG.classes, threads=1).overlay(image, result, 0.35)
    assert np.array_equal(painted, overlay(image, colors, 0.35))


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


def test_add_scaled_floors_every_value_at_every_weight():
    values = np.arange(256, dtype=np.uint8)
    for weight in range(257):
        total = np.zeros(256, np.uint8)
        add_scaled(total, values, weight)
        assert np.array_equal(total, values.astype(np.int64) * weight // 256), weight
    start = np.full(256, 7, np.uint8)
    add_scaled(start, values, 128)
    assert np.array_equal(start, 7 + values // 2)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.35, 0.5, 0.75, 1.0])
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
