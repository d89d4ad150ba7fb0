"""Segmentation quality: mean IoU from a confusion matrix, and panoptic quality.

Both accumulate over images and report at the end. Maps are numpy arrays of
train ids with 255 as void; void ground-truth pixels are not scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model.config import VOID_TRAIN_ID

# A segment key is class * _KEY_BASE + instance id; instance ids fit below it.
_KEY_BASE = 1 << 16
# Standard PQ matching threshold: with IoU above one half, a match is unique.
_MATCH_IOU = 0.5


class ConfusionMatrix:
    """Pixel counts of (ground truth, prediction) pairs over `num_classes` classes."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        # True pixels predicted as void (or an unknown class), per true class.
        self.missed = np.zeros(num_classes, np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one image; void ground truth is skipped, a void prediction counts as wrong."""
        if truth.shape != prediction.shape:
            raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
        valid = truth != VOID_TRAIN_ID
        t = truth[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        # A void prediction is a miss for its true class and a hit for no class.
        scored = p < self.num_classes
        self.matrix += np.bincount(
            t[scored] * self.num_classes + p[scored], minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        self.missed += np.bincount(t[~scored], minlength=self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        hits = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) + self.missed - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / np.maximum(union, 1), np.nan)

    def mean_iou(self) -> float:
        """Mean IoU over the classes that occurred."""
        values = self.iou()
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclass
class ClassPQ:
    """Matching counts of one class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / denominator if denominator else 0.0

    @property
    def pq(self) -> float:
        return self.sq * self.rq


@dataclass
class PanopticQuality:
    """PQ, SQ and RQ by the standard definition (Kirillov et al., 2019).

    A segment is a stuff class region or one instance of a thing class. A
    predicted and a true segment of the same class match when their IoU is
    above 0.5; the predicted pixels on void ground truth leave the union, and
    a predicted segment that is mostly void is neither a match nor a false
    positive. Thing pixels without an instance id are treated as void.
    """

    num_classes: int
    thing_ids: frozenset[int]
    classes: dict[int, ClassPQ] = field(default_factory=dict)

    def update(
        self,
        true_semantic: np.ndarray,
        true_instance: np.ndarray,
        pred_semantic: np.ndarray,
        pred_instance: np.ndarray,
    ) -> None:
        """Add one image's ground truth and prediction (semantic train ids, instance ids)."""
        truth = self._segments(true_semantic, true_instance)
        prediction = self._segments(pred_semantic, pred_instance)
        void = _KEY_BASE * VOID_TRAIN_ID
        pair_keys, pair_counts = np.unique(truth.astype(np.int64) * (1 << 32) + prediction, return_counts=True)
        overlaps = dict(zip(zip((pair_keys >> 32).tolist(), (pair_keys & 0xFFFFFFFF).tolist()), pair_counts.tolist()))
        true_area = _areas(truth)
        pred_area = _areas(prediction)
        matched_true, matched_pred = set(), set()
        for (t, p), inter in overlaps.items():
            if t == void or p == void or t // _KEY_BASE != p // _KEY_BASE:
                continue
            union = true_area[t] + pred_area[p] - inter - overlaps.get((void, p), 0)
            iou = inter / union
            if iou > _MATCH_IOU:
                stats = self._stats(t // _KEY_BASE)
                stats.tp += 1
                stats.iou_sum += iou
                matched_true.add(t)
                matched_pred.add(p)
        for t in true_area:
            if t != void and t not in matched_true:
                self._stats(t // _KEY_BASE).fn += 1
        for p, area in pred_area.items():
            if p == void or p in matched_pred:
                continue
            if overlaps.get((void, p), 0) > _MATCH_IOU * area:
                continue
            self._stats(p // _KEY_BASE).fp += 1

    def summary(self) -> dict[str, float]:
        """PQ, SQ, RQ averaged over the classes seen, and PQ over things and over stuff."""
        seen = {c: s for c, s in self.classes.items() if s.tp + s.fp + s.fn}
        things = [s for c, s in seen.items() if c in self.thing_ids]
        stuff = [s for c, s in seen.items() if c not in self.thing_ids]
        return {
            "pq": _mean([s.pq for s in seen.values()]),
            "sq": _mean([s.sq for s in seen.values()]),
            "rq": _mean([s.rq for s in seen.values()]),
            "pq_things": _mean([s.pq for s in things]),
            "pq_stuff": _mean([s.pq for s in stuff]),
        }

    def _stats(self, class_id: int) -> ClassPQ:
        return self.classes.setdefault(class_id, ClassPQ())

    def _segments(self, semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
        """HxW segment keys: class * base + instance for things, class * base for stuff."""
        if semantic.shape != instance.shape:
            raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ in shape")
        classes = semantic.astype(np.int64)
        classes = np.where(classes < self.num_classes, classes, VOID_TRAIN_ID)
        is_thing = np.isin(classes, list(self.thing_ids))
        ids = np.where(is_thing, instance.astype(np.int64), 0)
        classes = np.where(is_thing & (ids == 0), VOID_TRAIN_ID, classes)
        return np.where(classes == VOID_TRAIN_ID, VOID_TRAIN_ID * _KEY_BASE, classes * _KEY_BASE + ids)


def _areas(segments: np.ndarray) -> dict[int, int]:
    keys, counts = np.unique(segments, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist()))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
