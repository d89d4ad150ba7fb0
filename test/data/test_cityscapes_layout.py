"""The Cityscapes layout: segment ids, PNG encodings, and datasets that cityscapesscripts agrees with."""
import json

import numpy as np
import pytest
from PIL import Image

from efficientps_ros.data.cityscapes_layout import (
    DatasetWriter, PredictionWriter, decode_rgb, encode_rgb, image_id, label_ids, segment_ids, segments_info,
)
from efficientps_ros.data.datasets import PanopticDataset
from efficientps_ros.data.synthetic import Scene
from efficientps_ros.model.config import CITYSCAPES_CLASSES, ClassInfo

ROAD, SKY, PERSON, CAR = 0, 10, 11, 13  # label ids 7, 23, 24, 26
V = 255


def _scene() -> Scene:
    semantic = np.array([
        [V, V, SKY, SKY, SKY, SKY],
        [ROAD, CAR, CAR, PERSON, PERSON, ROAD],
        [ROAD, CAR, CAR, PERSON, CAR, ROAD],
        [ROAD, ROAD, ROAD, ROAD, CAR, ROAD],
    ], np.uint8)
    instance = np.array([
        [0, 0, 0, 0, 0, 0],
        [4, 1, 1, 2, 2, 0],  # an id on road pixels is no instance
        [4, 1, 1, 2, 0, 0],  # car pixels without an id
        [0, 0, 0, 0, 3, 0],
    ], np.uint16)
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return Scene(image, semantic, instance, [CAR, PERSON, CAR, ROAD], [False, True, False, False])


def test_segment_ids_follow_the_cityscapes_convention():
    scene = _scene()
    ids = segment_ids(scene.semantic, scene.instance, CITYSCAPES_CLASSES, scene.crowd)
    assert ids.tolist() == [
        [0, 0, 23, 23, 23, 23],
        [7, 26001, 26001, 24, 24, 7],
        [7, 26001, 26001, 24, 26, 7],
        [7, 7, 7, 7, 26003, 7],
    ]
    info = {s["id"]: s for s in segments_info(ids, CITYSCAPES_CLASSES)}
    assert sorted(info) == [7, 23, 24, 26, 26001, 26003]
    assert info[26001] == {"id": 26001, "category_id": 26, "area": 4, "bbox": [1, 1, 2, 2], "iscrowd": 0}
    assert info[24]["iscrowd"] == 1 and info[26]["iscrowd"] == 1 and info[7]["iscrowd"] == 0
    assert info[7]["area"] == 9 and info[7]["bbox"] == [0, 1, 6, 3]


def test_panoptic_png_colours_round_trip():
    ids = np.array([[0, 7, 26001, 33999, 255 * 65536 + 1]], np.int64)
    rgb = encode_rgb(ids)
    assert rgb[0, 2].tolist() == [26001 % 256, 26001 // 256, 0]
    assert np.array_equal(decode_rgb(rgb), ids)


def test_decoded_ids_take_four_bytes_a_pixel():
    rgb = encode_rgb(np.array([[0, 1, 2**24 - 1]]))
    ids = decode_rgb(rgb)
    # 24 bits fit uint32; an int64 copy of the three channels would cost six times the PNG's pixels.
    assert ids.dtype == np.uint32 and ids.tolist() == [[0, 1, 2**24 - 1]]


def test_label_ids_and_image_ids():
    assert label_ids(np.array([[0, 13, 255, 18]], np.uint8), CITYSCAPES_CLASSES).tolist() == [[7, 26, 0, 33]]
    assert image_id("x/frankfurt_000000_000294_leftImg8bit.png") == "frankfurt_000000_000294"
    assert image_id("000123_10.png") == "000123_10"


def test_layouts_that_cannot_be_written_are_refused(tmp_path):
    zero = (ClassInfo(0, 0, "thing", (1, 2, 3), False),)
    with pytest.raises(ValueError, match="label id 0 does not fit"):
        PredictionWriter(tmp_path, zero)
    with pytest.raises(ValueError, match="instance id 1000 does not fit"):
        segment_ids(np.full((1, 1), CAR, np.uint8), np.full((1, 1), 1000, np.uint16), CITYSCAPES_CLASSES)


def test_a_written_dataset_loads_back_as_the_same_scene(tmp_path):
    scene = _scene()
    with DatasetWriter(tmp_path, "val", CITYSCAPES_CLASSES) as writer:
        writer.write("synthetic_000001_000002", scene.image, scene.semantic, scene.instance, scene.crowd)
    loaded = PanopticDataset(tmp_path, "val")[0]
    assert np.array_equal(loaded.image, scene.image) and np.array_equal(loaded.semantic, scene.semantic)
    # The car pixels without an id come back as a car crowd; ids are renumbered in segment order.
    things = (scene.semantic >= PERSON) & (scene.semantic != V)
    pairs = {(int(a), int(b)) for a, b in zip(scene.instance[things], loaded.instance[things])}
    flags = dict(zip(range(1, len(loaded.crowd) + 1), loaded.crowd))
    assert len({b for _, b in pairs}) == 4 and len(pairs) == 4
    assert [flags[b] for a, b in sorted(pairs)] == [True, False, True, False]  # ids 0, 1, 2 (crowd), 3
    labels = np.asarray(Image.open(tmp_path / "gtFine/val/synthetic/synthetic_000001_000002_gtFine_labelIds.png"))
    assert np.array_equal(labels, label_ids(scene.semantic, CITYSCAPES_CLASSES))


def test_cityscapesscripts_makes_the_same_panoptic_files_from_our_instance_ids(tmp_path):
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    scene = _scene()
    with DatasetWriter(tmp_path, "val", CITYSCAPES_CLASSES) as writer:
        writer.write("synthetic_000001_000002", scene.image, scene.semantic, scene.instance, scene.crowd)
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    convert2panoptic(str(tmp_path / "gtFine"), str(theirs_dir), setNames=["val"])
    ours = json.loads((tmp_path / "gtFine/cityscapes_panoptic_val.json").read_text())
    theirs = json.loads((theirs_dir / "cityscapes_panoptic_val.json").read_text())
    assert ours["annotations"] == theirs["annotations"]
    # Theirs names the image `..._gtFine_leftImg8bit.png`, a file Cityscapes does not have; ours names the real one.
    assert [{**i, "file_name": i["file_name"].replace("_gtFine", "")} for i in theirs["images"]] == ours["images"]
    name = "synthetic_000001_000002_gtFine_panoptic.png"
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "gtFine/cityscapes_panoptic_val" / name)),
        np.asarray(Image.open(theirs_dir / "cityscapes_panoptic_val" / name)),
    )
    assert [c["id"] for c in ours["categories"]] == [c["id"] for c in theirs["categories"]]
    assert [(c["name"], c["isthing"]) for c in ours["categories"]] == [
        (c["name"], c["isthing"]) for c in theirs["categories"]
    ]


def test_predictions_are_written_for_both_evaluations(tmp_path):
    scene = _scene()
    with PredictionWriter(tmp_path, CITYSCAPES_CLASSES) as writer:
        writer.write("frankfurt_000000_000294", scene.semantic, scene.instance)
    data = json.loads((tmp_path / "panoptic.json").read_text())
    assert data["annotations"][0]["image_id"] == "frankfurt_000000_000294"
    png = np.asarray(Image.open(tmp_path / "panoptic" / data["annotations"][0]["file_name"]))
    # A prediction has no crowds: every instance id is its own segment.
    assert np.array_equal(decode_rgb(png), segment_ids(scene.semantic, scene.instance, CITYSCAPES_CLASSES))
    labels = np.asarray(Image.open(tmp_path / "labelIds" / "frankfurt_000000_000294_labelIds.png"))
    assert labels.dtype == np.uint8 and labels[1, 1] == 26
