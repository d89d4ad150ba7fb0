"""Per-stage timing of one frame, and how far two runs' outputs agree.

A frame's stages end in marks. On CUDA each mark is an event recorded on the
stream, and the frame waits for the device once, after its last mark; on the
CPU each mark reads the clock. Either way the marks change nothing the model
computes.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from .result import PanopticResult

# The order of a frame, from the camera message to the published outputs.
STAGES = (
    "message to array",
    "upload and normalise",
    "backbone + FPN",
    "semantic head",
    "RPN",
    "RoI heads",
    "fusion",
    "maps to host",
    "arrays to messages",
    "publish",
)
# What the node does in ROS around the predictor; absent where rclpy is not importable.
ROS_STAGES = ("message to array", "arrays to messages", "publish")
# The predictor's part, from the uint8 arrays to the maps on the host: what the baseline runs too.
MODEL_STAGES = STAGES[1:8]
# Everything but the network and the fusion: the node's own overhead.
OVERHEAD_STAGES = ("message to array", "upload and normalise", "maps to host", "arrays to messages", "publish")
# What the node's output thread does, while its inference thread runs the stages before.
OUTPUT_THREAD_STAGES = ("arrays to messages", "publish")


class StageClock:
    """Marks the end of each stage of a frame; `stop` gives milliseconds per stage."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []

    def start(self) -> None:
        self._marks = [("", self._now())]

    def mark(self, stage: str) -> None:
        self._marks.append((stage, self._now()))

    def stop(self) -> dict[str, float]:
        """Milliseconds of each stage marked since `start`; a stage marked twice adds up."""
        if self._cuda:
            # The one wait of the frame: every event before it has then completed.
            self._marks[-1][1].synchronize()
        durations: dict[str, float] = {}
        for (_, before), (stage, after) in zip(self._marks, self._marks[1:]):
            durations[stage] = durations.get(stage, 0.0) + self._elapsed_ms(before, after)
        return durations

    def _now(self):
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _elapsed_ms(self, before, after) -> float:
        return before.elapsed_time(after) if self._cuda else (after - before) * 1e3


@contextmanager
def rpn_marked(model: torch.nn.Module, clock: StageClock) -> Iterator[None]:
    """Mark the end of the RPN where the box head starts, while the block runs.

    The instance head runs the RPN and the RoI heads in one call, and its
    box head is the first module after the proposals: the RPN's time also
    holds the RoIAlign of the box head's input, which runs just before it.
    """
    handle = model.instance_head.bbox_head.register_forward_pre_hook(lambda _module, _inputs: clock.mark("RPN"))
    try:
        yield
    finally:
        handle.remove()


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and 95th percentile of milliseconds."""
    values = np.asarray(samples, dtype=np.float64)
    return {"median_ms": float(np.median(values)), "p95_ms": float(np.percentile(values, 95))}


def agreement(results: Sequence[PanopticResult], references: Sequence[PanopticResult]) -> dict[str, float | int]:
    """How far `results` match `references` of the same images.

    Semantic agreement in % of pixels, panoptic pixels that differ (see
    `panoptic_differ`), and detections matched: same class, box IoU of at
    least 0.5, one to one.
    """
    pixels = sum(r.semantic.size for r in references)
    same = sum(int((a.semantic == b.semantic).sum()) for a, b in zip(results, references))
    differ = sum(panoptic_differ(a, b) for a, b in zip(results, references))
    matched = sum(len(_matches(a, b)) for a, b in zip(results, references))
    return {
        "semantic_agreement": 100.0 * same / pixels,
        "panoptic_pixels_differ": differ,
        "detections_matched": matched,
        "detections": sum(len(r.instances) for r in results),
        "detections_reference": sum(len(r.instances) for r in references),
    }


def panoptic_differ(result: PanopticResult, reference: PanopticResult) -> int:
    """Pixels whose class or instance differs, the result's instances taking the ids of those they match.

    Instance ids follow the detection scores, so two cars both scored 1.0
    swap ids when rounding reorders them; compared id for id, every pixel of
    both would differ, though not one pixel moved. An unmatched instance
    keeps an id that no reference instance has.
    """
    unmatched = len(reference.instances) + 1
    renumber = np.arange(unmatched, unmatched + len(result.instances) + 1)
    renumber[0] = 0
    for mine, theirs in _matches(result, reference):
        renumber[mine] = theirs
    moved = renumber[result.instance] != reference.instance
    return int((moved | (result.semantic != reference.semantic)).sum())


def _matches(result: PanopticResult, reference: PanopticResult) -> list[tuple[int, int]]:
    """(result id, reference id) of a greedy one-to-one matching, the reference's instances by decreasing score."""
    free = list(result.instances)
    pairs = []
    for wanted in sorted(reference.instances, key=lambda i: -i.score):
        candidates = [(box_iou(wanted.box, c.box), k) for k, c in enumerate(free) if c.class_id == wanted.class_id]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= 0.5:
            pairs.append((free.pop(best[1]).id, wanted.id))
    return pairs


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive far edges."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
