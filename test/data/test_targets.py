"""Targets for the losses from label maps, flips and batches."""
import numpy as np
import pytest
import torch

from efficientps_ros.data.synthetic import Scene, street_scene
from efficientps_ros.data.targets import collate, hflip, instance_boxes, make_target, normalize, scene_target
from efficientps_ros.model import load_config

CONFIG = load_config("small")
ROAD, PERSON, CAR = 0, 11, 13


def _hand_made() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """10x12 maps: a car block, a one-pixel person, a road 'instance' and an id without pixels."""
    semantic = np.full((10, 12), ROAD, np.uint8)
    semantic[0, :] = 255
    instance = np.zeros((10, 12), np.uint16)
    semantic[2:5, 3:7] = CAR
    instance[2:5, 3:7] = 1
    semantic[8, 10] = PERSON
    instance[8, 10] = 2
    instance[6, 0:2] = 3  # an instance id on a stuff class
    return semantic, instance, [CAR, PERSON, ROAD, CAR]


def test_boxes_labels_and_masks_of_a_hand_made_scene():
    semantic, instance, classes = _hand_made()
    target = make_target(semantic, instance, classes, CONFIG, padded=(16, 32))
    # Inclusive corners; the stuff instance and the empty id 4 are left out.
    assert target["boxes"].tolist() == [[3, 2, 6, 4], [10, 8, 10, 8]]
    assert target["labels"].tolist() == [CAR - CONFIG.num_stuff, PERSON - CONFIG.num_stuff]
    assert target["masks"].shape == (2, 16, 32) and target["masks"].dtype == torch.uint8
    assert np.array_equal(target["masks"][0, :10, :12].numpy(), instance == 1)
    assert np.array_equal(target["masks"][1, :10, :12].numpy(), instance == 2)
    assert target["masks"][:, 10:].sum() == 0 and target["masks"][:, :, 12:].sum() == 0
    assert target["semantic"].dtype == torch.long
    assert np.array_equal(target["semantic"][:10, :12].numpy(), semantic)
    assert (target["semantic"][10:] == 255).all() and (target["semantic"][:, 12:] == 255).all()


def test_scene_without_instances_gives_empty_targets():
    semantic = np.zeros((8, 8), np.uint8)
    target = make_target(semantic, np.zeros((8, 8), np.uint16), [], CONFIG)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 8, 8)


def test_padding_smaller_than_the_maps_is_refused():
    semantic, instance, classes = _hand_made()
    with pytest.raises(ValueError, match="smaller"):
        make_target(semantic, instance, classes, CONFIG, padded=(8, 32))


def test_boxes_enclose_exactly_the_instance_pixels_of_a_street_scene():
    scene = street_scene(96, 160, seed=5)
    target = scene_target(scene, CONFIG)
    assert len(target["boxes"]) == len(scene.instance_classes) > 0
    for box, mask in zip(target["boxes"].long().tolist(), target["masks"].bool()):
        x1, y1, x2, y2 = box
        inside = torch.zeros_like(mask)
        inside[y1 : y2 + 1, x1 : x2 + 1] = True
        assert not (mask & ~inside).any()
        # Every edge of the box touches the mask.
        assert mask[y1].any() and mask[y2].any() and mask[:, x1].any() and mask[:, x2].any()


def test_instance_boxes_marks_ids_without_pixels_empty():
    instance = np.zeros((4, 4), np.uint16)
    instance[1, 2] = 2
    assert instance_boxes(instance, 2).tolist() == [[0, 0, -1, -1], [2, 1, 2, 1]]


def test_flip_mirrors_image_maps_and_boxes_consistently():
    scene = street_scene(64, 100, seed=3)
    padded = (64, 128)
    image = normalize(scene.image, CONFIG, padded)
    target = scene_target(scene, CONFIG, padded)
    flipped_image, flipped = hflip(image, target, width=100)
    masks = flipped["masks"][:, :64, :100].numpy()
    # The boxes of the mirrored masks are the mirrored boxes.
    recomputed = [instance_boxes(m.astype(np.uint16), 1)[0].tolist() for m in masks]
    assert flipped["boxes"].tolist() == recomputed
    assert torch.equal(flipped_image[:, :, :100], image[:, :, :100].flip(-1))
    assert torch.equal(flipped["semantic"][:, :100], target["semantic"][:, :100].flip(-1))
    # The padding stays on the right, untouched.
    assert (flipped_image[:, :, 100:] == 0).all() and (flipped["semantic"][:, 100:] == 255).all()
    assert flipped["masks"][:, :, 100:].sum() == 0
    assert torch.equal(flipped["labels"], target["labels"])
    _, twice = hflip(flipped_image, flipped, width=100)
    assert all(torch.equal(twice[k], target[k]) for k in target)


def test_normalize_uses_the_config_statistics_and_pads_with_zero():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (100, 120, 140)
    out = normalize(image, CONFIG, padded=(32, 32))
    expected = (torch.tensor([100.0, 120.0, 140.0]) - torch.tensor(CONFIG.pixel_mean)) / torch.tensor(CONFIG.pixel_std)
    assert torch.allclose(out[:, 0, 0], expected)
    assert out.shape == (3, 32, 32) and (out[:, 2:] == 0).all() and (out[:, :, 3:] == 0).all()


def test_collate_pads_scenes_of_different_sizes_to_one_batch():
    scenes = [street_scene(70, 100, seed=1), street_scene(64, 130, seed=2)]
    batch = collate(scenes, CONFIG)
    assert batch.images.shape == (2, 3, 96, 160)
    assert batch.image_sizes == [(70, 100), (64, 130)]
    assert [t["semantic"].shape for t in batch.targets] == [(96, 160), (96, 160)]
    assert np.array_equal(batch.targets[1]["semantic"][:64, :130].numpy(), scenes[1].semantic)


def test_collate_flips_with_the_given_probability():
    scene = street_scene(64, 96, seed=4)
    always = collate([scene], CONFIG, flip_probability=1.0).targets[0]
    never = collate([scene], CONFIG, flip_probability=0.0).targets[0]
    assert torch.equal(always["semantic"], never["semantic"].flip(-1))
    assert not torch.equal(always["boxes"], never["boxes"])


def test_empty_collate_is_refused():
    with pytest.raises(ValueError):
        collate([], CONFIG)


def _scene_from(semantic, instance, classes) -> Scene:
    return Scene(np.zeros((*semantic.shape, 3), np.uint8), semantic, instance, classes)


def test_scene_target_matches_make_target():
    semantic, instance, classes = _hand_made()
    a = scene_target(_scene_from(semantic, instance, classes), CONFIG)
    b = make_target(semantic, instance, classes, CONFIG)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crowd_instances_give_no_instance_targets_but_keep_their_class():
    semantic, instance, classes = _hand_made()
    target = make_target(semantic, instance, classes, CONFIG, crowd=[True, False])
    assert target["boxes"].tolist() == [[10, 8, 10, 8]]
    assert target["labels"].tolist() == [PERSON - CONFIG.num_stuff]
    assert np.array_equal(target["masks"][0].numpy(), instance == 2)
    assert (target["semantic"][2:5, 3:7] == CAR).all()
    crowded = scene_target(_scene_from(semantic, instance, classes), CONFIG)
    assert len(crowded["boxes"]) == 2  # no flags: no crowds
