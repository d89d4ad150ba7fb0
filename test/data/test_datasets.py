"""The COCO-panoptic loader on datasets written by hand, file by file."""
import json
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientps_ros.data.datasets import PanopticDataset, load_class_table
from efficientps_ros.data.targets import scene_target
from efficientps_ros.model import load_config

CONFIG = load_config("small")
ROAD, SIDEWALK, PERSON, CAR = 0, 1, 11, 13  # train ids
# Cityscapes label ids: road 7, sidewalk 8, parking 9 (not evaluated), person 24, car 26.
H, W = 6, 8


def _label_map() -> tuple[np.ndarray, list[dict]]:
    """Segment ids of a 6x8 image and their segments_info, as createPanopticImgs writes them."""
    ids = np.full((H, W), 7, np.int64)  # road
    ids[0, :] = 0  # void (e.g. ego vehicle)
    ids[1, 4:6] = 8  # sidewalk
    ids[5, 6:] = 9  # parking: a category the class table does not know
    ids[2:4, 1:3] = 26001  # car 1
    ids[2:5, 4] = 26002  # car 2
    ids[1:3, 6:8] = 24  # a crowd of people
    segments = [
        {"id": 7, "category_id": 7, "iscrowd": 0},
        {"id": 8, "category_id": 8, "iscrowd": 0},
        {"id": 9, "category_id": 9, "iscrowd": 0},
        {"id": 24, "category_id": 24, "iscrowd": 1},
        {"id": 26001, "category_id": 26, "iscrowd": 0},
        {"id": 26002, "category_id": 26, "iscrowd": 0},
    ]
    return ids, segments


def _write_by_hand(root, split="val", image_dir=None, image_id="aachen_000000_000019", file_name=None):
    ids, segments = _label_map()
    gt = root / "gtFine"
    (gt / f"cityscapes_panoptic_{split}").mkdir(parents=True)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(gt / f"cityscapes_panoptic_{split}" / f"{image_id}_gtFine_panoptic.png")
    file_name = file_name or f"{image_id}_leftImg8bit.png"
    # createPanopticImgs names the image `{id}_gtFine_leftImg8bit.png`, which no Cityscapes file is called.
    listed = file_name.replace("_leftImg8bit", "_gtFine_leftImg8bit")
    data = {
        "images": [{"id": image_id, "file_name": listed, "height": H, "width": W}],
        "annotations": [
            {"image_id": image_id, "file_name": f"{image_id}_gtFine_panoptic.png", "segments_info": segments}
        ],
        "categories": [
            {"id": 7, "name": "road", "isthing": 0}, {"id": 8, "name": "sidewalk", "isthing": 0},
            {"id": 9, "name": "parking", "isthing": 0}, {"id": 24, "name": "person", "isthing": 1},
            {"id": 26, "name": "car", "isthing": 1},
        ],
    }
    (gt / f"cityscapes_panoptic_{split}.json").write_text(json.dumps(data))
    image_dir = image_dir or root / "leftImg8bit" / split / image_id.split("_")[0]
    image_dir.mkdir(parents=True)
    image = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    Image.fromarray(image).save(image_dir / file_name)
    return image


def test_a_hand_written_cityscapes_split_loads_pixel_by_pixel(tmp_path):
    image = _write_by_hand(tmp_path)
    dataset = PanopticDataset(tmp_path, "val")
    assert len(dataset) == 1 and dataset.image_ids == ["aachen_000000_000019"]
    scene = dataset[0]
    assert np.array_equal(scene.image, image)
    V = 255
    assert scene.semantic.tolist() == [
        [V, V, V, V, V, V, V, V],
        [0, 0, 0, 0, SIDEWALK, SIDEWALK, PERSON, PERSON],
        [0, CAR, CAR, 0, CAR, 0, PERSON, PERSON],
        [0, CAR, CAR, 0, CAR, 0, 0, 0],
        [0, 0, 0, 0, CAR, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, V, V],
    ]
    # Segments in JSON order: the crowd first, then the two cars.
    assert scene.instance_classes == [PERSON, CAR, CAR]
    assert scene.crowd == [True, False, False]
    expected = np.zeros((H, W), np.uint16)
    expected[1:3, 6:8] = 1
    expected[2:4, 1:3] = 2
    expected[2:5, 4] = 3
    assert np.array_equal(scene.instance, expected)
    assert scene.semantic.dtype == np.uint8 and scene.instance.dtype == np.uint16


def test_targets_of_a_loaded_scene_skip_the_crowd_but_keep_its_pixels(tmp_path):
    _write_by_hand(tmp_path)
    scene = PanopticDataset(tmp_path, "val")[0]
    target = scene_target(scene, CONFIG)
    assert target["boxes"].tolist() == [[1, 2, 2, 3], [4, 2, 4, 4]]
    assert target["labels"].tolist() == [CAR - CONFIG.num_stuff] * 2
    assert np.array_equal(target["masks"][0].numpy(), scene.instance == 2)
    assert np.array_equal(target["masks"][1].numpy(), scene.instance == 3)
    # The crowd's pixels still carry their class for the semantic loss; void stays void.
    assert torch.equal(target["semantic"], torch.from_numpy(scene.semantic.astype(np.int64)))
    assert (target["semantic"][1:3, 6:8] == PERSON).all() and (target["semantic"][0] == 255).all()


def test_a_stuff_class_in_several_segments_keeps_them_apart_and_out_of_the_targets(tmp_path):
    _write_by_hand(tmp_path)
    gt = tmp_path / "gtFine"
    png = gt / "cityscapes_panoptic_val" / "aachen_000000_000019_gtFine_panoptic.png"
    ids, _ = _label_map()
    ids[4:, :4] = 7001  # a second road segment, as COCO-panoptic allows
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)).save(png)
    path = gt / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"].append({"id": 7001, "category_id": 7, "iscrowd": 0})
    path.write_text(json.dumps(data))
    scene = PanopticDataset(tmp_path, "val")[0]
    assert scene.instance_classes == [ROAD, PERSON, CAR, CAR, ROAD]
    assert (scene.instance[ids == 7] == 1).all() and (scene.instance[ids == 7001] == 5).all()
    # A stuff class in one segment stays without an instance.
    assert (scene.instance[ids == 8] == 0).all() and (scene.semantic[ids == 7001] == ROAD).all()
    target = scene_target(scene, CONFIG)
    assert target["labels"].tolist() == [CAR - CONFIG.num_stuff] * 2


def test_a_stuff_segment_flagged_crowd_is_a_crowd_instance_out_of_the_targets(tmp_path):
    _write_by_hand(tmp_path)
    path = tmp_path / "gtFine" / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"][0]["iscrowd"] = 1  # the one road segment
    path.write_text(json.dumps(data))
    scene = PanopticDataset(tmp_path, "val")[0]
    ids, _ = _label_map()
    assert scene.instance_classes == [ROAD, PERSON, CAR, CAR]
    assert scene.crowd == [True, True, False, False]
    assert (scene.instance[ids == 7] == 1).all() and (scene.semantic[ids == 7] == ROAD).all()
    assert scene_target(scene, CONFIG)["labels"].tolist() == [CAR - CONFIG.num_stuff] * 2


def test_a_kitti_style_split_with_flat_image_folder_and_plain_ids(tmp_path):
    image = _write_by_hand(tmp_path, "train", image_dir=tmp_path / "leftImg8bit" / "train",
                           image_id="000123_10", file_name="000123_10.png")
    scene = PanopticDataset(tmp_path, "train")[0]
    assert np.array_equal(scene.image, image) and scene.crowd == [True, False, False]


def test_a_dataset_with_its_own_class_table(tmp_path):
    _write_by_hand(tmp_path)
    table = tmp_path / "classes.yaml"
    # Listed things first: without train ids, stuff still comes first, in file order.
    table.write_text(
        "categories:\n"
        "  - {name: car, id: 26, isthing: 1, color: [0, 0, 142]}\n"
        "  - {name: road, id: 7, isthing: 0, color: [128, 64, 128]}\n"
        "  - {name: parking, id: 9, isthing: 0, color: [250, 170, 160]}\n"
    )
    classes = load_class_table(table)
    assert [(c.name, c.train_id, c.label_id, c.is_thing) for c in classes] == [
        ("road", 0, 7, False), ("parking", 1, 9, False), ("car", 2, 26, True)
    ]
    scene = PanopticDataset(tmp_path, "val", classes=classes)[0]
    # Parking is a class now; sidewalk and the person crowd are not, so they are void.
    assert scene.semantic[5, 6] == 1 and scene.semantic[1, 7] == 255 and scene.semantic[2, 6] == 255
    assert scene.instance_classes == [2, 2] and scene.crowd == [False, False]


def test_class_tables_with_explicit_train_ids_and_void(tmp_path):
    table = tmp_path / "classes.yaml"
    table.write_text(
        "- {name: road, id: 7, isthing: 0, color: [1, 2, 3], train_id: 0}\n"
        "- {name: car, id: 26, isthing: 1, color: [1, 2, 3], train_id: 1}\n"
        "- {name: trailer, id: 30, isthing: 1, color: [1, 2, 3], train_id: 255}\n"
    )
    assert [c.name for c in load_class_table(table)] == ["road", "car"]


@pytest.mark.parametrize("text, message", [
    ("- {name: road, id: 7, isthing: 0, color: [1, 2, 3], train_id: 1}\n", "train ids must be 0..0"),
    ("- {name: car, id: 26, isthing: 1, color: [1, 2, 3], train_id: 0}\n"
     "- {name: road, id: 7, isthing: 0, color: [1, 2, 3], train_id: 1}\n", "stuff classes must have lower"),
    ("- {name: road, id: 7, isthing: 0, color: [1, 2]}\n", "color must be three values"),
    ("- {name: road, isthing: 0, color: [1, 2, 3]}\n", "bad category"),
    ("- {name: road, id: 7, isthing: 0, color: [1, 2, 3]}\n- {name: car, id: 7, isthing: 1, color: [1, 2, 3]}\n",
     "label ids must be unique"),
    ("- {name: road, id: 7, isthing: 0, color: [1, 2, 3]}\n- {name: sky, id: 23, isthing: 0, color: [1, 2, 3]}\n",
     "at least one stuff and one thing class"),
    ("- {name: road, id: 7, isthing: 0, color: [1, 2, 3]}\n- {name: car, id: 26, isthing: '0', color: [1, 2, 3]}\n",
     "isthing must be 0, 1, true or false"),
    ("name: road\n", "expected a list of categories"),
])
def test_bad_class_tables_are_refused_by_what_is_wrong(tmp_path, text, message):
    table = tmp_path / "classes.yaml"
    table.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_class_table(table)


def test_missing_files_renamed_categories_unknown_images_and_bad_json_are_named(tmp_path):
    with pytest.raises(ValueError, match="cityscapes_panoptic_val.json does not exist"):
        PanopticDataset(tmp_path, "val")
    _write_by_hand(tmp_path)
    path = tmp_path / "gtFine" / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    data["categories"][4]["name"] = "bus"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category 26 is 'bus'"):
        PanopticDataset(tmp_path, "val")
    data["categories"][4]["name"] = "car"
    data["images"][0]["file_name"] = "elsewhere.png"
    data["annotations"][0]["image_id"] = "nowhere_000000_000000"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 'nowhere_000000_000000'"):
        PanopticDataset(tmp_path, "val")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not readable as JSON"):
        PanopticDataset(tmp_path, "val")


def _drop(key):
    return lambda entry: entry.pop(key)


def _load_spoiled(tmp_path, spoil, message) -> tuple[Path, str]:
    """Write the hand-made dataset, `spoil` its JSON, and return the JSON's path and the loader's refusal."""
    _write_by_hand(tmp_path)
    path = tmp_path / "gtFine" / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    spoil(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        PanopticDataset(tmp_path, "val")
    return path, str(error.value)


@pytest.mark.parametrize("spoil, message", [
    (lambda d: _drop("id")(d["annotations"][0]["segments_info"][2]), "segment 2 needs an integer 'id'"),
    (lambda d: _drop("category_id")(d["annotations"][0]["segments_info"][0]), "segment 0 needs"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id="7"), "segment 0 needs an integer 'id'"),
    (lambda d: _drop("file_name")(d["annotations"][0]), "the annotation has no 'file_name'"),
    (lambda d: _drop("segments_info")(d["annotations"][0]), "the annotation has no 'segments_info'"),
    (lambda d: d["annotations"][0].update(segments_info={}), "'segments_info' a list"),
    (lambda d: d["annotations"][0]["segments_info"][3].update(category_id=25),
     "segment 24 has category_id 25, which 'categories' does not list"),
    # Read as truth values, these would make crowds.
    (lambda d: d["annotations"][0]["segments_info"][4].update(iscrowd="0"),
     "segment 26001 has iscrowd '0'; allowed: 0 or 1"),
    (lambda d: d["annotations"][0]["segments_info"][4].update(iscrowd=[0]), "segment 26001 has iscrowd \\[0\\]"),
    (lambda d: d["annotations"][0]["segments_info"][4].update(iscrowd=2), "segment 26001 has iscrowd 2"),
])
def test_a_malformed_annotation_is_named_by_file_image_and_field(tmp_path, spoil, message):
    path, error = _load_spoiled(tmp_path, spoil, message)
    assert str(path) in error and "image 'aachen_000000_000019'" in error


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d.update(categories={"7": "road"}), "'categories' must be a list"),
    (lambda d: d.pop("categories"), "'categories' must be a list"),
    (lambda d: _drop("id")(d["categories"][0]), "each with an integer 'id'"),
    (lambda d: _drop("id")(d["images"][0]), "'images' must be a list of images, each with an 'id'"),
    (lambda d: _drop("image_id")(d["annotations"][0]), "image 'of annotation 0'.*no 'image_id'"),
    (lambda d: d["annotations"].append(["not", "a", "mapping"]), "annotation 1 is not a mapping"),
])
def test_malformed_tables_are_named_by_file_and_field(tmp_path, spoil, message):
    path, error = _load_spoiled(tmp_path, spoil, message)
    assert str(path) in error


def test_indexing_past_the_end_raises_index_error(tmp_path):
    _write_by_hand(tmp_path)
    dataset = PanopticDataset(tmp_path, "val")
    assert len(list(dataset)) == 1
    with pytest.raises(IndexError):
        dataset[1]


def test_an_unreadable_image_is_named(tmp_path):
    _write_by_hand(tmp_path)
    (tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="aachen_000000_000019_leftImg8bit.png: not readable as an image"):
        PanopticDataset(tmp_path, "val")[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` RGB pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


_PNG = "gtFine/cityscapes_panoptic_val/aachen_000000_000019_gtFine_panoptic.png"
_IMAGE = "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
_JSON = "gtFine/cityscapes_panoptic_val.json"


def _rewrite_json(root, change) -> None:
    path = root / _JSON
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _save_ids(path, ids: np.ndarray) -> None:
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)).save(path)


@pytest.mark.parametrize("spoil, mode", [
    (lambda rgb: Image.fromarray(rgb[..., 0]), "mode L"),
    (lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 300), "mode I;16"),
    (lambda rgb: Image.fromarray(rgb).quantize(4), "mode P"),
])
def test_a_panoptic_png_that_is_not_rgb_is_refused_not_read_as_void(tmp_path, spoil, mode):
    _write_by_hand(tmp_path)
    png = tmp_path / _PNG
    spoil(np.asarray(Image.open(png))).save(png)
    with pytest.raises(ValueError, match=mode) as error:
        PanopticDataset(tmp_path, "val")[0]
    assert str(png) in str(error.value)


def test_a_panoptic_jpeg_is_refused(tmp_path):
    _write_by_hand(tmp_path)
    png = tmp_path / _PNG
    Image.open(png).convert("RGB").save(png, format="JPEG")
    with pytest.raises(ValueError, match="a JPEG image"):
        PanopticDataset(tmp_path, "val")[0]


def test_a_listed_segment_without_pixels_is_refused(tmp_path):
    _write_by_hand(tmp_path)
    _rewrite_json(tmp_path, lambda d: d["annotations"][0]["segments_info"][4].update(id=26003))
    with pytest.raises(ValueError, match="segments_info lists segment 26003, which .* has no pixel of") as error:
        PanopticDataset(tmp_path, "val")[0]
    assert str(tmp_path / _JSON) in str(error.value) and "aachen_000000_000019" in str(error.value)


def test_png_ids_missing_from_segments_info_become_void_and_are_counted(tmp_path):
    _write_by_hand(tmp_path)
    # Car 2 (3 pixels) and the crowd (4 pixels) are in the PNG but not in the JSON.
    _rewrite_json(tmp_path, lambda d: d["annotations"][0].update(
        segments_info=[s for s in d["annotations"][0]["segments_info"] if s["id"] not in (24, 26002)]))
    dataset = PanopticDataset(tmp_path, "val")
    scene = dataset[0]
    ids, _ = _label_map()
    assert (scene.semantic[(ids == 24) | (ids == 26002)] == 255).all()
    assert scene.instance_classes == [CAR] and (scene.instance[ids == 26001] == 1).all()
    assert dataset.unlisted == {"aachen_000000_000019": (2, 7)}


def test_an_image_with_every_segment_listed_is_not_counted(tmp_path):
    _write_by_hand(tmp_path)
    dataset = PanopticDataset(tmp_path, "val")
    dataset[0]
    assert dataset.unlisted == {}


def test_a_png_of_as_many_segments_as_pixels_loads_in_the_memory_of_a_few_copies(tmp_path):
    _write_by_hand(tmp_path)
    side = 512
    ids = np.arange(side * side).reshape(side, side) + 30000
    ids[: side // 2] = 7
    _save_ids(tmp_path / _PNG, ids)
    Image.new("RGB", (side, side)).save(tmp_path / _IMAGE)
    _rewrite_json(tmp_path, lambda d: d["annotations"][0].update(segments_info=[{"id": 7, "category_id": 7}]))
    dataset = PanopticDataset(tmp_path, "val")
    tracemalloc.start()
    try:
        scene = dataset[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The image, the decoded PNG and the maps made from it are 12 bytes a pixel; a lookup
    # table over every distinct id, or 8-byte copies of the whole PNG, would be several times that.
    assert peak < 40 * side * side, peak / side / side
    assert (scene.semantic[: side // 2] == ROAD).all() and (scene.semantic[side // 2:] == 255).all()
    assert dataset.unlisted == {"aachen_000000_000019": (side * side // 2, side * side // 2)}


def test_a_split_that_lists_no_images_is_refused(tmp_path):
    _write_by_hand(tmp_path)
    _rewrite_json(tmp_path, lambda d: d.update(images=[], annotations=[]))
    with pytest.raises(ValueError, match=f"split 'val' of {tmp_path} lists no images"):
        PanopticDataset(tmp_path, "val")


def test_an_image_name_in_two_folders_is_refused_unless_the_json_names_the_folder(tmp_path):
    image = _write_by_hand(tmp_path)
    other = tmp_path / "leftImg8bit/val/bremen/aachen_000000_000019_leftImg8bit.png"
    other.parent.mkdir()
    Image.new("RGB", (W, H)).save(other)
    with pytest.raises(ValueError, match="ambiguous") as error:
        PanopticDataset(tmp_path, "val")
    assert str(other) in str(error.value) and str(tmp_path / _IMAGE) in str(error.value)
    _rewrite_json(tmp_path, lambda d: d["images"][0].update(file_name="aachen/aachen_000000_000019_leftImg8bit.png"))
    assert np.array_equal(PanopticDataset(tmp_path, "val")[0].image, image)


@pytest.mark.parametrize("size, message", [
    ((100_000, 100_000), "its header declares more than the 33554432 pixels read"),  # Pillow's own limit, too
    ((12_000, 8_000), "its header declares more than the 33554432 pixels read"),  # Pillow warns
    ((9_000, 4_000), "image of 9000x4000 exceeds max_image_pixels"),
])
@pytest.mark.parametrize("which", [_IMAGE, _PNG])
def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, size, message, which):
    _write_by_hand(tmp_path)
    (tmp_path / which).write_bytes(_png_header(*size))
    dataset = PanopticDataset(tmp_path, "val")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message) as error:
            dataset[0]
    assert str(error.value).startswith(f"{tmp_path / which}: ")


def test_a_truncated_panoptic_png_is_named(tmp_path):
    _write_by_hand(tmp_path)
    png = tmp_path / _PNG
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(ValueError, match="not readable as an image") as error:
        PanopticDataset(tmp_path, "val")[0]
    assert str(png) in str(error.value)


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d["images"][0].update(file_name=5), "image 'aachen_000000_000019': 'file_name' must be a string, got 5"),
    (lambda d: d["images"][0].update(id=[1]), r"image 0: 'id' must be a string or an integer, got \[1\]"),
    (lambda d: d["images"][0].update(id=True), "image 0: 'id' must be a string or an integer, got True"),
    (lambda d: d["annotations"][0].update(image_id=[1]), r"'image_id' must be a string or an integer, got \[1\]"),
    (lambda d: d["images"].append(d["images"][0]), "'images' lists image 'aachen_000000_000019' more than once"),
    (lambda d: d["annotations"].append(d["annotations"][0]),
     "'annotations' annotate image 'aachen_000000_000019' more than once"),
    (lambda d: d["annotations"][0]["segments_info"].append({"id": 7, "category_id": 26, "iscrowd": 0}),
     "'segments_info' lists segment 7 more than once"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=1 << 24), "has id 16777216; a panoptic PNG holds ids"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=0), "has id 0; a panoptic PNG holds ids"),
])
def test_malformed_ids_and_duplicates_are_named_by_file_and_field(tmp_path, spoil, message):
    path, error = _load_spoiled(tmp_path, spoil, message)
    assert str(path) in error


@pytest.mark.parametrize("name", ["/etc/passwd", "../cityscapes_panoptic_val.json", "sub/../../x.png", ".", ""])
def test_a_png_named_outside_the_png_folder_is_refused(tmp_path, name):
    spoil = lambda d: d["annotations"][0].update(file_name=name)  # noqa: E731
    path, error = _load_spoiled(tmp_path, spoil, "must be a path inside the folder of panoptic PNGs")
    assert str(path) in error and repr(name) in error


@pytest.mark.parametrize("content, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels deep"),
    (b'{"annotations": [], "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than 32 levels deep"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
])
def test_a_panoptic_json_too_deep_or_not_utf8_is_named(tmp_path, content, message):
    _write_by_hand(tmp_path)
    (tmp_path / _JSON).write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        PanopticDataset(tmp_path, "val")
    assert str(error.value).startswith(f"{tmp_path / _JSON}: ")


def test_a_panoptic_json_that_is_a_folder_is_named(tmp_path):
    _write_by_hand(tmp_path)
    (tmp_path / _JSON).unlink()
    (tmp_path / _JSON).mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        PanopticDataset(tmp_path, "val")


@pytest.mark.parametrize("content, message", [
    (b"[" * 1000 + b"]" * 1000, "nested more than 32 levels deep"),
    (b"- {name: r\xe9sum\xe9, id: 7, isthing: 0, color: [1, 2, 3]}\n", "not UTF-8 text"),
])
def test_a_class_table_too_deep_or_not_utf8_is_named(tmp_path, content, message):
    table = tmp_path / "classes.yaml"
    table.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_class_table(table)
    assert str(error.value).startswith(f"{table}: ")


def _jpeg_image_path(root) -> Path:
    _write_by_hand(root, file_name="aachen_000000_000019.jpg")
    return root / "leftImg8bit/val/aachen/aachen_000000_000019.jpg"


def test_a_jpeg_image_decodes_as_pillow_decodes_it(tmp_path):
    path = _jpeg_image_path(tmp_path)
    with Image.open(path) as image:
        assert image.format == "JPEG"
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(PanopticDataset(tmp_path, "val")[0].image, expected)


def test_a_jpeg_image_cut_short_and_closed_again_is_named_not_read_grey(tmp_path):
    path = _jpeg_image_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-12] + b"\xff\xd9")  # the last 10 bytes of its coded data cut
    with Image.open(path) as image:
        image.load()  # Pillow alone reads it without complaint
    with pytest.raises(ValueError, match=(
        rf"^{path}: not readable as an image \(Corrupt JPEG data: premature end of data segment\)$"
    )):
        PanopticDataset(tmp_path, "val")[0]


def test_a_jpeg_image_with_more_bytes_than_its_pixels_could_take_is_refused_unread(tmp_path):
    path = _jpeg_image_path(tmp_path)
    with path.open("ab") as handle:
        handle.write(bytes(2 << 20))
    pixels = f"{H * W:,}"
    with pytest.raises(ValueError, match=rf"^{path}: not readable as an image \(more than [\d,]+ bytes for {pixels} pixels\)$"):
        PanopticDataset(tmp_path, "val")[0]
