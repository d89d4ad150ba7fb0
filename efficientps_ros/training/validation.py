"""Validation during training: PQ and mIoU of the exported weights on held-out scenes.

The weights are validated as the node would run them: the inference
checkpoint is written, and a `Predictor` (folded norms, panoptic fusion)
reads it back, so the score belongs to the file that is kept. The numbers
are `evaluate`'s, the protocol of Cityscapes' own scripts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..data.synthetic import Scene
from ..evaluate import evaluate
from ..predictor import Predictor

# The numbers a validation row keeps, in the order they are logged.
KEYS = ("pq", "sq", "rq", "pq_things", "pq_stuff", "miou")


def validate(
    checkpoint: Path, scenes: Sequence[Scene], device: str, limit: int | None = None, progress: bool = False
) -> dict[str, float]:
    """PQ, SQ, RQ (all, things, stuff) and mIoU of `checkpoint` on the first `limit` of `scenes`."""
    predictor = Predictor(checkpoint=checkpoint, device=device)
    try:
        summary = evaluate(predictor, scenes, limit=limit, progress=progress)
    finally:
        predictor.close()
    # An undefined score (no class seen) comes back as None.
    return {key: math.nan if summary.get(key) is None else float(summary[key]) for key in KEYS}


def better(candidate: dict[str, float], best: dict[str, float] | None) -> bool:
    """True when `candidate` beats `best`: higher PQ, then higher mIoU; NaN never wins.

    A validation with no defined score (no class seen) says nothing about the
    weights, so it is no best even when there is none yet.
    """
    score = _score(candidate)
    if score == (-math.inf, -math.inf):
        return False
    return best is None or score > _score(best)


def _score(metrics: dict[str, float]) -> tuple[float, float]:
    return tuple(-math.inf if metrics.get(k) is None or math.isnan(metrics[k]) else metrics[k] for k in ("pq", "miou"))
