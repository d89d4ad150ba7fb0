"""Segmentation quality: mean IoU from a confusion matrix, and panoptic quality.

Both accumulate over images and report at the end. Maps are numpy arrays of
train ids with 255 as void; void ground-truth pixels are not scored. Any id
outside 0..num_classes-1 counts as void, in the truth and in the prediction,
in both metrics alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# Segment keys hold (class + 1) * _KEY_BASE + instance id; uint16 ids fit below _CROWD.
_KEY_BASE = 1 << 17
# The instance id of a class's crowd region in the truth's keys.
_CROWD = 1 << 16
# Standard PQ matching threshold: with IoU above one half, a match is unique.
_MATCH_IOU = 0.5
# The key of void; every class's keys lie above it.
_VOID = 0


class ConfusionMatrix:
    """Pixel counts of (ground truth, prediction) pairs over `num_classes` classes."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        # True pixels predicted as void (or an unknown class), per true class.
        self.missed = np.zeros(num_classes, np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one image; void ground truth is skipped, a void prediction counts as wrong.

        Void is 255 and any other id that names no class, as `PanopticQuality`
        has it.
        """
        if truth.shape != prediction.shape:
            raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
        valid = self._is_class(truth)
        t = truth[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        # A void prediction is a miss for its true class and a hit for no class.
        scored = self._is_class(p)
        self.matrix += np.bincount(
            t[scored] * self.num_classes + p[scored], minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        self.missed += np.bincount(t[~scored], minlength=self.num_classes)

    def _is_class(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & (ids < self.num_classes)

    def intersection(self) -> np.ndarray:
        """Per class, the pixels both true and predicted."""
        return np.diag(self.matrix).copy()

    def union(self) -> np.ndarray:
        """Per class, the pixels true or predicted.

        Void truth never entered the counts, so a prediction there is in no
        union; a true pixel predicted as void is in its true class's.
        """
        true = self.matrix.sum(1) + self.missed
        predicted = self.matrix.sum(0)
        return true + predicted - self.intersection()

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        hits, union = self.intersection().astype(np.float64), self.union()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / np.maximum(union, 1), np.nan)

    def mean_iou(self) -> float:
        """Mean IoU over the classes that occurred."""
        values = self.iou()
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@dataclass
class ClassPQ:
    """Matching counts of one class; `iou_sum` adds the IoU of every match."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    @property
    def seen(self) -> bool:
        return self.tp + self.fp + self.fn > 0

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        return self.tp / self._denominator if self.seen else 0.0

    @property
    def pq(self) -> float:
        return self.iou_sum / self._denominator if self.seen else 0.0

    @property
    def _denominator(self) -> float:
        return self.tp + 0.5 * self.fp + 0.5 * self.fn


@dataclass
class PanopticQuality:
    """PQ, SQ and RQ by the COCO panoptic protocol, as Cityscapes evaluates it.

    A segment is one instance of a class; stuff without instance ids is one
    segment per class, and a predicted stuff class always is.
    Ground truth thing pixels without an instance id, and segments flagged
    as crowd, stuff or thing, form one crowd region per class. A predicted
    and a true segment of the same class match when their IoU is above 0.5,
    where only the predicted pixels on void leave the union; crowd regions
    never match.
    An unmatched prediction is no false positive when more than half of it
    lies on void or on the crowd region of its own class. Predicted thing
    pixels without an instance id are one ordinary segment of their class.
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
        true_crowd: Sequence[bool] = (),
    ) -> None:
        """Add one image (train ids, instance ids); `true_crowd[k - 1]` marks instance k a crowd."""
        if true_semantic.shape != pred_semantic.shape:
            raise ValueError(f"truth {true_semantic.shape} and prediction {pred_semantic.shape} differ in shape")
        truth = self._segments(true_semantic, true_instance, true_crowd)
        prediction = self._segments(pred_semantic, pred_instance)
        overlaps = _overlaps(truth, prediction)
        true_area, pred_area = _areas(overlaps)
        matched_true, matched_pred = set(), set()
        for (t, p), inter in overlaps.items():
            if t == _VOID or p == _VOID or _is_crowd(t) or _class(t) != _class(p):
                continue
            iou = inter / (true_area[t] + pred_area[p] - inter - overlaps.get((_VOID, p), 0))
            if iou > _MATCH_IOU:
                stats = self._stats(_class(t))
                stats.tp += 1
                stats.iou_sum += iou
                matched_true.add(t)
                matched_pred.add(p)
        for t in true_area:
            if t != _VOID and not _is_crowd(t) and t not in matched_true:
                self._stats(_class(t)).fn += 1
        for p, area in pred_area.items():
            if p == _VOID or p in matched_pred:
                continue
            ignored = overlaps.get((_VOID, p), 0) + overlaps.get((_crowd_key(_class(p)), p), 0)
            if ignored / area <= _MATCH_IOU:
                self._stats(_class(p)).fp += 1

    def summary(self) -> dict[str, float]:
        """PQ, SQ, RQ and the class count n over all classes seen, things and stuff.

        A class counts once it has a true positive, a false positive or a
        false negative; with no such class the averages are NaN.
        """
        seen = {c: s for c, s in self.classes.items() if s.seen}
        groups = {
            "": list(seen.values()),
            "_things": [s for c, s in seen.items() if c in self.thing_ids],
            "_stuff": [s for c, s in seen.items() if c not in self.thing_ids],
        }
        out: dict[str, float] = {}
        for suffix, stats in groups.items():
            for name in ("pq", "sq", "rq"):
                out[name + suffix] = _mean([getattr(s, name) for s in stats])
            out["n" + suffix] = len(stats)
        return out

    def _stats(self, class_id: int) -> ClassPQ:
        return self.classes.setdefault(class_id, ClassPQ())

    def _segments(self, semantic: np.ndarray, instance: np.ndarray, crowd: Sequence[bool] | None = None) -> np.ndarray:
        """HxW segment keys, `_VOID` for void: (class + 1) * base + instance id.

        With `crowd` given (ground truth), thing pixels without an instance
        and flagged instances of any class form their class's crowd region,
        and stuff keeps its instance ids: COCO-panoptic ground truth may split
        a stuff class into segments, each matched on its own, and flag any
        segment a crowd. Without it (prediction), stuff is one segment per
        class, as the written predictions hold it, and thing pixels with id 0
        are an ordinary segment.
        """
        if semantic.shape != instance.shape:
            raise ValueError(f"semantic {semantic.shape} and instance {instance.shape} differ in shape")
        classes = semantic.astype(np.int64)
        void = (classes < 0) | (classes >= self.num_classes)
        things = np.isin(classes, list(self.thing_ids))
        ids = instance.astype(np.int64)
        if crowd is None:
            ids = np.where(things, ids, 0)
        else:
            crowd_ids = [k + 1 for k, is_crowd in enumerate(crowd) if is_crowd]
            ids = np.where(np.isin(ids, crowd_ids) | (things & (ids == 0)), _CROWD, ids)
        return np.where(void, _VOID, (classes + 1) * _KEY_BASE + ids)



def _class(key: int) -> int:
    return key // _KEY_BASE - 1


def _crowd_key(class_id: int) -> int:
    return (class_id + 1) * _KEY_BASE + _CROWD


def _is_crowd(key: int) -> bool:
    return key % _KEY_BASE == _CROWD


def _overlaps(truth: np.ndarray, prediction: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixel counts of every (true segment, predicted segment) pair that meets."""
    span = int(prediction.max(initial=0)) + 1
    keys, counts = np.unique(truth.ravel() * span + prediction.ravel(), return_counts=True)
    return dict(zip(zip((keys // span).tolist(), (keys % span).tolist()), counts.tolist()))


def _areas(overlaps: dict[tuple[int, int], int]) -> tuple[dict[int, int], dict[int, int]]:
    """Pixel counts of every true and every predicted segment, summed from their overlaps."""
    true_area: dict[int, int] = {}
    pred_area: dict[int, int] = {}
    for (t, p), count in overlaps.items():
        true_area[t] = true_area.get(t, 0) + count
        pred_area[p] = pred_area.get(p, 0) + count
    return true_area, pred_area


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
