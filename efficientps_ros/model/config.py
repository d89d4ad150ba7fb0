"""Model configuration: presets as dataclasses that round-trip through YAML.

One `EfficientPSConfig` holds everything needed to build, run and interpret a
network: the architecture, the thresholds of inference and fusion, the input
normalisation and the class table. A checkpoint stores it beside its weights,
so a checkpoint is self-describing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ClassInfo:
    """One class of the semantic output.

    `train_id` is the channel of the semantic logits and the value in the
    published semantic image; `label_id` is the dataset's own id, used in the
    panoptic image (Cityscapes convention).
    """

    train_id: int
    label_id: int
    name: str
    color: tuple[int, int, int]
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

VOID_TRAIN_ID = 255


@dataclass
class BackboneConfig:
    # Any timm EfficientNet name; the "tf_" variants carry TF "same" padding.
    name: str = "tf_efficientnet_b5"
    # Stages whose outputs feed the FPN at strides 4, 8 and 16; stride 32 is
    # the head conv after the last stage.
    tap_stages: tuple[int, int, int] = (1, 2, 4)
    norm_eps: float = 1e-3
    drop_path_rate: float = 0.0


@dataclass
class RPNConfig:
    anchor_scale: float = 8.0  # anchor side = anchor_scale * stride
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Proposals kept per level before NMS and in total after it.
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 1000
    nms_threshold: float = 0.7
    min_box_size: float = 0.0
    # Anchor assignment for the loss.
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5


@dataclass
class RoIConfig:
    box_roi_size: int = 7
    mask_roi_size: int = 14
    sampling_ratio: int = 2
    # mmdetection's level mapping: level = floor(log2(sqrt(area) / scale)).
    finest_scale: float = 56.0
    box_fc_channels: int = 1024
    mask_channels: int = 256
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # Proposal sampling for the box and mask losses.
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    batch_size_per_image: int = 256
    positive_fraction: float = 0.25
    # Detections passed to the fusion.
    score_threshold: float = 0.5
    nms_threshold: float = 0.5
    detections_per_image: int = 100


@dataclass
class FusionConfig:
    score_threshold: float = 0.5
    nms_threshold: float = 0.5
    max_instances: int = 100
    overlap_threshold: float = 0.5
    # A pasted mask pixel belongs to the instance above this probability.
    mask_threshold: float = 0.5
    min_stuff_area: int = 2048
    mask_logit_scale: float = 4.0


@dataclass
class EfficientPSConfig:
    name: str = "b5_cityscapes"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256
    semantic_channels: int = 128
    dpc_dilations: tuple[tuple[int, int], ...] = ((1, 6), (1, 1), (6, 21), (18, 15), (6, 3))
    # eps of every norm outside the backbone.
    head_norm_eps: float = 1e-5
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # RGB, 0-255 scale, applied to the uint8 image: the authors' Cityscapes
    # statistics, which their checkpoints were trained with.
    pixel_mean: tuple[float, float, float] = (106.433, 116.617, 119.559)
    pixel_std: tuple[float, float, float] = (65.496, 67.6, 74.123)
    # Both sides of the network's input are padded to a multiple of this.
    size_divisor: int = 32
    classes: tuple[ClassInfo, ...] = CITYSCAPES_CLASSES

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
    if len(config.dpc_dilations) != 5:
        raise ValueError(f"config.dpc_dilations: DPC has 5 branches, got {len(config.dpc_dilations)}")
    return config


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from nested dicts/lists, naming the bad key on error."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    defaults = cls()
    kwargs = {}
    for key, value in data.items():
        current = getattr(defaults, key)
        kwargs[key] = _coerce(current, value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(current):
        return _from_plain(type(current), value, where)
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if current and isinstance(current[0], ClassInfo):
            return tuple(_class_info(v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, float) and is_number:
        return float(value)
    if isinstance(current, int) and is_number and float(value).is_integer():
        return int(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    raise ValueError(f"{where}: expected {type(current).__name__}, got {value!r}")


def _class_info(value: Any, where: str) -> ClassInfo:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping with train_id, label_id, name, color, is_thing")
    try:
        return ClassInfo(
            train_id=int(value["train_id"]),
            label_id=int(value["label_id"]),
            name=str(value["name"]),
            color=tuple(int(c) for c in value["color"]),
            is_thing=bool(value["is_thing"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad class entry {value!r} ({exc})") from None


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
    """'HEIGHTxWIDTH' -> (height, width); both sides at least 32, the network's smallest."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH, e.g. 256x512, got {text!r}") from None
    if min(height, width) < 32:
        raise ValueError(f"image size {text!r}: both sides must be at least 32")
    return height, width


def load_config(name_or_path: str | Path) -> EfficientPSConfig:
    """A preset by name, or a YAML file (a full config, or `preset:` plus overrides)."""
    key = str(name_or_path)
    if key in PRESETS:
        return _validate(PRESETS[key]())
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"unknown model config {key!r}: not a preset ({', '.join(PRESETS)}) and no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return _validate(config_from_dict(data, where=str(path)))


def config_from_dict(data: dict[str, Any], where: str = "config") -> EfficientPSConfig:
    """Build a config from a mapping; `preset: NAME` starts from that preset."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is None:
        return _validate(_from_plain(EfficientPSConfig, data, where))
    if preset not in PRESETS:
        raise ValueError(f"{where}: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
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
