"""Model configuration: presets as dataclasses that round-trip through YAML.

One `EfficientPSConfig` holds everything needed to build, run and interpret a
network: the architecture, the thresholds of inference and fusion, the input
normalisation and the class table. A checkpoint stores it beside its weights,
so a checkpoint is self-describing.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..input_limits import MAX_ASPECT_RATIO

VOID_TRAIN_ID = 255

# The timm architectures the backbone is built from: plain names only, since a
# hub prefix ("hf-hub:") or a pretrained tag (".ra_in1k") makes timm download.
BACKBONE_NAMES = re.compile(r"(tf_)?efficientnet_b[0-8]")

# Limits the outputs impose: the semantic image is mono8 with 255 for void,
# and a panoptic id is label id x 1000 + k in an int32, 0 being void.
MAX_CLASSES = VOID_TRAIN_ID
MAX_LABEL_ID = 2**16 - 1
MAX_INSTANCES = 999
# A parsed config deeper than this is no config; far deeper, the parsers recurse out.
MAX_NESTING = 32
MAX_CONFIG_CHARS = 1_000_000
# The backbone's deepest feature has stride 32; padding to less breaks the FPN.
BACKBONE_STRIDE = 32
# Sizes given for synthetic scenes and training crops: twice the node's default
# limit, 200 MB of RGB; the paper's model at that size needs tens of GB.
MAX_SIZE_PIXELS = 8192 * 8192
# The RoI heads hold a block of features per proposal (box head) and per
# detection (mask head), for every image: at most this many values each, 1 GiB
# in fp32, so that a config inside its ranges cannot ask for tens of GB a frame.
# The paper's model needs at most 20 M: 100 detections x 28² x 256.
MAX_ROI_VALUES = 1 << 28
# A config name is part of the packaged weights' file name, so no path in it.
CONFIG_NAMES = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLASS_NAMES = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True)
class Bound:
    """What values one config field allows; `problem` says why a value is not one of them.

    Numbers lie in [low, high], or (low, high] with `low_open`; a tuple field's
    bound applies to each of its values, and `count` limits how many a
    variable-length tuple holds. Strings match `pattern`, described by `text`.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    multiple_of: int = 1
    count: tuple[int, int] = (0, 64)
    pattern: re.Pattern | None = None
    text: str = ""

    def describe(self) -> str:
        if self.pattern is not None:
            return self.text
        multiple = f", a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""
        if self.low_open:
            return f"more than {_number(self.low)} and at most {_number(self.high)}{multiple}"
        return f"{_number(self.low)} to {_number(self.high)}{multiple}"

    def problem(self, value: Any) -> str:
        if self.pattern is not None:
            return "" if self.pattern.fullmatch(value) else f"{_shown(value)} is not allowed; allowed: {self.describe()}"
        inside = (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if inside and (self.multiple_of == 1 or value % self.multiple_of == 0):
            return ""
        return f"{_number(value)} is out of range; allowed: {self.describe()}"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else _shown(value)


def ranged(default: Any = dataclasses.MISSING, low: float | None = None, high: float | None = None, **more) -> Any:
    """A dataclass field whose values are checked against `Bound(low, high, **more)`."""
    return field(default=default, metadata={"bound": Bound(low, high, **more)})


def fraction(default: float) -> Any:
    return ranged(default, 0.0, 1.0)


@dataclass(frozen=True)
class ClassInfo:
    """One class of the semantic output.

    `train_id` is the channel of the semantic logits and the value in the
    published semantic image; `label_id` is the dataset's own id, used in the
    panoptic image (Cityscapes convention).
    """

    train_id: int = ranged(low=0, high=MAX_CLASSES - 1)
    label_id: int = ranged(low=1, high=MAX_LABEL_ID)
    name: str = ranged(pattern=CLASS_NAMES, text="1 to 64 printable characters")
    color: tuple[int, int, int] = ranged(low=0, high=255)
    is_thing: bool


# Cityscapes, in train-id order: 11 stuff classes, then 8 thing classes.
CITYSCAPES_CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(train_id, label_id, name, color, train_id >= 11)
    for train_id, (label_id, name, color) in enumerate(
        [
            (7, "road", (128, 64, 128)),
            (8, "sidewalk", (244, 35, 232)),
            (11, "building", (70, 70, 70)),
            (12, "wall", (102, 102, 156)),
            (13, "fence", (190, 153, 153)),
            (17, "pole", (153, 153, 153)),
            (19, "traffic light", (250, 170, 30)),
            (20, "traffic sign", (220, 220, 0)),
            (21, "vegetation", (107, 142, 35)),
            (22, "terrain", (152, 251, 152)),
            (23, "sky", (70, 130, 180)),
            (24, "person", (220, 20, 60)),
            (25, "rider", (255, 0, 0)),
            (26, "car", (0, 0, 142)),
            (27, "truck", (0, 0, 70)),
            (28, "bus", (0, 60, 100)),
            (31, "train", (0, 80, 100)),
            (32, "motorcycle", (0, 0, 230)),
            (33, "bicycle", (119, 11, 32)),
        ]
    )
)


@dataclass
class BackboneConfig:
    # A timm EfficientNet B0..B8; the "tf_" variants carry TF "same" padding.
    name: str = ranged(
        "tf_efficientnet_b5",
        pattern=BACKBONE_NAMES,
        text="efficientnet_b0 .. efficientnet_b8 or tf_efficientnet_b0 .. tf_efficientnet_b8 "
        "(plain timm names, no source prefix or pretrained tag)",
    )
    # Stages whose outputs feed the FPN at strides 4, 8 and 16; stride 32 is
    # the head conv after the last stage.
    tap_stages: tuple[int, int, int] = ranged((1, 2, 4), 0, 6)
    norm_eps: float = ranged(1e-3, 0.0, 1.0, low_open=True)
    drop_path_rate: float = ranged(0.0, 0.0, 0.9)


@dataclass
class RPNConfig:
    anchor_scale: float = ranged(8.0, 0.0, 1024.0, low_open=True)  # anchor side = anchor_scale * stride
    anchor_ratios: tuple[float, ...] = ranged((0.5, 1.0, 2.0), 1 / 64, 64.0, count=(1, 16))
    # Proposals kept per level before NMS and in total after it. The largest
    # published Mask R-CNN settings keep a few thousand; NMS costs the square.
    pre_nms_top_n_train: int = ranged(2000, 1, 10_000)
    post_nms_top_n_train: int = ranged(2000, 1, 10_000)
    pre_nms_top_n_test: int = ranged(1000, 1, 10_000)
    post_nms_top_n_test: int = ranged(1000, 1, 10_000)
    nms_threshold: float = fraction(0.7)
    min_box_size: float = ranged(0.0, 0.0, 10_000.0)
    # Anchor assignment for the loss.
    fg_iou_threshold: float = fraction(0.7)
    bg_iou_threshold: float = fraction(0.3)
    batch_size_per_image: int = ranged(256, 1, 100_000)
    positive_fraction: float = fraction(0.5)


@dataclass
class RoIConfig:
    box_roi_size: int = ranged(7, 1, 64)
    mask_roi_size: int = ranged(14, 1, 128)
    sampling_ratio: int = ranged(2, 0, 16)  # 0: adaptive, as roi_align takes it
    # mmdetection's level mapping: level = floor(log2(sqrt(area) / scale)).
    finest_scale: float = ranged(56.0, 0.0, 10_000.0, low_open=True)
    box_fc_channels: int = ranged(1024, 1, 4096)
    mask_channels: int = ranged(256, 1, 1024)
    box_coder_weights: tuple[float, float, float, float] = ranged((10.0, 10.0, 5.0, 5.0), 0.0, 1000.0, low_open=True)
    # Proposal sampling for the box and mask losses.
    fg_iou_threshold: float = fraction(0.5)
    bg_iou_threshold: float = fraction(0.5)
    batch_size_per_image: int = ranged(256, 1, 100_000)
    positive_fraction: float = fraction(0.25)
    # Detections passed to the fusion.
    score_threshold: float = fraction(0.5)
    nms_threshold: float = fraction(0.5)
    detections_per_image: int = ranged(100, 1, MAX_INSTANCES)


@dataclass
class FusionConfig:
    score_threshold: float = fraction(0.5)
    nms_threshold: float = fraction(0.5)
    max_instances: int = ranged(100, 1, MAX_INSTANCES)
    overlap_threshold: float = fraction(0.5)
    # A pasted mask pixel belongs to the instance above this probability.
    mask_threshold: float = fraction(0.5)
    min_stuff_area: int = ranged(2048, 0, 2**31 - 1)
    mask_logit_scale: float = ranged(4.0, 0.0, 1000.0)


@dataclass
class EfficientPSConfig:
    name: str = ranged(
        "b5_cityscapes",
        pattern=CONFIG_NAMES,
        text="1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    )
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = ranged(256, 1, 1024)
    semantic_channels: int = ranged(128, 1, 1024)
    # The five DPC branches' (rows, columns) dilations.
    dpc_dilations: tuple[tuple[int, int], ...] = ranged(
        ((1, 6), (1, 1), (6, 21), (18, 15), (6, 3)), 1, 128, count=(5, 5)
    )
    # eps of every norm outside the backbone.
    head_norm_eps: float = ranged(1e-5, 0.0, 1.0, low_open=True)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # RGB, 0-255 scale, applied to the uint8 image: the authors' Cityscapes
    # statistics, which their checkpoints were trained with.
    pixel_mean: tuple[float, float, float] = ranged((106.433, 116.617, 119.559), 0.0, 255.0)
    pixel_std: tuple[float, float, float] = ranged((65.496, 67.6, 74.123), 0.0, 255.0, low_open=True)
    # Both sides of the network's input are padded to a multiple of this.
    size_divisor: int = ranged(32, BACKBONE_STRIDE, 1024, multiple_of=BACKBONE_STRIDE)
    classes: tuple[ClassInfo, ...] = ranged(CITYSCAPES_CLASSES, count=(2, MAX_CLASSES))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def stuff_classes(self) -> tuple[ClassInfo, ...]:
        return tuple(c for c in self.classes if not c.is_thing)

    @property
    def thing_classes(self) -> tuple[ClassInfo, ...]:
        return tuple(c for c in self.classes if c.is_thing)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_classes)

    @property
    def num_things(self) -> int:
        return len(self.thing_classes)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EfficientPSConfig":
        return _from_plain(cls, data, "config")


def check_config(config: EfficientPSConfig, where: str = "config") -> EfficientPSConfig:
    """Every field's type and range, and the class table; ValueError names the first bad field.

    For configs built in code, which no parser has seen.
    """
    if not isinstance(config, EfficientPSConfig):
        raise ValueError(f"{where}: expected an EfficientPSConfig, got {type(config).__name__}")
    return _validate(_from_plain(EfficientPSConfig, config.to_dict(), where))


def _validate(config: EfficientPSConfig) -> EfficientPSConfig:
    """Refuse class tables the network cannot represent."""
    train_ids = [c.train_id for c in config.classes]
    if train_ids != list(range(len(train_ids))):
        raise ValueError(f"config.classes: train ids must be 0..{len(train_ids) - 1} in order, got {train_ids}")
    flags = [c.is_thing for c in config.classes]
    if flags != sorted(flags):
        raise ValueError("config.classes: stuff classes must come before thing classes")
    if config.num_things == 0 or config.num_stuff == 0:
        raise ValueError("config.classes: at least one stuff and one thing class are needed")
    label_ids = [c.label_id for c in config.classes]
    if len(set(label_ids)) != len(label_ids):
        repeated = sorted({i for i in label_ids if label_ids.count(i) > 1})
        raise ValueError(
            f"config.classes: label ids {repeated} are used twice; the panoptic image could not tell them apart"
        )
    _check_roi_sizes(config)
    return config


def _check_roi_sizes(config: EfficientPSConfig) -> None:
    """Refuse RoI counts and sizes whose feature blocks would exceed MAX_ROI_VALUES per image."""
    roi, rpn = config.roi, config.rpn
    box = f"roi.box_roi_size² x fpn_channels = {roi.box_roi_size ** 2 * config.fpn_channels}"
    mask_values = (2 * roi.mask_roi_size) ** 2 * max(config.fpn_channels, roi.mask_channels)
    mask = f"(2 x roi.mask_roi_size)² x max(fpn_channels, roi.mask_channels) = {mask_values}"
    blocks = [
        ("rpn.post_nms_top_n_test", rpn.post_nms_top_n_test, roi.box_roi_size ** 2 * config.fpn_channels, box),
        ("roi.batch_size_per_image", roi.batch_size_per_image, roi.box_roi_size ** 2 * config.fpn_channels, box),
        ("roi.detections_per_image", roi.detections_per_image, mask_values, mask),
    ]
    for name, count, values, per_roi in blocks:
        if count * values > MAX_ROI_VALUES:
            raise ValueError(
                f"config: {name} ({count}) x {per_roi} is {count * values:,} feature values per image; "
                f"allowed: at most {MAX_ROI_VALUES:,} (1 GiB in fp32)"
            )


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 40, 40


def _shown(value: Any) -> str:
    """A short repr, safe for values nested arbitrarily deep."""
    return _SHOWN.repr(value)


def _from_plain(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from nested dicts/lists, naming the bad key on error."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    required = [f.name for f in fields.values() if _no_default(f) and f.name not in data]
    if required:
        raise ValueError(f"{where}: missing keys {required}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, fields[key].metadata.get("bound"), f"{where}.{key}")
    return cls(**kwargs)


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, bound: Bound | None, where: str) -> Any:
    """`value` as the type `hint` names, inside `bound`; ValueError names `where` and the allowed values."""
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, where)
    if typing.get_origin(hint) is tuple:
        return _coerce_tuple(hint, value, bound, where)
    scalar = _scalar(hint, value, where)
    problem = bound.problem(scalar) if bound is not None and not isinstance(scalar, bool) else ""
    if problem:
        raise ValueError(f"{where}: {problem}")
    return scalar


def _coerce_tuple(hint: Any, value: Any, bound: Bound | None, where: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {_shown(value)}")
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        low, high = bound.count if bound is not None else Bound().count
        if not low <= len(value) <= high:
            allowed = str(low) if low == high else f"{low} to {high}"
            raise ValueError(f"{where}: {len(value)} values given; allowed: {allowed}")
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}: {_shown(value)}")
    return tuple(_coerce(h, v, bound, f"{where}[{i}]") for i, (h, v) in enumerate(zip(args, value)))


def _scalar(hint: Any, value: Any, where: str) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and is_number:
        if not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int and is_number and float(value).is_integer():
        return int(value)
    if hint is str and isinstance(value, str):
        return value
    expected = {bool: "true or false", float: "a number", int: "an integer", str: "a string"}.get(hint, str(hint))
    raise ValueError(f"{where}: expected {expected}, got {_shown(value)}")


def b5_cityscapes() -> EfficientPSConfig:
    """The paper's model: EfficientNet-B5, 2-way FPN of 256, Cityscapes classes."""
    return EfficientPSConfig()


def small() -> EfficientPSConfig:
    """A narrow network for CPU tests and demos: B0 width and thin heads."""
    return EfficientPSConfig(
        name="small",
        backbone=BackboneConfig(name="tf_efficientnet_b0"),
        fpn_channels=64,
        semantic_channels=32,
        roi=RoIConfig(box_fc_channels=256, mask_channels=64, batch_size_per_image=128),
        rpn=RPNConfig(pre_nms_top_n_test=300, post_nms_top_n_test=300),
        # The paper's 2048 px suits 1024x2048 frames; this preset runs at a
        # quarter of that area or less, where 2048 px would void every sign.
        fusion=FusionConfig(min_stuff_area=128),
    )


PRESETS = {"b5_cityscapes": b5_cityscapes, "small": small}


def parse_size(text: str) -> tuple[int, int]:
    """'HEIGHTxWIDTH' -> (height, width): both sides at least 32, the network's
    smallest, and within the limits a camera frame has (see input_limits.py)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH, e.g. 256x512, got {text!r}") from None
    if min(height, width) < 32:
        raise ValueError(f"image size {text!r}: both sides must be at least 32")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ValueError(f"image size {text!r}: an aspect ratio beyond {MAX_ASPECT_RATIO}:1; allowed: at most that")
    if height * width > MAX_SIZE_PIXELS:
        raise ValueError(f"image size {text!r}: {height * width} pixels; allowed: at most {MAX_SIZE_PIXELS} (8192x8192)")
    return height, width


def load_config(name_or_path: str | Path) -> EfficientPSConfig:
    """A preset by name, or a YAML file (a full config, or `preset:` plus overrides)."""
    key = str(name_or_path)
    if key in PRESETS:
        return _validate(PRESETS[key]())
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"unknown model config {key!r}: not a preset ({', '.join(PRESETS)}) and no such file")
    # UTF-8 takes at most 4 bytes a character: a larger file cannot pass parse_document's limit.
    text = read_text_file(path, 4 * MAX_CONFIG_CHARS, str(path))
    data = parse_document(text, str(path), "yaml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return config_from_dict(data, where=str(path))


def read_text_file(path: Path, max_bytes: int, where: str) -> str:
    """A UTF-8 file's text, refused above `max_bytes` before it is read in full.

    ValueError, starting with `where`, for a path that is no regular file (a
    FIFO or a device would be read without end), a larger file, bytes that
    are not UTF-8, or a file that cannot be read.
    """
    try:
        if not path.is_file():
            raise ValueError(f"{where}: {'not a regular file' if path.exists() else 'does not exist'}")
        too_large = f"{where}: larger than {max_bytes:,} bytes, the most read"
        if path.stat().st_size > max_bytes:
            raise ValueError(too_large)
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)  # bounded too: the file may grow meanwhile
        if len(raw) > max_bytes:
            raise ValueError(too_large)
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{where}: not readable ({exc.strerror or exc})") from None


class _AliasRefused(yaml.YAMLError):
    def __init__(self, anchor: str):
        super().__init__(anchor)
        self.anchor = anchor


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing aliases.

    Each `*name` repeats the whole node it names, so a few hundred bytes of
    aliases of aliases stand for billions of nodes, which every later walk
    over the data would visit. Without aliases the data is no larger than its text.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().anchor)
        return super().compose_node(parent, index)


def parse_document(text: str, where: str, kind: str, max_chars: int = MAX_CONFIG_CHARS) -> Any:
    """YAML or JSON text as plain data; one that is too large or nested too deep
    is refused with a message, not with a RecursionError from the parser. YAML
    aliases (`*name`) are refused too."""
    if len(text) > max_chars:
        raise ValueError(f"{where}: {len(text):,} characters; allowed: at most {max_chars:,}")
    try:
        data = json.loads(text) if kind == "json" else yaml.load(text, Loader=_NoAliasLoader)
    except _AliasRefused as exc:
        raise ValueError(f"{where}: a YAML alias (*{exc.anchor}); aliases are not allowed, write the value out") from None
    except RecursionError:
        raise ValueError(f"{where}: nested more than {MAX_NESTING} levels deep") from None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: also integers too long to convert
        raise ValueError(f"{where}: not valid {kind.upper()} ({_parse_error(exc)})") from None
    check_nesting(data, where)
    return data


def _parse_error(exc: Exception) -> str:
    """The parser's complaint in one line; PyYAML's spreads over several, with the text quoted."""
    mark = getattr(exc, "problem_mark", None)
    if getattr(exc, "problem", None) and mark is not None:
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def check_nesting(data: Any, where: str) -> None:
    """Refuse containers nested deeper than MAX_NESTING, walking without recursion."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_NESTING:
                    raise ValueError(f"{where}: nested more than {MAX_NESTING} levels deep")
                pending.append((child, depth + 1))


def config_from_dict(data: dict[str, Any], where: str = "config") -> EfficientPSConfig:
    """Build a config from a mapping; `preset: NAME` starts from that preset.

    Every field is checked for its type and range; ValueError names the first
    bad field and what it allows.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {_shown(data)}")
    check_nesting(data, where)
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is None:
        return _validate(_from_plain(EfficientPSConfig, data, where))
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"{where}: unknown preset {_shown(preset)}; known: {', '.join(PRESETS)}")
    merged = _deep_merge(PRESETS[preset]().to_dict(), data)
    return _validate(_from_plain(EfficientPSConfig, merged, where))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
