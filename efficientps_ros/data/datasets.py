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

Bad ground truth is refused with a message naming the file, not scored:
a panoptic PNG that is no RGB PNG (a grey, 16-bit or palette one would
decode to other ids), a segment listed in `segments_info` without a pixel
in its PNG, duplicated image or segment ids, an image name found in two
folders, a PNG named outside the PNG folder, and images larger than
`MAX_IMAGE_PIXELS` (checked from the header, before decoding). Ids the PNG
holds that `segments_info` does not list become void (cityscapesscripts
skips them when matching but keeps their pixels in its unions);
`PanopticDataset.unlisted` counts them, and the evaluation reports them.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..input_limits import check_image_size
from ..jpeg import decode_jpeg
from ..model.config import (
    CITYSCAPES_CLASSES, MAX_CONFIG_CHARS, MAX_NESTING, VOID_TRAIN_ID, ClassInfo, check_nesting, parse_document,
    read_text_file,
)
from .cityscapes_layout import IMAGE_SUFFIX, VOID_ID, decode_rgb
from .synthetic import Scene

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The largest image or panoptic PNG read, checked from its header before any
# pixel is decoded: the node's default max_image_pixels (8192x4096), sixteen
# Cityscapes frames. Loading one costs some 20 bytes a pixel.
MAX_IMAGE_PIXELS = 8192 * 4096
# A panoptic JSON is parsed whole, into Python objects several times its size.
# Cityscapes' train split, indented as createPanopticImgs writes it, is tens of
# MB and COCO's panoptic train JSON a few hundred; 1 GiB leaves room beyond them.
MAX_JSON_BYTES = 1 << 30
# parse_document counts the characters of a class table; UTF-8 spends at most four bytes on one.
_MAX_CLASS_TABLE_BYTES = 4 * MAX_CONFIG_CHARS
# A panoptic PNG stores segment id R + 256 G + 256^2 B; 0 is void.
_MAX_SEGMENT_ID = (1 << 24) - 1
# The modes that hold those three bytes as written: a grey, 16-bit or palette PNG decodes to other ids.
_PANOPTIC_MODES = ("RGB", "RGBA")
# Pixels looked up at a time among a PNG's listed segment ids: about 1.5 MB of temporaries.
_SEARCH_PIXELS = 1 << 16
# Ids a message lists before it says how many more there are.
_SHOWN_IDS = 5
# What Pillow raises for a file it cannot open or decode.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
# A JPEG is read whole for libjpeg: at most this many bytes a pixel its header
# declares (noise at quality 100 without chroma subsampling takes 4.1) and
# 1 MiB of profiles and metadata.
_JPEG_BYTES_PER_PIXEL = 8
_JPEG_METADATA_BYTES = 1 << 20


class Unlisted(NamedTuple):
    """Segments of one image's panoptic PNG that its `segments_info` does not list, made void."""

    segments: int
    pixels: int


class PanopticDataset(Sequence):
    """Scenes of one split under `root`, in the order of the panoptic JSON.

    The defaults follow the Cityscapes layout: `gtFine/cityscapes_panoptic_{split}.json`,
    its PNG folder beside it, and the images anywhere under `leftImg8bit/{split}`.
    `unlisted` maps the id of every image read so far whose PNG holds segments
    that `segments_info` does not list to their count (`Unlisted`).
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
        for path in (self.panoptic_dir, image_dir):
            if not path.is_dir():
                raise ValueError(f"dataset {root} (split {split!r}): {path} is not a folder")
        data = _read_json(self.json_path)
        if not data["annotations"]:
            raise ValueError(f"split {split!r} of {root} lists no images ({self.json_path} has no annotations)")
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
        self.unlisted: dict[str | int, Unlisted] = {}

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
        image = read_rgb(self.image_paths[index])
        png = self.panoptic_dir / annotation["file_name"]
        ids = decode_rgb(_read_panoptic(png))
        if ids.shape != image.shape[:2]:
            raise ValueError(f"{png}: size {ids.shape} differs from its image's {image.shape[:2]}")
        segments = annotation["segments_info"]
        at = _segment_index(ids, segments)
        self._check_segments(at, ids, segments, annotation["image_id"], png)
        return self._scene(image, at, segments)

    def _check_segments(
        self, at: np.ndarray, ids: np.ndarray, segments: list[dict], image_id: str | int, png: Path
    ) -> None:
        """Refuse listed segments without a pixel; count the PNG's unlisted ones into `unlisted`.

        A listed segment absent from the PNG is one cityscapesscripts counts
        as missed and this loader could not: the files disagree, and no
        score from them can be trusted.
        """
        counts = np.bincount(at.ravel(), minlength=len(segments) + 1)
        empty = [segments[i]["id"] for i in np.flatnonzero(counts[:-1] == 0).tolist()]
        if empty:
            raise ValueError(
                f"{self.json_path}: image {image_id!r}: segments_info lists segment {_shown(empty)}, "
                f"which {png} has no pixel of"
            )
        unlisted = at == len(segments)
        unlisted &= ids != VOID_ID
        pixels = int(np.count_nonzero(unlisted))
        if pixels:
            self.unlisted[image_id] = Unlisted(_distinct(ids[unlisted]), pixels)
        else:
            self.unlisted.pop(image_id, None)

    def _scene(self, image: np.ndarray, at: np.ndarray, segments: list[dict]) -> Scene:
        """Train ids and instance ids from each pixel's index into `segments` (`len(segments)`: void)."""
        semantic_of = np.full(len(segments) + 1, VOID_TRAIN_ID, np.uint8)
        instance_of = np.zeros(len(segments) + 1, np.uint16)
        kept = []
        for position, segment in enumerate(segments):
            train_id = self._train_ids.get(segment["category_id"], VOID_TRAIN_ID)
            if train_id != VOID_TRAIN_ID:
                kept.append((position, train_id, segment))
        stuff_segments = Counter(train_id for _, train_id, _ in kept if not self.classes[train_id].is_thing)
        instance_classes, crowd = [], []
        for position, train_id, segment in kept:
            semantic_of[position] = train_id
            is_crowd = bool(segment.get("iscrowd", 0))
            # Several segments of one stuff class (COCO-panoptic allows it) are matched one by one
            # in the evaluation, and a stuff crowd is no segment to find, so these stay apart as
            # instances; the training targets skip them.
            if self.classes[train_id].is_thing or stuff_segments[train_id] > 1 or is_crowd:
                instance_classes.append(train_id)
                crowd.append(is_crowd)
                instance_of[position] = len(instance_classes)
        return Scene(image, semantic_of[at], instance_of[at], instance_classes, crowd)


def _segment_index(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Per pixel, the index in `segments` of its id, or `len(segments)` for an id they do not list.

    A search among the listed ids, a few per image: the PNG's own distinct
    ids may be as many as its pixels. The search runs over `_SEARCH_PIXELS`
    at a time, so that its 8-byte positions never cover a whole image.
    """
    at = np.full(ids.shape, len(segments), np.int32)
    if not segments:
        return at
    listed = np.array([s["id"] for s in segments], np.uint32)
    order = np.argsort(listed).astype(np.int32)
    ordered = listed[order]
    flat_ids, flat_at = ids.reshape(-1), at.reshape(-1)
    for start in range(0, flat_ids.size, _SEARCH_PIXELS):
        chunk = flat_ids[start:start + _SEARCH_PIXELS]
        position = np.minimum(np.searchsorted(ordered, chunk), len(segments) - 1)
        found = ordered[position] == chunk
        flat_at[start:start + chunk.size][found] = order[position[found]]
    return at


def _distinct(values: np.ndarray) -> int:
    """How many distinct values: a sort, where np.unique would hash every one (seconds for millions)."""
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1 if len(ordered) else 0


def _open_image(path: Path) -> Image.Image:
    """The image at `path` with its header read and its size checked; no pixel is decoded yet."""
    if not path.is_file():
        # Opening a FIFO or a device would wait for data or read without end.
        why = "not a regular file" if path.exists() else "no such file"
        raise ValueError(f"{path}: not readable as an image ({why})")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and refuses above twice that; both lie above ours.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{path}: its header declares more than the {MAX_IMAGE_PIXELS} pixels read") from None
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{path}: not readable as an image ({exc})") from None
    try:
        check_image_size(image.height, image.width, MAX_IMAGE_PIXELS)
    except ValueError as exc:
        image.close()
        raise ValueError(f"{path}: {exc}") from None
    return image


def _decoded(image: Image.Image, path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB; an RGB image is not copied once more by a conversion."""
    try:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{path}: not readable as an image ({exc})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, its size checked against MAX_IMAGE_PIXELS before it is decoded.

    A missing, unreadable or oversized file is one ValueError naming it, and
    so is a JPEG that libjpeg finds damaged (`jpeg.py`), which Pillow would
    decode with its missing part grey.
    """
    path = Path(path)
    with _open_image(path) as image:
        if image.format == "JPEG" and image.mode in ("L", "RGB", "CMYK"):
            return _decoded_jpeg(path, (image.height, image.width))
        return _decoded(image, path)


def _decoded_jpeg(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The JPEG at `path`, which Pillow read as `size` (height, width) and checked; read again for libjpeg."""
    pixels = size[0] * size[1]
    limit = _JPEG_BYTES_PER_PIXEL * pixels + _JPEG_METADATA_BYTES
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"more than {limit:,} bytes for {pixels:,} pixels")
        return decode_jpeg(data, size)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as an image ({exc})") from None


def _read_panoptic(path: Path) -> np.ndarray:
    """A panoptic PNG's pixels as HxWx3 uint8; any other format or mode would give other ids."""
    with _open_image(path) as image:
        if image.format != "PNG" or image.mode not in _PANOPTIC_MODES:
            raise ValueError(
                f"{path}: a {image.format} image in mode {image.mode}; a panoptic PNG holds each "
                f"segment id as R + 256 G + 256^2 B, in mode {' or '.join(_PANOPTIC_MODES)}"
            )
        return _decoded(image, path)


def _read_json(path: Path) -> dict:
    text = read_text_file(path, MAX_JSON_BYTES, str(path))
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{path}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None
    # json.dumps, which writes the ground truth back, recurses as deep as the data goes.
    check_nesting(data, str(path))
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
    for index, image in enumerate(images):
        if not _is_id(image["id"]):
            got = _shown_value(image["id"])
            raise ValueError(f"{path}: image {index}: 'id' must be a string or an integer, got {got}")
        if not isinstance(image.get("file_name", ""), str):
            raise ValueError(
                f"{path}: image {image['id']!r}: 'file_name' must be a string, got {_shown_value(image['file_name'])}"
            )
    _refuse_duplicates([image["id"] for image in images], f"{path}: 'images' lists image")
    listed = {c["id"] for c in categories}
    for index, annotation in enumerate(data["annotations"]):
        _check_annotation(annotation, index, listed, path)
    # A second annotation of one image would score it twice.
    _refuse_duplicates([a["image_id"] for a in data["annotations"]], f"{path}: 'annotations' annotate image")


def _check_annotation(annotation, index: int, categories: set[int], path: Path) -> None:
    if not isinstance(annotation, dict):
        raise ValueError(f"{path}: annotation {index} is not a mapping but {type(annotation).__name__}")
    if "image_id" in annotation and not _is_id(annotation["image_id"]):
        raise ValueError(
            f"{path}: annotation {index}: 'image_id' must be a string or an integer, "
            f"got {_shown_value(annotation['image_id'])}"
        )
    where = f"{path}: image {annotation.get('image_id', f'of annotation {index}')!r}"
    missing = [key for key in ("image_id", "file_name", "segments_info") if key not in annotation]
    if missing:
        raise ValueError(f"{where}: the annotation has no {' and no '.join(map(repr, missing))}")
    if not isinstance(annotation["file_name"], str) or not isinstance(annotation["segments_info"], list):
        raise ValueError(f"{where}: 'file_name' must be a string and 'segments_info' a list")
    _check_png_name(annotation["file_name"], where)
    for number, segment in enumerate(annotation["segments_info"]):
        if not isinstance(segment, dict) or not (_is_int(segment.get("id")) and _is_int(segment.get("category_id"))):
            raise ValueError(f"{where}: segment {number} needs an integer 'id' and 'category_id', got {segment!r}")
        if not 0 < segment["id"] <= _MAX_SEGMENT_ID:
            raise ValueError(
                f"{where}: segment {number} has id {segment['id']}; a panoptic PNG holds ids 1 to "
                f"{_MAX_SEGMENT_ID} (0 is void)"
            )
        if segment["category_id"] not in categories:
            raise ValueError(
                f"{where}: segment {segment['id']} has category_id {segment['category_id']}, "
                "which 'categories' does not list"
            )
        # Read as a truth value, a string "0" would make a crowd.
        crowd = segment.get("iscrowd", 0)
        if not (isinstance(crowd, int) and crowd in (0, 1)):
            raise ValueError(
                f"{where}: segment {segment['id']} has iscrowd {_shown_value(segment['iscrowd'])}; allowed: 0 or 1"
            )
    # With one id twice, the last entry's category would silently win.
    _refuse_duplicates([s["id"] for s in annotation["segments_info"]], f"{where}: 'segments_info' lists segment")


def _check_png_name(name: str, where: str) -> None:
    """The PNG must lie in the PNG folder: no absolute path, no '..', not the folder itself."""
    parts = PurePath(name).parts
    if not parts or PurePath(name).is_absolute() or ".." in parts:
        raise ValueError(
            f"{where}: 'file_name' {name!r} must be a path inside the folder of panoptic PNGs "
            "(relative, without '..')"
        )


def _refuse_duplicates(values: list, what: str) -> None:
    seen: set = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} more than once")
        seen.add(value)


def _is_int(value) -> bool:
    # JSON true/false load as bools, which Python counts as ints.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value) -> bool:
    """Image ids are strings (Cityscapes) or integers (COCO)."""
    return isinstance(value, str) or _is_int(value)


def _shown(ids: list) -> str:
    """The first few of `ids`, and how many more there are."""
    shown = ", ".join(map(str, ids[:_SHOWN_IDS]))
    return shown if len(ids) <= _SHOWN_IDS else f"{shown} and {len(ids) - _SHOWN_IDS} more"


def _shown_value(value) -> str:
    """A JSON value in a message, cut short: it may be a large crafted one."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


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


def _index_images(image_dir: Path) -> dict[str, list[Path]]:
    """File name -> paths of every image of that name under `image_dir`, however deep."""
    index: dict[str, list[Path]] = {}
    for path in sorted(image_dir.rglob("*")):
        if path.suffix.lower() in _IMAGE_EXTENSIONS:
            index.setdefault(path.name, []).append(path)
    return index


def _find_image(image_id: str | int, file_name: str | None, index: dict[str, list[Path]], image_dir: Path) -> Path:
    """The image of `image_id`, by the JSON's file name or by the id; a name in two folders is refused.

    A file name with folders (`aachen/x.png`) picks among the files of that
    name the one whose path ends so.
    """
    for name in (file_name, f"{image_id}{IMAGE_SUFFIX}.png", f"{image_id}.png", f"{image_id}.jpg"):
        if not name:
            continue
        name = PurePath(name)
        candidates = index.get(name.name, [])
        if len(candidates) > 1 and len(name.parts) > 1:
            candidates = [p for p in candidates if p.parts[-len(name.parts):] == name.parts] or candidates
        if len(candidates) > 1:
            raise ValueError(
                f"image {image_id!r}: {name.name} is both {candidates[0]} and {candidates[1]}; "
                "which one is meant is ambiguous (name the folder in the JSON's file_name, or remove one)"
            )
        if candidates:
            return candidates[0]
    raise ValueError(f"image {image_id!r}: no {file_name or f'{image_id}{IMAGE_SUFFIX}.png'} under {image_dir}")


def load_class_table(path: str | Path) -> tuple[ClassInfo, ...]:
    """A dataset's class table from YAML: a list of categories (or `categories:` holding one).

    Each category has `name`, `id` (the label id in the panoptic files),
    `isthing` and `color`; `train_id` is optional. Without train ids the
    order of the file decides, stuff classes first; train id 255 leaves a
    category out (void).
    """
    path = Path(path)
    data = parse_document(read_text_file(path, _MAX_CLASS_TABLE_BYTES, str(path)), str(path), "yaml")
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
