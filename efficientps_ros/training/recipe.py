"""A training recipe: every setting of a run in one dataclass, read from YAML.

`config/train_b5_cityscapes.yaml` is the authors' recipe, `config/train_small_cpu.yaml`
the CPU one. A field a recipe leaves out takes its default here (the small
preset on synthetic scenes, cosine decay). Command-line flags override single
fields of the recipe they are given with.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEDULES = ("cosine", "step")
AMP_MODES = ("off", "bf16", "fp16")
LOSS_TERMS = ("loss_semantic", "loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box", "loss_mask")


@dataclass(frozen=True)
class Recipe:
    preset: str = "small"
    steps: int = 2000
    # Images per process and step; the global batch is this times the processes.
    batch_size: int = 2
    # Synthetic scenes are drawn at image_size times one of `scales`.
    image_size: tuple[int, int] = (256, 512)
    scales: tuple[float, ...] = (1.0,)
    # Dataset images are resized by a factor from scale_range, then cropped to crop_size.
    scale_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (256, 512)
    flip_probability: float = 0.5
    photometric: bool = False
    # SGD
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Linear warm-up from warmup_ratio * lr over `warmup` steps, then "cosine"
    # decay to zero, or "step": lr times gamma at each of `milestones`.
    schedule: str = "cosine"
    warmup: int = 100
    warmup_ratio: float = 1.0 / 3.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    clip: float = 10.0
    # A step with a non-finite loss or gradient is skipped; this many in a row stop
    # the run. The fp16 scaler halves its scale at each skip, so 16 take it from
    # 2^16 to 1, past any overflow it can cure. 0 stops at the first.
    max_skipped_steps: int = 16
    loss_weights: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in LOSS_TERMS})
    amp: str = "off"
    # Activations in NHWC: about a tenth faster a step on this project's CPU, and the layout tensor cores want.
    channels_last: bool = True
    seed: int = 0
    log_every: int = 20
    val_every: int = 200
    val_count: int = 8
    checkpoint_every: int = 500
    # Training checkpoints kept on disk, the newest; 0 keeps them all.
    keep_checkpoints: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "Recipe":
        """This recipe with `changes`; None values leave a field as it is."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"recipe: unknown settings {unknown}")
        return dataclasses.replace(self, **{k: _coerce(k, v, "recipe") for k, v in given.items()})


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from YAML; keys left out keep the defaults, unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"recipe {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping at the top level")
    data.pop("notes", None)  # free text about the recipe's source
    try:
        return recipe_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"recipe {path}: {exc}") from None


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {sorted(fields)}")
    return Recipe(**{k: _coerce(k, v, k) for k, v in data.items()})


def lr_factor(
    step: int,
    steps: int,
    warmup: int,
    schedule: str = "cosine",
    warmup_ratio: float = 1.0 / 3.0,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """The learning rate of `step` as a fraction of the base rate."""
    if step < warmup:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def recipe_lr_factor(recipe: Recipe, step: int) -> float:
    return lr_factor(
        step, recipe.steps, min(recipe.warmup, recipe.steps), recipe.schedule,
        recipe.warmup_ratio, recipe.milestones, recipe.gamma,
    )


def _coerce(key: str, value: Any, where: str) -> Any:
    """`value` in the type of the default of `key`, or a ValueError naming it."""
    default = getattr(Recipe(), key)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): float(_number(v, f"{where}.{k}")) for k, v in value.items()}
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    number = _number(value, where)
    if isinstance(default, int):
        if not float(number).is_integer():
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    return float(number)


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return value


def _check(recipe: Recipe) -> None:
    positive = ("steps", "batch_size", "log_every", "val_every", "checkpoint_every")
    for name in positive:
        if getattr(recipe, name) < 1:
            raise ValueError(f"{name}: expected at least 1, got {getattr(recipe, name)}")
    for name in ("val_count", "warmup", "workers", "seed", "max_skipped_steps", "keep_checkpoints"):
        if getattr(recipe, name) < 0:
            raise ValueError(f"{name}: expected 0 or more, got {getattr(recipe, name)}")
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {recipe.schedule!r}")
    if recipe.amp not in AMP_MODES:
        raise ValueError(f"amp: expected one of {AMP_MODES}, got {recipe.amp!r}")
    if not 0.0 <= recipe.flip_probability <= 1.0:
        raise ValueError(f"flip_probability: expected 0..1, got {recipe.flip_probability}")
    if recipe.lr < 0 or recipe.clip <= 0:
        raise ValueError(f"lr must be >= 0 and clip > 0, got lr {recipe.lr}, clip {recipe.clip}")
    for name in ("image_size", "crop_size"):
        size = getattr(recipe, name)
        if len(size) != 2 or min(size) < 32 or any(not float(s).is_integer() for s in size):
            raise ValueError(f"{name}: expected [height, width], both integers of at least 32, got {list(size)}")
    if not recipe.scales or min(recipe.scales) <= 0:
        raise ValueError(f"scales: expected positive factors, got {list(recipe.scales)}")
    low, high = (recipe.scale_range + (0.0, 0.0))[:2]
    if len(recipe.scale_range) != 2 or not 0 < low <= high:
        raise ValueError(f"scale_range: expected [low, high] with 0 < low <= high, got {list(recipe.scale_range)}")
    if list(recipe.milestones) != sorted(recipe.milestones):
        raise ValueError(f"milestones: expected increasing steps, got {list(recipe.milestones)}")
    unknown = sorted(set(recipe.loss_weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"loss_weights: unknown terms {unknown}; the network's are {list(LOSS_TERMS)}")
