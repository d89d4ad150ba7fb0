"""Panoptic datasets in the COCO-panoptic layout that Cityscapes ships.

`PanopticDataset` reads cityscapesscripts' `createPanopticImgs` output (see
`cityscapes_layout`) as a sequence of `Scene`s, one image at a time, so that
a whole split never sits in memory. The JSON's category ids are label ids;
the class table maps them to train ids, and every category it does not name
becomes void. Crowd segments become instances flagged as crowds: the
training targets skip them, the panoptic evaluation needs them. So it is
with a stuff class that has several segments in one image: each becomes an
instance of that class, for the evaluation to match one by one.

KITTI panoptic comes in the same layout; any other COCO-panoptic dataset
works with its own class table, read by `load_class_table`.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..model.config import CITYSCAPES_CLASSES, VOID_TRAIN_ID, ClassInfo
from .cityscapes_layout import IMAGE_SUFFIX, decode_rgb, unique_inverse
from .synthetic import Scene

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class PanopticDataset(Sequence):
    """Scenes of one split under `root`, in the order of the panoptic JSON.

    The defaults follow the Cityscapes layout: `gtFine/cityscapes_panoptic_{split}.json`,
    its PNG folder beside it, and the images anywhere under `leftImg8bit/{split}`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        classes: Sequence[ClassInfo] = CITYSCAPES_CLASSES,
        json_path: str | Path | None = None,
        panoptic_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
    ):
        root = Path(root)
        self.json_path = Path(json_path or root / "gtFine" / f"cityscapes_panoptic_{split}.json")
        self.panoptic_dir = Path(panoptic_dir or self.json_path.with_suffix(""))
        image_dir = Path(image_dir or root / "leftImg8bit" / split)
        for path in (self.json_path, self.panoptic_dir, image_dir):
            if not path.exists():
                raise ValueError(f"dataset {root} (split {split!r}): {path} does not exist")
        data = _read_json(self.json_path)
        self.classes = tuple(classes)
        self._train_ids = _category_train_ids(data["categories"], self.classes, self.json_path)
        self._annotations = data["annotations"]
        self._images = data.get("images", [])
        self._categories = data["categories"]
        files = {image["id"]: image.get("file_name") for image in self._images}
        index = _index_images(image_dir)
        self.image_paths = [
            _find_image(a["image_id"], files.get(a["image_id"]), index, image_dir) for a in self._annotations
        ]

    @property
    def image_ids(self) -> list[str]:
        return [a["image_id"] for a in self._annotations]

    def panoptic_json(self, count: int) -> dict:
        """The split's JSON cut to its first `count` images, in the same categories.

        cityscapesscripts' evaluatePanoptic wants a prediction for every image
        its ground-truth JSON lists; with this one it scores those images only.
        """
        annotations = self._annotations[:count]
        kept = {a["image_id"] for a in annotations}
        images = [image for image in self._images if image["id"] in kept]
        return {"images": images, "annotations": annotations, "categories": self._categories}

    def __len__(self) -> int:
        return len(self._annotations)

    def __getitem__(self, index: int) -> Scene:
        if not -len(self) <= index < len(self):
            raise IndexError(f"dataset index {index} out of range for {len(self)} images")
        annotation = self._annotations[index]
        image = _read_rgb(self.image_paths[index])
        png = self.panoptic_dir / annotation["file_name"]
        ids = decode_rgb(_read_rgb(png))
        if ids.shape != image.shape[:2]:
            raise ValueError(f"{png}: size {ids.shape} differs from its image's {image.shape[:2]}")
        return self._scene(image, ids, annotation["segments_info"])

    def _scene(self, image: np.ndarray, ids: np.ndarray, segments: list[dict]) -> Scene:
        """Train ids and instance ids from a segment-id map: one lookup per segment."""
        values, inverse = unique_inverse(ids)
        semantic_of = np.full(len(values), VOID_TRAIN_ID, np.uint8)
        instance_of = np.zeros(len(values), np.uint16)
        position = {v: i for i, v in enumerate(values.tolist())}
        kept = []
        for segment in segments:
            train_id = self._train_ids.get(segment["category_id"], VOID_TRAIN_ID)
            if segment["id"] in position and train_id != VOID_TRAIN_ID:
                kept.append((position[segment["id"]], train_id, segment))
        stuff_segments = Counter(train_id for _, train_id, _ in kept if not self.classes[train_id].is_thing)
        instance_classes, crowd = [], []
        for at, train_id, segment in kept:
            semantic_of[at] = train_id
            is_crowd = bool(segment.get("iscrowd", 0))
            # Several segments of one stuff class (COCO-panoptic allows it) are matched one by one
            # in the evaluation, and a stuff crowd is no segment to find, so these stay apart as
            # instances; the training targets skip them.
            if self.classes[train_id].is_thing or stuff_segments[train_id] > 1 or is_crowd:
                instance_classes.append(train_id)
                crowd.append(is_crowd)
                instance_of[at] = len(instance_classes)
        return Scene(image, semantic_of[inverse], instance_of[inverse], instance_classes, crowd)


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as an image ({exc})") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO-panoptic file (no 'annotations' list)")
    _check_layout(data, path)
    return data


def _check_layout(data: dict, path: Path) -> None:
    """Every field the loader reads, there and of its type, so that a bad file fails here, by name."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _is_int(c.get("id")) for c in categories):
        raise ValueError(f"{path}: 'categories' must be a list of categories, each with an integer 'id'")
    images = data.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, dict) and "id" in i for i in images):
        raise ValueError(f"{path}: 'images' must be a list of images, each with an 'id'")
    listed = {c["id"] for c in categories}
    for index, annotation in enumerate(data["annotations"]):
        _check_annotation(annotation, index, listed, path)


def _check_annotation(annotation, index: int, categories: set[int], path: Path) -> None:
    if not isinstance(annotation, dict):
        raise ValueError(f"{path}: annotation {index} is not a mapping but {type(annotation).__name__}")
    where = f"{path}: image {annotation.get('image_id', f'of annotation {index}')!r}"
    missing = [key for key in ("image_id", "file_name", "segments_info") if key not in annotation]
    if missing:
        raise ValueError(f"{where}: the annotation has no {' and no '.join(map(repr, missing))}")
    if not isinstance(annotation["file_name"], str) or not isinstance(annotation["segments_info"], list):
        raise ValueError(f"{where}: 'file_name' must be a string and 'segments_info' a list")
    for number, segment in enumerate(annotation["segments_info"]):
        if not isinstance(segment, dict) or not (_is_int(segment.get("id")) and _is_int(segment.get("category_id"))):
            raise ValueError(f"{where}: segment {number} needs an integer 'id' and 'category_id', got {segment!r}")
        if segment["category_id"] not in categories:
            raise ValueError(
                f"{where}: segment {segment['id']} has category_id {segment['category_id']}, "
                "which 'categories' does not list"
            )


def _is_int(value) -> bool:
    # JSON true/false load as bools, which Python counts as ints.
    return isinstance(value, int) and not isinstance(value, bool)


def _category_train_ids(categories: list[dict], classes: Sequence[ClassInfo], where: Path) -> dict[int, int]:
    """Label id -> train id; a category the class table names differently is refused."""
    by_label = {c.label_id: c for c in classes}
    for category in categories:
        known = by_label.get(category.get("id"))
        if known is not None and category.get("name", known.name) != known.name:
            raise ValueError(
                f"{where}: category {category['id']} is {category['name']!r}, "
                f"but the class table calls label id {known.label_id} {known.name!r}"
            )
    return {c.label_id: c.train_id for c in classes}


def _index_images(image_dir: Path) -> dict[str, Path]:
    """File name -> path of every image under `image_dir`, however deep."""
    return {p.name: p for p in image_dir.rglob("*") if p.suffix.lower() in _IMAGE_EXTENSIONS}


def _find_image(image_id: str, file_name: str | None, index: dict[str, Path], image_dir: Path) -> Path:
    for name in (file_name, f"{image_id}{IMAGE_SUFFIX}.png", f"{image_id}.png", f"{image_id}.jpg"):
        if name and Path(name).name in index:
            return index[Path(name).name]
    raise ValueError(f"image {image_id!r}: no {file_name or image_id + IMAGE_SUFFIX + '.png'} under {image_dir}")


def load_class_table(path: str | Path) -> tuple[ClassInfo, ...]:
    """A dataset's class table from YAML: a list of categories (or `categories:` holding one).

    Each category has `name`, `id` (the label id in the panoptic files),
    `isthing` and `color`; `train_id` is optional. Without train ids the
    order of the file decides, stuff classes first; train id 255 leaves a
    category out (void).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not readable as YAML ({exc})") from None
    if isinstance(data, dict):
        data = data.get("categories")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a list of categories (name, id, isthing, color)")
    entries = [_category(entry, f"{path}[{i}]") for i, entry in enumerate(data)]
    if all(train_id is None for *_, train_id in entries):
        ordered = [e for e in entries if not e[3]] + [e for e in entries if e[3]]
        entries = [(*e[:4], i) for i, e in enumerate(ordered)]
    elif any(train_id is None for *_, train_id in entries):
        raise ValueError(f"{path}: give train_id for every category or for none")
    kept = sorted((e for e in entries if e[4] != VOID_TRAIN_ID), key=lambda e: e[4])
    table = tuple(ClassInfo(train_id, label, name, color, thing) for name, label, color, thing, train_id in kept)
    _check_table(table, path)
    return table


def _category(entry, where: str) -> tuple[str, int, tuple[int, int, int], bool, int | None]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with name, id, isthing, color")
    try:
        color = tuple(int(c) for c in entry["color"])
        train_id = entry.get("train_id")
        values = (str(entry["name"]), int(entry["id"]), color, _flag(entry["isthing"]),
                  None if train_id is None else int(train_id))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad category {entry!r} ({exc!r})") from None
    if len(color) != 3 or not all(0 <= c < 256 for c in color):
        raise ValueError(f"{where}: color must be three values 0..255, got {entry['color']!r}")
    return values


def _flag(value) -> bool:
    """COCO writes isthing as 0/1; YAML may say true/false. "0" must not read as true."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"isthing must be 0, 1, true or false, got {value!r}")


def _check_table(table: tuple[ClassInfo, ...], where: Path) -> None:
    """The network's needs: train ids 0..N-1, stuff before things, label ids unique."""
    train_ids = [c.train_id for c in table]
    if train_ids != list(range(len(table))):
        raise ValueError(f"{where}: train ids must be 0..{len(table) - 1}, each once, got {train_ids}")
    flags = [c.is_thing for c in table]
    if all(flags) or not any(flags):
        raise ValueError(f"{where}: the network needs at least one stuff and one thing class")
    if flags != sorted(flags):
        raise ValueError(f"{where}: stuff classes must have lower train ids than thing classes")
    labels = [c.label_id for c in table]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: label ids must be unique, got {labels}")
