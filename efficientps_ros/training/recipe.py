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

from ..model.config import MAX_CONFIG_CHARS, MAX_SIZE_PIXELS, parse_document, parse_size, read_text_file

SCHEDULES = ("cosine", "step")
AMP_MODES = ("off", "bf16", "fp16")
LOSS_TERMS = ("loss_semantic", "loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box", "loss_mask")

# Bounds past which a value is a typo or a crafted file rather than a run.
# A billion steps is decades at a step a second; the step loader's length must fit an index.
MAX_STEPS = 10**9
# Images per process and step: the authors' recipe has 1 of 1024x2048, the CPU one 2 of 256x512.
MAX_BATCH_SIZE = 256
# Loader processes: each is a whole Python process with its batches in flight; more than a
# large machine's cores only competes with the step for them.
MAX_WORKERS = 64
# COCO's val split, the largest common one, has 5,000 images.
MAX_VAL_COUNT = 5000
# Every validation's scores stay in the run's training checkpoints (state.MAX_INFO_CHARS).
MAX_VALIDATIONS = 100_000
# torch.manual_seed takes the seed plus the rank in 64 bits; numpy's seeds are 32-bit words.
MAX_SEED = 2**32 - 1
# SGD on this network diverges well below these; beyond them a value is a typo.
MAX_LR = 10.0
MAX_LOSS_WEIGHT = 100.0
# At 1 the velocity never decays and SGD with momentum diverges.
MAX_MOMENTUM = 0.999
MAX_WEIGHT_DECAY = 1.0
# A recipe is a page of YAML; UTF-8 takes at most 4 bytes a character.
MAX_RECIPE_BYTES = 4 * MAX_CONFIG_CHARS

# (least, most) of each integer field.
_INTEGER_RANGES = {
    "steps": (1, MAX_STEPS),
    "batch_size": (1, MAX_BATCH_SIZE),
    "warmup": (0, MAX_STEPS),
    "max_skipped_steps": (0, MAX_STEPS),
    "seed": (0, MAX_SEED),
    "log_every": (1, MAX_STEPS),
    "val_every": (1, MAX_STEPS),
    "val_count": (1, MAX_VAL_COUNT),
    "checkpoint_every": (1, MAX_STEPS),
    "keep_checkpoints": (0, MAX_STEPS),
    "workers": (0, MAX_WORKERS),
}
# (least, most) of each real-valued field; NaN and infinity are never in range.
_REAL_RANGES = {
    "flip_probability": (0.0, 1.0),
    "lr": (0.0, MAX_LR),
    "momentum": (0.0, MAX_MOMENTUM),
    "weight_decay": (0.0, MAX_WEIGHT_DECAY),
    "warmup_ratio": (0.0, 1.0),
    # A drop of the rate at each milestone: 1 keeps it, 0 stops learning.
    "gamma": (0.0, 1.0),
}


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
        return dataclasses.replace(self, **{k: _coerce(k, v, k) for k, v in given.items()})


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from YAML; keys left out keep the defaults, unknown keys are refused."""
    path = Path(path)
    where = f"recipe {path}"
    # read_text_file tells a missing file from a folder or a device.
    data = parse_document(read_text_file(path, MAX_RECIPE_BYTES, where), where, "yaml")
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    data.pop("notes", None)  # free text about the recipe's source
    try:
        return recipe_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    # Keys are shown as text: YAML also has number keys, which do not sort among strings.
    unknown = sorted(str(k) for k in data if k not in fields)
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


def validations(recipe: Recipe, after: int = 0) -> int:
    """How many times a run validates after step `after`: every `val_every` steps, and at its last."""
    return recipe.steps // recipe.val_every - after // recipe.val_every + bool(recipe.steps % recipe.val_every)


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
    try:
        float(value)  # YAML integers have any number of digits; every field is used as a float somewhere
    except OverflowError:
        raise ValueError(f"{where}: expected a number, got an integer of {len(str(value))} digits") from None
    return value


def _check(recipe: Recipe) -> None:
    """Every field's type and range; ValueError names the first bad field and what it allows."""
    for name, (low, high) in _INTEGER_RANGES.items():
        _check_range(name, getattr(recipe, name), low, high, integer=True)
    for name, (low, high) in _REAL_RANGES.items():
        _check_range(name, getattr(recipe, name), low, high)
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {recipe.schedule!r}")
    if recipe.amp not in AMP_MODES:
        raise ValueError(f"amp: expected one of {AMP_MODES}, got {recipe.amp!r}")
    if not (math.isfinite(recipe.clip) and recipe.clip > 0):
        raise ValueError(f"clip: expected a finite gradient norm above 0, got {recipe.clip}")
    for name in ("image_size", "crop_size"):
        _check_size(name, getattr(recipe, name))
    _check_scales(recipe)
    _check_scale_range(recipe)
    _check_milestones(recipe.milestones)
    _check_loss_weights(recipe.loss_weights)
    if validations(recipe) > MAX_VALIDATIONS:
        raise ValueError(
            f"val_every: {recipe.val_every:,} over {recipe.steps:,} steps validates {validations(recipe):,} times; "
            f"allowed: at most {MAX_VALIDATIONS:,}, whose scores every training checkpoint keeps"
        )


def _check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    """Refuse a value outside low..high; NaN compares false, so it is refused too."""
    # The type first: a field given to the constructor directly has not been through _coerce.
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} from {low:,} to {high:,}, got {value!r}")


def _check_size(name: str, size: tuple) -> None:
    """[height, width] within the limits of a size given on the command line (see parse_size)."""
    if len(size) != 2 or any(not math.isfinite(s) or not float(s).is_integer() for s in size) or min(size) < 32:
        raise ValueError(f"{name}: expected [height, width], both integers of at least 32, got {list(size)}")
    try:
        parse_size(f"{int(size[0])}x{int(size[1])}")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _check_scales(recipe: Recipe) -> None:
    """Positive factors whose largest keeps the synthetic scenes within the image size limit."""
    scales = recipe.scales
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales: expected finite factors above 0, got {list(scales)}")
    height, width = (side * max(scales) for side in recipe.image_size)
    if height * width > MAX_SIZE_PIXELS:
        raise ValueError(
            f"scales: {max(scales)} times image_size {recipe.image_size[0]}x{recipe.image_size[1]} makes "
            f"{height:.0f}x{width:.0f} scenes, {height * width:,.0f} pixels; "
            f"allowed: at most {MAX_SIZE_PIXELS:,} (8192x8192)"
        )


def _check_scale_range(recipe: Recipe) -> None:
    """[low, high] with the dataset images, resized by up to `high` around crop_size, within the limit."""
    shown = list(recipe.scale_range)
    if len(recipe.scale_range) != 2 or any(not math.isfinite(s) for s in recipe.scale_range):
        raise ValueError(f"scale_range: expected [low, high], two finite numbers, got {shown}")
    low, high = recipe.scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range: expected [low, high] with 0 < low <= high, got {shown}")
    pixels = recipe.crop_size[0] * recipe.crop_size[1] * high * high
    if pixels > MAX_SIZE_PIXELS:
        raise ValueError(
            f"scale_range: images resized by up to {high} around crop_size {recipe.crop_size[0]}x{recipe.crop_size[1]} "
            f"reach {pixels:,.0f} pixels; allowed: at most {MAX_SIZE_PIXELS:,} (8192x8192)"
        )


def _check_milestones(milestones: tuple) -> None:
    if any(not math.isfinite(m) or not float(m).is_integer() or not 1 <= m <= MAX_STEPS for m in milestones):
        raise ValueError(f"milestones: expected steps from 1 to {MAX_STEPS}, got {list(milestones)}")
    if list(milestones) != sorted(milestones):
        raise ValueError(f"milestones: expected increasing steps, got {list(milestones)}")


def _check_loss_weights(weights: dict[str, float]) -> None:
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"loss_weights: unknown terms {unknown}; the network's are {list(LOSS_TERMS)}")
    for term, weight in weights.items():
        _check_range(f"loss_weights.{term}", weight, 0.0, MAX_LOSS_WEIGHT)
