"""The batches of a run: each step's batch for this process, from synthetic scenes or a dataset.

A step's batch depends on the step and the rank alone (samples from the
sampler, augmentation from a generator seeded with both), so it can be made
in a loader worker, in any order, and again after a resume.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.photometric import photometric_jitter
from ..data.synthetic import Scene, scene_seed, street_scene
from ..data.targets import Batch, collate
from ..model.config import EfficientPSConfig
from .recipe import Recipe
from .sampler import ShardedSampler


def train_seeds(seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The synthetic scene seeds of one step of one process, from the "train" stream of `seed`."""
    indices = ShardedSampler(None, batch_size, seed, rank, world_size).indices(step)
    return [scene_seed("train", seed, index) for index in indices]


def val_seeds(count: int) -> list[int]:
    """The fixed held-out seeds, from the "val" stream, which no training seed is in."""
    return [scene_seed("val", 0, index) for index in range(count)]


# What reading a missing or damaged .npz raises.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class ValidationScenes(Sequence):
    """The held-out synthetic scenes, each made when first read and kept in `cache` after.

    A scene at 1024x2048 takes seconds to make on one core and 12.6 MB to
    hold, and the authors' recipe validates on 500 of them every few hundred
    steps: made again each time, they would cost a GPU run more than the
    predictions; held, several GB. As uncompressed files in the run's folder
    they read back in milliseconds, one at a time. Without a cache, each read
    makes its scene.
    """

    def __init__(self, image_size: tuple[int, int], count: int, cache: Path | None = None):
        self.image_size = tuple(image_size)
        self.seeds = val_seeds(count)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> Scene:
        seed = self.seeds[index]
        if self.cache is None:
            return self._make(seed)
        path = self.cache / f"scene_{seed:016x}_{self.image_size[0]}x{self.image_size[1]}.npz"
        try:
            return read_scene(path)
        except _UNREADABLE:  # not made yet, or cut short by a run that stopped
            scene = self._make(seed)
            write_scene(scene, path)
            return scene

    def _make(self, seed: int) -> Scene:
        return street_scene(self.image_size[0], self.image_size[1], seed=seed)


def write_scene(scene: Scene, path: Path) -> None:
    """`scene` as an uncompressed .npz, written whole or not at all (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez(
            handle, image=scene.image, semantic=scene.semantic, instance=scene.instance,
            instance_classes=np.asarray(scene.instance_classes, np.int64), crowd=np.asarray(scene.crowd, bool),
        )
    os.replace(partial, path)


def read_scene(path: Path) -> Scene:
    """A scene `write_scene` wrote; its arrays are plain data, so nothing in the file can run."""
    with np.load(path, allow_pickle=False) as arrays:
        return Scene(
            image=arrays["image"], semantic=arrays["semantic"], instance=arrays["instance"],
            instance_classes=arrays["instance_classes"].tolist(), crowd=arrays["crowd"].tolist(),
        )


def step_size(image_size: tuple[int, int], scale: float, divisor: int) -> tuple[int, int]:
    """`image_size` times `scale`, rounded to multiples of `divisor` so that nothing is padded."""
    return tuple(max(divisor, round(side * scale / divisor) * divisor) for side in image_size)


def step_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    """The augmentation generator of one step of one process."""
    return np.random.default_rng([seed, step, rank])


def synthetic_batch(
    config: EfficientPSConfig, recipe: Recipe, seeds: Sequence[int], rng: np.random.Generator
) -> Batch:
    """Scenes of `seeds` at the image size times one of the recipe's scales, flipped and jittered."""
    size = step_size(recipe.image_size, float(rng.choice(recipe.scales)), config.size_divisor)
    scenes = [street_scene(size[0], size[1], seed=s) for s in seeds]
    return _finish(scenes, config, recipe, rng, recipe.flip_probability)


def dataset_batch(
    config: EfficientPSConfig, recipe: Recipe, scenes: Sequence[Scene], rng: np.random.Generator
) -> Batch:
    """Dataset scenes rescaled, cropped and flipped as the recipe says, then jittered."""
    from ..data.transforms import augment

    augmented = [
        augment(
            # The authors' base scale is their crop size (1024x2048 on Cityscapes).
            scene, rng, scale_range=recipe.scale_range, base_size=recipe.crop_size, crop_size=recipe.crop_size,
            flip_probability=recipe.flip_probability, size_divisor=config.size_divisor,
        )
        for scene in scenes
    ]
    return _finish(augmented, config, recipe, rng, flip_probability=0.0)


def _finish(
    scenes: list[Scene], config: EfficientPSConfig, recipe: Recipe, rng: np.random.Generator, flip_probability: float
) -> Batch:
    if recipe.photometric:
        for scene in scenes:
            scene.image = photometric_jitter(scene.image, rng)
    return collate(scenes, config, flip_probability=flip_probability, rng=rng)


class StepBatches(torch.utils.data.Dataset):
    """Item `step` is this process's batch of that step; a DataLoader prefetches them in workers."""

    def __init__(
        self,
        config: EfficientPSConfig,
        recipe: Recipe,
        sampler: ShardedSampler,
        dataset: Sequence[Scene] | None = None,
    ):
        self.config = config
        self.recipe = recipe
        self.sampler = sampler
        self.dataset = dataset

    def __len__(self) -> int:
        return self.recipe.steps

    def __getitem__(self, step: int) -> Batch:
        rng = step_rng(self.recipe.seed, step, self.sampler.rank)
        indices = self.sampler.indices(step)
        if self.dataset is None:
            seeds = [scene_seed("train", self.recipe.seed, i) for i in indices]
            return synthetic_batch(self.config, self.recipe, seeds, rng)
        return dataset_batch(self.config, self.recipe, [self.dataset[i] for i in indices], rng)


def step_loader(batches: StepBatches, start: int, workers: int) -> torch.utils.data.DataLoader:
    """The batches of steps `start`.. in order, made ahead by `workers` processes (0: in this one)."""
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, len(batches)),
        num_workers=workers,
        collate_fn=_as_is,
        prefetch_factor=2 if workers else None,
        # Its own generator: drawing the workers' seed from the global one would
        # shift the training stream between a run and its resumption.
        generator=torch.Generator().manual_seed(batches.recipe.seed),
    )


def _as_is(batch: Batch) -> Batch:
    return batch
