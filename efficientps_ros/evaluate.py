"""Evaluation of a predictor on a dataset: panoptic quality and mean IoU.

Statistics accumulate image by image (`metrics`), so a whole Cityscapes val
split runs in the memory of one image. The numbers follow cityscapesscripts'
panoptic and pixel-level evaluations; predictions can be written in the
formats those read, to check a result with the official scripts.
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.cityscapes_layout import PredictionWriter
from .data.synthetic import Scene
from .metrics import ClassPQ, ConfusionMatrix, PanopticQuality
from .model.config import ClassInfo

# The ground truth of the images evaluated, saved beside the predictions.
GROUND_TRUTH_JSON = "ground_truth.json"
# Panoptic summary keys per group, as cityscapesscripts prints them.
_GROUPS = (("All", ""), ("Things", "_things"), ("Stuff", "_stuff"))
# The brightness factors an evaluation takes. At 0.05 a uint8 image keeps 14
# grey levels, and at 20 every channel above 12 saturates: beyond either end
# it is no longer exposure that is tested but a blank image.
MIN_BRIGHTNESS, MAX_BRIGHTNESS = 0.05, 20.0
# Images with unlisted segments that the summary names, of however many there are.
_UNLISTED_EXAMPLES = 10


def evaluate(
    predictor,
    dataset: Sequence[Scene],
    limit: int | None = None,
    progress: bool = True,
    brightness: float = 1.0,
    save_predictions: str | Path | None = None,
) -> dict:
    """PQ, SQ, RQ (all, things, stuff, per class) and mIoU of `predictor` on `dataset`.

    `predictor` has `config` and `predict(image) -> PanopticResult`; the
    dataset's class table, where it has one, must be the predictor's.
    `brightness` scales every input image first. With `save_predictions`,
    label-id PNGs and a COCO-panoptic PNG + JSON go to that folder, with the
    ground truth's JSON for the same images (`GROUND_TRUTH_JSON`).
    A dataset with `unlisted` (`PanopticDataset`) reports the segments its
    PNGs hold but its JSON does not list, scored as void: `unlisted_segments`.
    """
    classes = tuple(predictor.config.classes)
    check_same_classes(classes, getattr(dataset, "classes", classes))
    check_brightness(brightness)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(dataset) == 0:
        raise ValueError("nothing to evaluate: the dataset has no images")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    confusion = ConfusionMatrix(len(classes))
    quality = PanopticQuality(len(classes), frozenset(c.train_id for c in classes if c.is_thing))
    ids = getattr(dataset, "image_ids", None) or [f"scene_000000_{i:06d}" for i in range(count)]
    writer = PredictionWriter(save_predictions, classes, name="panoptic") if save_predictions else None
    for index in tqdm(range(count), desc="evaluate", unit="image", disable=not progress):
        scene = dataset[index]
        result = predictor.predict(scale_brightness(scene.image, brightness))
        confusion.update(scene.semantic, result.semantic)
        quality.update(scene.semantic, scene.instance, result.semantic, result.instance, scene.crowd)
        if writer:
            writer.write(ids[index], result.semantic, result.instance)
    if writer:
        writer.close()
        _write_ground_truth(dataset, count, Path(save_predictions))
    unlisted = getattr(dataset, "unlisted", {})
    found = {i: unlisted[i] for i in ids[:count] if i in unlisted}
    return summarize(quality, confusion, classes, images=count, brightness=brightness, unlisted=found)


def check_brightness(brightness: float) -> None:
    """Refuse a factor that is no finite number from MIN_BRIGHTNESS to MAX_BRIGHTNESS."""
    number = isinstance(brightness, numbers.Real) and not isinstance(brightness, bool)
    if not (number and MIN_BRIGHTNESS <= brightness <= MAX_BRIGHTNESS):  # NaN fails both comparisons
        raise ValueError(f"brightness must be a number from {MIN_BRIGHTNESS} to {MAX_BRIGHTNESS}, got {brightness!r}")


def _write_ground_truth(dataset: Sequence[Scene], count: int, out: Path) -> None:
    """The ground truth's JSON for just the images evaluated, beside their predictions.

    After a `limit`, cityscapesscripts would otherwise miss predictions for
    the rest of the split. Scenes without a JSON behind them get none.
    """
    cut = getattr(dataset, "panoptic_json", None)
    if cut is not None:
        (out / GROUND_TRUTH_JSON).write_text(json.dumps(cut(count), indent=1))


def scale_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """The uint8 image with every channel times `factor`, rounded and clipped."""
    if factor == 1.0:
        return image
    return np.clip(image.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def check_same_classes(model: Sequence[ClassInfo], dataset: Sequence[ClassInfo]) -> None:
    """Refuse a dataset whose class table is not the model's: the scores would compare unlike ids."""
    key = lambda c: (c.train_id, c.label_id, c.name, c.is_thing)  # noqa: E731
    if [key(c) for c in model] != [key(c) for c in dataset]:
        differ = [f"{a.name}/{b.name}" for a, b in zip(model, dataset) if key(a) != key(b)]
        raise ValueError(
            f"the model's class table ({len(model)} classes) differs from the dataset's ({len(dataset)}): "
            + (", ".join(differ[:5]) or "different lengths")
        )


def summarize(
    quality: PanopticQuality,
    confusion: ConfusionMatrix,
    classes: Sequence[ClassInfo],
    images: int,
    brightness: float = 1.0,
    unlisted: dict | None = None,
) -> dict:
    """One JSON-ready dict: the averages at the top level, per-class numbers and counts under `classes`.

    A score that is not defined is None (null in JSON): the averages over no
    class, the IoU of a class absent from truth and prediction, and PQ, SQ
    and RQ of a class without a true positive, false positive or false
    negative. `unlisted` maps image ids to the `(segments, pixels)` their
    ground truth made void for want of a `segments_info` entry.
    """
    summary: dict = {"images": images, "brightness": brightness, **quality.summary(), "miou": confusion.mean_iou()}
    ious = confusion.iou()
    hits, unions = confusion.intersection(), confusion.union()
    summary["classes"] = {}
    for c in classes:
        stats = quality.classes.get(c.train_id, ClassPQ())
        summary["classes"][c.name] = {
            "train_id": c.train_id, "label_id": c.label_id, "is_thing": c.is_thing,
            # ClassPQ says 0 for a class never seen, as cityscapesscripts' per-class table does.
            **{name: getattr(stats, name) if stats.seen else None for name in ("pq", "sq", "rq")},
            "tp": stats.tp, "fp": stats.fp, "fn": stats.fn, "iou_sum": stats.iou_sum,
            "iou": _finite_or_none(ious[c.train_id]),
            "pixels_intersection": int(hits[c.train_id]), "pixels_union": int(unions[c.train_id]),
        }
    summary["unlisted_segments"] = _unlisted_summary(unlisted or {})
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in summary.items()}


def _unlisted_summary(unlisted: dict) -> dict:
    """Totals of the segments made void for want of a `segments_info` entry, and the first images that have them."""
    return {
        "images": len(unlisted),
        "segments": sum(int(u[0]) for u in unlisted.values()),
        "pixels": sum(int(u[1]) for u in unlisted.values()),
        "examples": list(unlisted)[:_UNLISTED_EXAMPLES],
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined score is null."""
    value = float(value)
    return value if math.isfinite(value) else None


def format_table(summary: dict) -> str:
    """The summary as cityscapesscripts lays it out, in percent, with the counts behind each class."""
    lines = [f"{'class':14s} | {'PQ':>5s} {'SQ':>5s} {'RQ':>5s} | {'TP':>5s} {'FP':>5s} {'FN':>5s} | {'IoU':>5s}"]
    for name, c in summary["classes"].items():
        seen = c["tp"] + c["fp"] + c["fn"] > 0
        panoptic = f"{_pct(c['pq'])} {_pct(c['sq'])} {_pct(c['rq'])}" if seen else f"{'-':>5s} {'-':>5s} {'-':>5s}"
        lines.append(f"{name:14s} | {panoptic} | {c['tp']:5d} {c['fp']:5d} {c['fn']:5d} | {_pct(c['iou'])}")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'':14s} | {'PQ':>5s} {'SQ':>5s} {'RQ':>5s} | {'N':>5s}")
    for group, suffix in _GROUPS:
        row = " ".join(_pct(summary[name + suffix]) for name in ("pq", "sq", "rq"))
        lines.append(f"{group:14s} | {row} | {summary['n' + suffix]:5d}")
    lines.append(f"mIoU {_pct(summary['miou'])} over the classes that occur; {summary['images']} images")
    unlisted = summary.get("unlisted_segments") or {}
    if unlisted.get("pixels"):
        lines.append(
            f"warning: {_count(unlisted['segments'], 'segment')} ({_count(unlisted['pixels'], 'pixel')}) "
            f"in {unlisted['images']} of {summary['images']} ground-truth PNGs are missing from "
            f"segments_info and were scored as void (first: {', '.join(map(str, unlisted['examples'][:3]))})"
        )
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _pct(value: float | None) -> str:
    return f"{'-':>5s}" if value is None else f"{100 * value:5.1f}"
