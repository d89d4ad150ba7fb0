"""Panoptic maps written as Cityscapes ships them, and read back.

Segment ids follow the Cityscapes convention: a stuff region and a thing
region without an instance (a crowd) get the class's label id, thing instance
k gets label id * 1000 + k, and void is 0. The COCO-panoptic PNG stores a
segment id as R + 256 G + 256^2 B, and its JSON names each segment's
category (the label id) and whether it is a crowd.

A dataset root looks like cityscapesscripts' `createPanopticImgs` output:

    leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
    gtFine/{split}/{city}/{name}_gtFine_labelIds.png      label id per pixel
    gtFine/{split}/{city}/{name}_gtFine_instanceIds.png   segment id per pixel
    gtFine/cityscapes_panoptic_{split}.json
    gtFine/cityscapes_panoptic_{split}/{name}_gtFine_panoptic.png

Predictions go to one folder: `labelIds/{name}_labelIds.png` beside the PNG
folder and JSON of the panoptic result, which cityscapesscripts' evaluations
read. The label-id PNGs have a folder of their own because the pixel-level
evaluation searches its results folder recursively for each image's name and
refuses a name that matches twice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Self, Sequence

import numpy as np
from PIL import Image

from ..model.config import VOID_TRAIN_ID, ClassInfo

# Cityscapes packs thing instances as label id * 1000 + k.
INSTANCE_FACTOR = 1000
VOID_ID = 0
IMAGE_SUFFIX = "_leftImg8bit"


def check_classes(classes: Sequence[ClassInfo]) -> None:
    """Refuse class tables whose label ids the Cityscapes encoding cannot hold."""
    for c in classes:
        if not 0 < c.label_id < 256:
            raise ValueError(
                f"class {c.name!r}: label id {c.label_id} does not fit the Cityscapes layout (1..255; 0 is void)"
            )


def segment_ids(
    semantic: np.ndarray, instance: np.ndarray, classes: Sequence[ClassInfo], crowd: Sequence[bool] = ()
) -> np.ndarray:
    """HxW int32 Cityscapes segment ids from train ids and instance ids.

    Instance k of a thing class keeps its own id unless `crowd[k - 1]` is
    true: a crowd, like thing pixels without an instance, becomes the class's
    one label-id segment. Instance ids of stuff pixels are dropped.
    """
    if semantic.shape != instance.shape:
        raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ in shape")
    label_of = _lookup([c.label_id for c in classes])
    thing_of = _lookup([int(c.is_thing) for c in classes])
    train = semantic.astype(np.int64)
    labels = label_of[train]
    ids = instance.astype(np.int64)
    if ids.max(initial=0) >= INSTANCE_FACTOR:
        raise ValueError(f"instance id {ids.max()} does not fit the Cityscapes layout (at most {INSTANCE_FACTOR - 1})")
    crowd_ids = [k + 1 for k, is_crowd in enumerate(crowd) if is_crowd]
    keep = (thing_of[train] == 1) & (ids > 0) & ~np.isin(ids, crowd_ids)
    return np.where(keep, labels * INSTANCE_FACTOR + ids, labels).astype(np.int32)


def _lookup(values: list[int]) -> np.ndarray:
    """A 256-entry table by train id; unknown train ids and void map to 0."""
    table = np.zeros(256, np.int64)
    table[: len(values)] = values
    table[VOID_TRAIN_ID] = 0
    return table


def segments_info(ids: np.ndarray, classes: Sequence[ClassInfo]) -> list[dict]:
    """COCO-panoptic `segments_info` of a segment-id map, void left out."""
    things = {c.label_id for c in classes if c.is_thing}
    values, inverse = unique_inverse(ids)
    areas = np.bincount(inverse.ravel(), minlength=len(values))
    # Which rows and columns each segment touches; the box spans the first to the last.
    rows = np.zeros((len(values), ids.shape[0]), bool)
    cols = np.zeros((len(values), ids.shape[1]), bool)
    rows[inverse, np.arange(ids.shape[0])[:, None]] = True
    cols[inverse, np.arange(ids.shape[1])[None, :]] = True
    boxes = np.stack([_first(cols), _first(rows), _last(cols), _last(rows)])
    info = []
    for index, (value, area) in enumerate(zip(values.tolist(), areas.tolist())):
        if value == VOID_ID:
            continue
        label = value // INSTANCE_FACTOR if value >= INSTANCE_FACTOR else value
        x0, y0, x1, y1 = boxes[:, index].tolist()
        info.append({
            "id": value,
            "category_id": label,
            "area": area,
            "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
            # A thing region without an instance id is a crowd, as Cityscapes marks it.
            "iscrowd": int(label in things and value < INSTANCE_FACTOR),
        })
    return info


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values of `ids` and, per pixel, the index of its value.

    np.unique's own inverse sorts every pixel's index, seconds on a Cityscapes
    frame; a search among the few distinct values is a fraction of that.
    """
    values = np.unique(ids)
    return values, np.searchsorted(values, ids)


def _first(hits: np.ndarray) -> np.ndarray:
    return hits.argmax(1)


def _last(hits: np.ndarray) -> np.ndarray:
    return hits.shape[1] - 1 - hits[:, ::-1].argmax(1)


def categories(classes: Sequence[ClassInfo]) -> list[dict]:
    """The JSON `categories` entry: one per class, by label id."""
    return [
        {"id": c.label_id, "name": c.name, "color": list(c.color), "isthing": int(c.is_thing), "supercategory": c.name}
        for c in classes
    ]


def encode_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids -> HxWx3 uint8, R + 256 G + 256^2 B."""
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def decode_rgb(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> uint32 segment ids.

    One channel at a time, in uint32 (24 bits are all there is): converting
    the whole HxWx3 array to int64 first would cost 24 bytes a pixel.
    """
    ids = rgb[..., 2].astype(np.uint32)
    ids <<= 8
    ids |= rgb[..., 1]
    ids <<= 8
    ids |= rgb[..., 0]
    return ids


def label_ids(semantic: np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """HxW uint8 label ids from train ids; void and unknown train ids become 0."""
    return _lookup([c.label_id for c in classes])[semantic.astype(np.int64)].astype(np.uint8)


def image_id(path: str | Path) -> str:
    """The Cityscapes image id of an image file: its stem without `_leftImg8bit`."""
    stem = Path(path).stem
    return stem[: -len(IMAGE_SUFFIX)] if stem.endswith(IMAGE_SUFFIX) else stem


class _Writer:
    """Files that are complete only once `close` has run; a `with` block runs it."""

    def close(self) -> Path:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PanopticWriter(_Writer):
    """COCO-panoptic PNGs into `png_dir` and, on `close`, their JSON at `json_path`.

    Only the small per-image JSON entries stay in memory.
    """

    def __init__(self, json_path: str | Path, png_dir: str | Path, classes: Sequence[ClassInfo]):
        check_classes(classes)
        self.json_path = Path(json_path)
        self.png_dir = Path(png_dir)
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.classes = tuple(classes)
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, image_id: str, png_name: str, ids: np.ndarray, image_file: str | None = None) -> None:
        """One image's segment-id map, stored as `png_dir/png_name`."""
        Image.fromarray(encode_rgb(ids)).save(self.png_dir / png_name)
        height, width = ids.shape
        self.images.append({"id": image_id, "width": width, "height": height, "file_name": image_file or png_name})
        segments = segments_info(ids, self.classes)
        self.annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments})

    def close(self) -> Path:
        data = {"images": self.images, "annotations": self.annotations, "categories": categories(self.classes)}
        self.json_path.write_text(json.dumps(data, indent=1))
        return self.json_path


class DatasetWriter(_Writer):
    """Scenes into a Cityscapes dataset root: images, label ids, instance ids, panoptic."""

    def __init__(self, root: str | Path, split: str, classes: Sequence[ClassInfo]):
        self.root = Path(root)
        self.split = split
        self.classes = tuple(classes)
        gt = self.root / "gtFine"
        self.panoptic = PanopticWriter(
            gt / f"cityscapes_panoptic_{split}.json", gt / f"cityscapes_panoptic_{split}", self.classes
        )

    def write(self, name: str, image: np.ndarray, semantic: np.ndarray, instance: np.ndarray,
              crowd: Sequence[bool] = ()) -> None:
        """`name` is a Cityscapes image id, `{city}_{sequence}_{frame}`."""
        city = name.split("_")[0]
        images = self.root / "leftImg8bit" / self.split / city
        labels = self.root / "gtFine" / self.split / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        ids = segment_ids(semantic, instance, self.classes, crowd)
        Image.fromarray(image).save(images / f"{name}{IMAGE_SUFFIX}.png")
        Image.fromarray(label_ids(semantic, self.classes)).save(labels / f"{name}_gtFine_labelIds.png")
        Image.fromarray(ids.astype(np.uint16)).save(labels / f"{name}_gtFine_instanceIds.png")
        self.panoptic.add(name, f"{name}_gtFine_panoptic.png", ids, image_file=f"{name}{IMAGE_SUFFIX}.png")

    def close(self) -> Path:
        return self.panoptic.close()


class PredictionWriter(_Writer):
    """Predictions in the formats cityscapesscripts evaluates.

    `out/labelIds/{id}_labelIds.png` for the pixel-level evaluation
    (`CITYSCAPES_RESULTS=out/labelIds`), and `out/{name}/{id}_panoptic.png`
    with `out/{name}.json` for the panoptic one.
    """

    def __init__(self, out: str | Path, classes: Sequence[ClassInfo], name: str = "panoptic"):
        self.out = Path(out)
        self.labels = self.out / "labelIds"
        self.labels.mkdir(parents=True, exist_ok=True)
        self.classes = tuple(classes)
        self.panoptic = PanopticWriter(self.out / f"{name}.json", self.out / name, self.classes)

    def write(self, image_id: str, semantic: np.ndarray, instance: np.ndarray) -> None:
        Image.fromarray(label_ids(semantic, self.classes)).save(self.labels / f"{image_id}_labelIds.png")
        self.panoptic.add(image_id, f"{image_id}_panoptic.png", segment_ids(semantic, instance, self.classes))

    def close(self) -> Path:
        return self.panoptic.close()
