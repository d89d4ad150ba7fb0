"""Which samples each process trains on at each step: a seeded, sharded order.

The order is a pure function of the step, so a resumed run picks up exactly
where the interrupted one stopped, with nothing to store but the step. Each
epoch of a dataset is its own seeded permutation; the global batch of a step
is consecutive positions of that endless sequence, and rank r takes the
r-th slice of it, so the processes never share a sample within a step.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class ShardedSampler:
    """Sample indices for one process; `length` None means an endless stream (synthetic scenes)."""

    length: int | None
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.length is not None and self.length < 1:
            raise ValueError("the training dataset is empty")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def position(self, step: int) -> int:
        """Where in the sequence of samples this rank's part of `step` starts."""
        return step * self.global_batch + self.rank * self.batch_size

    def indices(self, step: int) -> list[int]:
        """This rank's sample indices for `step`."""
        start = self.position(step)
        positions = range(start, start + self.batch_size)
        if self.length is None:
            return list(positions)
        return [int(_permutation(self.seed, p // self.length, self.length)[p % self.length]) for p in positions]

    def state(self, step: int) -> dict[str, int | None]:
        """Plain numbers saying where the sequence stands before `step`."""
        first = step * self.global_batch
        epoch, offset = (None, first) if self.length is None else divmod(first, self.length)
        return {"step": step, "epoch": epoch, "offset": offset, "global_batch": self.global_batch, "seed": self.seed}


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, length: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(length)
