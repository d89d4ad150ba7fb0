"""Synthetic streets: seeded, labelled exactly, with all classes, perspective, void, crowds and drives."""
import numpy as np
import pytest

from efficientps_ros.data.synthetic import Scene, scene_seed, street_drive, street_scene
from efficientps_ros.data.synthetic import textures
from efficientps_ros.data.synthetic.camera import Camera
from efficientps_ros.data.synthetic.raster import Canvas, Label
from efficientps_ros.data.synthetic.renderer import draw_thing
from efficientps_ros.data.synthetic.world import TRAIN_IDS, Part, Thing, make_street
from efficientps_ros.model.config import CITYSCAPES_CLASSES, VOID_TRAIN_ID

THING_IDS = {c.train_id for c in CITYSCAPES_CLASSES if c.is_thing}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [street_scene(256, 512, seed=scene_seed("val", 7, k)) for k in range(40)]


def test_a_seed_gives_the_same_scene_and_another_seed_a_different_one():
    a, b, c = street_scene(96, 160, seed=11), street_scene(96, 160, seed=11), street_scene(96, 160, seed=12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
    assert np.array_equal(a.instance, b.instance) and a.instance_classes == b.instance_classes and a.crowd == b.crowd
    assert np.mean(a.image != c.image) > 0.5


def test_scene_seeds_of_training_never_meet_those_of_evaluation():
    train = {scene_seed("train", seed, k) for seed in range(4) for k in range(500)}
    held_out = {scene_seed(split, seed, k) for split in ("val", "test") for seed in range(4) for k in range(500)}
    assert len(train) == 2000 and len(held_out) == 4000
    assert not train & held_out
    assert all(s >= 1 << 63 for s in train) and all(s < 1 << 63 for s in held_out)
    assert scene_seed("val", 3, 9) == scene_seed("val", 3, 9) != scene_seed("test", 3, 9)


def test_scene_seeds_refuse_negative_numbers():
    with pytest.raises(ValueError, match="non-negative"):
        scene_seed("val", -1, 0)


def test_maps_have_the_image_size_and_types_at_any_size():
    for height, width in ((150, 300), (64, 96), (90, 300)):
        scene = street_scene(height, width, seed=3)
        assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
        assert scene.semantic.shape == scene.instance.shape == (height, width)
        assert scene.semantic.dtype == np.uint8 and scene.instance.dtype == np.uint16


def test_every_class_occurs_over_a_set_of_scenes(scenes):
    present = set()
    for scene in scenes:
        present |= set(np.unique(scene.semantic).tolist())
    assert set(range(19)) <= present, f"missing {sorted(set(range(19)) - present)}"


def test_labels_agree_with_the_pixels(scenes):
    for scene in scenes:
        count = len(scene.instance_classes)
        assert len(scene.crowd) == count
        ids = scene.instance.astype(int)
        assert set(np.unique(ids).tolist()) == set(range(count + 1)), "every instance has pixels, ids are 1..N"
        for k, train_id in enumerate(scene.instance_classes, start=1):
            assert train_id in THING_IDS
            assert np.all(scene.semantic[ids == k] == train_id)
        stuff = ids == 0
        assert not np.isin(scene.semantic[stuff], list(THING_IDS)).any(), "thing pixels always carry an instance"


def test_some_scenes_hold_void_and_crowds_of_people(scenes):
    void = [np.mean(s.semantic == VOID_TRAIN_ID) for s in scenes]
    assert sum(v > 0.03 for v in void) >= 5, "the ego bonnet or the border is void in some scenes"
    crowds = [(s, k) for s in scenes for k, flag in enumerate(s.crowd, start=1) if flag]
    assert len(crowds) >= 3
    for scene, k in crowds:
        assert scene.instance_classes[k - 1] == TRAIN_IDS["person"]
    assert all(not flag for s in scenes for k, flag in enumerate(s.crowd) if s.instance_classes[k] != TRAIN_IDS["person"])


def test_the_class_cannot_be_read_from_the_colour(scenes):
    """A nearest-mean colour classifier does badly: shape and context are needed."""
    names = ["road", "sidewalk", "building", "vegetation", "car", "person"]
    rng = np.random.default_rng(0)

    def pixels(part):
        colours, labels = [], []
        for scene in part:
            for label, name in enumerate(names):
                found = scene.image[scene.semantic == TRAIN_IDS[name]]
                if len(found):
                    pick = rng.choice(len(found), min(len(found), 300), replace=False)
                    colours.append(found[pick].astype(float))
                    labels.append(np.full(len(pick), label))
        return np.concatenate(colours), np.concatenate(labels)

    fit_x, fit_y = pixels(scenes[:20])
    test_x, test_y = pixels(scenes[20:])
    means = np.stack([fit_x[fit_y == k].mean(0) for k in range(len(names))])
    guess = np.argmin(((test_x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    recall = [np.mean(guess[test_y == k] == k) for k in range(len(names))]
    assert np.mean(recall) < 0.5, dict(zip(names, np.round(recall, 2)))


def _box_rows(distance: float) -> int:
    camera = Camera(256, 512, focal=400.0, cy=110.0, position=np.array([0.0, 1.5, 0.0]))
    canvas = Canvas(camera)
    grey = textures.plain([128, 128, 128], np.random.default_rng(0))
    street = make_street(0)
    box = Thing("car", 0.0, distance, 0.0, [Part((0, 0, 0), (1.8, 1.5, 0.1), grey)], countable=True)
    draw_thing(canvas, street, box, Label(TRAIN_IDS["car"], 1))
    rows = np.nonzero((canvas.instance == 1).any(axis=1))[0]
    return len(rows)


def test_size_on_the_image_falls_with_distance_as_through_a_pinhole():
    near, far = _box_rows(10.0), _box_rows(20.0)
    assert near == pytest.approx(400 * 1.5 / 10, abs=2) and far == pytest.approx(400 * 1.5 / 20, abs=2)


def test_things_lower_in_the_image_are_larger(scenes):
    """Nearer things stand lower on the ground plane and look larger."""
    bottoms, heights = [], []
    for scene in scenes:
        for k, train_id in enumerate(scene.instance_classes, start=1):
            if train_id == TRAIN_IDS["car"] and not scene.crowd[k - 1]:
                rows = np.nonzero((scene.instance == k).any(axis=1))[0]
                bottoms.append(rows.max())
                heights.append(len(rows))
    assert len(bottoms) > 50
    assert np.corrcoef(bottoms, heights)[0, 1] > 0.5


def test_a_drive_moves_smoothly_and_goes_somewhere():
    frames = list(street_drive(5, 96, 192, frames=31))
    assert len(frames) == 31
    step = [np.mean(a.semantic == b.semantic) for a, b in zip(frames, frames[1:])]
    assert min(step) > 0.75, "consecutive frames mostly agree"
    assert np.mean(frames[0].semantic == frames[30].semantic) < np.mean(step) - 0.1, "after 3 s the view has changed"
    assert not np.array_equal(frames[0].image, frames[1].image)
    assert frames[0].semantic.tolist() == next(street_drive(5, 96, 192)).semantic.tolist()


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 8x8"):
        street_scene(4, 100, seed=0)
