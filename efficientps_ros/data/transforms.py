"""Training augmentations on `Scene`s, as the authors' Cityscapes config sets them.

Their pipeline resizes each image by a random ratio of 0.5 to 2.0 of its
base scale (2048x1024 there), keeping the aspect ratio, takes a random crop
of the base size (1024x2048), mirrors half of the images, and pads to a
multiple of 32. Padding happens when scenes are batched (`targets.collate`),
after normalisation, as theirs does; the rest is here, with the photometric
jitter as an option.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from .photometric import photometric_jitter
from .synthetic import Scene


def augment(
    scene: Scene,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.5, 2.0),
    base_size: tuple[int, int] | None = None,
    crop_size: tuple[int, int] | None = None,
    flip_probability: float = 0.5,
    size_divisor: int | None = None,
    photometric: bool = False,
) -> Scene:
    """A new scene: rescaled, cropped, maybe mirrored and maybe jittered in colour.

    A random ratio from `scale_range` times the scale that fits the image
    into `base_size` (h, w) sets its size; then a `crop_size` window is
    taken. None for either means the scene's own size, so the defaults suit
    any image size. With `size_divisor` the crop's sides are multiples of
    it where the image allows; a smaller image is padded when batched.
    """
    _check(scale_range, crop_size, flip_probability, size_divisor)
    height, width = scene.semantic.shape
    base = base_size or (height, width)
    crop = crop_size or base
    if size_divisor:
        crop = tuple(max(size_divisor, side - side % size_divisor) for side in crop)
    ratio = rng.uniform(*scale_range)
    scene = rescale(scene, ratio * fit_scale((height, width), base))
    scene = random_crop(scene, crop, rng)
    if rng.random() < flip_probability:
        scene = hflip(scene)
    if photometric:
        scene = replace(scene, image=photometric_jitter(scene.image, rng))
    # Crops are views, and decoded images are read-only: torch.from_numpy warns on those.
    return replace(scene, image=_writable(scene.image), semantic=_writable(scene.semantic),
                   instance=_writable(scene.instance))


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


def _check(scale_range, crop_size, flip_probability, size_divisor) -> None:
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale range must satisfy 0 < low <= high, got {tuple(scale_range)}")
    if not 0 <= flip_probability <= 1:
        raise ValueError(f"flip probability must lie in [0, 1], got {flip_probability}")
    if crop_size is not None and min(crop_size) < 1:
        raise ValueError(f"crop size must be positive, got {tuple(crop_size)}")
    if size_divisor is not None and size_divisor < 1:
        raise ValueError(f"size divisor must be positive, got {size_divisor}")


def fit_scale(size: tuple[int, int], target: tuple[int, int]) -> float:
    """The factor that fits `size` into `target`, long side to long side, aspect kept."""
    return min(max(target) / max(size), min(target) / min(size))


def rescale(scene: Scene, factor: float) -> Scene:
    """Image bilinear, label maps nearest, to `factor` times the size (at least one pixel)."""
    height, width = scene.semantic.shape
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    if size == (height, width):
        return scene
    image = np.asarray(Image.fromarray(scene.image).resize(size[::-1], Image.BILINEAR))
    rows = _nearest(height, size[0])
    cols = _nearest(width, size[1])
    return replace(scene, image=image, semantic=scene.semantic[rows][:, cols], instance=scene.instance[rows][:, cols])


def _nearest(old: int, new: int) -> np.ndarray:
    """Source index of each target pixel, sampling at pixel centres."""
    return np.minimum(((np.arange(new) + 0.5) * old / new).astype(np.int64), old - 1)


def random_crop(scene: Scene, size: tuple[int, int], rng: np.random.Generator) -> Scene:
    """A `size` (h, w) window at a random place; a side shorter than the crop is kept whole.

    Instances cut away entirely keep their ids and have no pixels, which the
    training targets leave out.
    """
    height, width = scene.semantic.shape
    top = int(rng.integers(0, max(height - size[0], 0) + 1))
    left = int(rng.integers(0, max(width - size[1], 0) + 1))
    window = np.s_[top : top + size[0], left : left + size[1]]
    return replace(scene, image=scene.image[window], semantic=scene.semantic[window], instance=scene.instance[window])


def hflip(scene: Scene) -> Scene:
    """The scene mirrored left to right."""
    return replace(
        scene,
        image=scene.image[:, ::-1].copy(),
        semantic=scene.semantic[:, ::-1].copy(),
        instance=scene.instance[:, ::-1].copy(),
    )
