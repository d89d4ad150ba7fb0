"""A synthetic frame with its exact panoptic ground truth, and the seeds that name frames."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    semantic: np.ndarray  # HxW uint8 train ids, 255 void
    instance: np.ndarray  # HxW uint16, 0 = stuff, k = instance k
    instance_classes: list[int]  # train id of instance k at index k - 1
    # True where instance k is a crowd region (a group labelled as one); empty = no crowd.
    crowd: list[bool] = field(default_factory=list)


# Training scenes get the top bit of their 64-bit seed set, every other split
# has it clear, so no evaluation scene can ever be a training scene.
_TRAIN_BIT = 1 << 63


def scene_seed(split: str, seed: int, index: int) -> int:
    """The generator seed of scene `index` of stream `seed` in `split`.

    Each (split, seed) pair is its own stream: the split name is part of the
    entropy, and "train" streams are disjoint from all others by construction.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"scene seeds need a non-negative seed and index, got seed {seed}, index {index}")
    name = list(split.encode())
    words = np.random.SeedSequence([len(name), *name, seed, index]).generate_state(2, np.uint64)
    value = int(words[0]) & (_TRAIN_BIT - 1)
    return value | _TRAIN_BIT if split == "train" else value
