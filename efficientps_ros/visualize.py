"""Panoptic colouring and overlays: numpy only, no per-pixel Python.

Every pixel gets its colour from a lookup table indexed by one integer,
instance id x 256 + train id: two vectorised integer operations on the maps,
and one gather. Block 0 of the table is the class palette; block k holds the
k-th instance's shade in all of its 256 slots. Instances of one class get
distinct shades of the class colour, so neighbouring cars stay apart.
Blending uses integer weights out of 256, which keeps the whole overlay in
uint8/uint16 arithmetic.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from .model.config import ClassInfo, EfficientPSConfig
from .result import PanopticResult

# Palette slots per instance id: slot k * PALETTE_BLOCK + t colours train id t of instance k.
BLOCK_BITS = 8
PALETTE_BLOCK = 1 << BLOCK_BITS
# Blend weights are integers out of this.
WEIGHT_UNIT = 256
# How far an instance's shade may move from its class colour, per channel.
_SHADE_SPREAD = 40
# Rows per band of the overlay: at 2048 columns a band's scratch arrays (2.5 MB)
# stay in the CPU cache, and a band is work enough to be worth a thread.
_BAND_ROWS = 128
# Painting threads at most: the overlay shares the machine with the model's own threads.
_MAX_THREADS = 4


def class_palette(classes: Sequence[ClassInfo]) -> np.ndarray:
    """256x3 uint8: the colour of each train id; void and unused ids are black."""
    palette = np.zeros((PALETTE_BLOCK, 3), np.uint8)
    for info in classes:
        palette[info.train_id] = info.color
    return palette


def instance_shades(base_colors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Nx3 uint8: a deterministic shade of each base colour, different for each id."""
    # Three coprime multipliers spread consecutive ids over distinct offsets.
    steps = np.asarray([37, 71, 113], np.int64)
    offsets = (ids.astype(np.int64)[:, None] * steps) % (2 * _SHADE_SPREAD + 1) - _SHADE_SPREAD
    return np.clip(base_colors.astype(np.int64) + offsets, 0, 255).astype(np.uint8)


def panoptic_palette(result: PanopticResult, palette: np.ndarray) -> np.ndarray:
    """((n + 1) * 256)x3 uint8: the class palette, then 256 copies of each instance's shade."""
    count = len(result.instances)
    class_ids = np.asarray([inst.class_id for inst in result.instances], np.int64)
    shades = instance_shades(palette[class_ids], np.arange(1, count + 1))
    return np.concatenate([palette, np.repeat(shades, PALETTE_BLOCK, axis=0)])


def panoptic_index(result: PanopticResult) -> np.ndarray:
    """HxW index into `panoptic_palette`: instance id x 256 + train id."""
    return _index(result.semantic, result.instance, len(result.instances))


def _index(semantic: np.ndarray, instance: np.ndarray, count: int) -> np.ndarray:
    # uint16 holds the index while ids stay below 256, and halves the memory traffic.
    dtype = np.uint16 if count < 2**16 // PALETTE_BLOCK else np.uint32
    index = np.left_shift(instance, BLOCK_BITS, dtype=dtype)
    np.bitwise_or(index, semantic, out=index)
    return index


def _palette_words(palette: np.ndarray) -> np.ndarray:
    """Each RGB colour padded to 4 bytes and read as one uint32."""
    padded = np.zeros((len(palette), 4), np.uint8)
    padded[:, :3] = palette
    return padded.view(np.uint32).ravel()


def _gather_into(words: np.ndarray, index: np.ndarray, buffer: np.ndarray, offset: int) -> None:
    """Write words[index] as 3-byte RGB into `buffer` from byte `offset` on, and nowhere else.

    The words are gathered into a contiguous array, which numpy does several
    times faster than into any other layout, and then copied through a uint32
    view of `buffer` whose items are 3 bytes apart: each copy's padding byte is
    overwritten by the next pixel's. That is cheaper than one gather of 3-byte
    items, or one straight into the strided view. The last pixel is written as
    3 bytes, so that bands of one image can be filled at the same time.
    """
    flat = index.ravel()
    if flat.size == 0:
        return
    # "clip" clamps each index where "raise" checks it, a fifth faster; `_index` builds them in range anyway.
    colours = np.take(words, flat, mode="clip")
    target = np.ndarray((flat.size - 1,), dtype=np.uint32, buffer=buffer, offset=offset, strides=(3,))
    np.copyto(target, colours[:-1])
    end = offset + 3 * flat.size
    buffer[end - 3 : end] = colours[-1:].view(np.uint8)[:3]


def gather_rgb(palette: np.ndarray, index: np.ndarray) -> np.ndarray:
    """palette[index] as a contiguous HxWx3 uint8 array, several times faster than numpy's."""
    buffer = np.empty(3 * index.size, np.uint8)
    _gather_into(_palette_words(palette), index, buffer, 0)
    return buffer.reshape(*index.shape, 3)


def colorize_panoptic(result: PanopticResult, config: EfficientPSConfig | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 panoptic colouring; `config` may also be a ready `class_palette`."""
    palette = config if isinstance(config, np.ndarray) else class_palette(config.classes)
    return gather_rgb(panoptic_palette(result, palette), panoptic_index(result))


def alpha_weight(alpha: float) -> int:
    """alpha in [0, 1] as an integer weight out of 256."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be within 0 to 1, got {alpha}")
    return int(round(alpha * 256))


def scale(values: np.ndarray, weight: int) -> np.ndarray:
    """floor(values * weight / 256) in uint8, through uint16."""
    scaled = np.multiply(values, weight, dtype=np.uint16)
    np.right_shift(scaled, 8, out=scaled)
    return scaled.astype(np.uint8)


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend `colors` over `image` (both HxWx3 uint8) with weight `alpha` on the colours.

    Each term is floored separately, so the sum never exceeds 255.
    """
    if image.shape != colors.shape:
        raise ValueError(f"overlay: image {image.shape} and colours {colors.shape} differ in shape")
    weight = alpha_weight(alpha)
    blended = scale(image, WEIGHT_UNIT - weight)
    blended += scale(colors, weight)
    return blended


def add_scaled(total: np.ndarray, values: np.ndarray, weight: int) -> None:
    """total += floor(values * weight / 256), in place, for uint8 arrays whose sum stays below 256.

    A weight that is a power of two (alpha 0.5 leaves 128) makes the term a
    shift, one uint8 pass instead of three through uint16.
    """
    if weight & (weight - 1) == 0:
        if weight:
            # floor(v * 2**m / 256) == v >> (8 - m)
            np.add(total, np.right_shift(values, 9 - weight.bit_length()), out=total)
        return
    term = np.multiply(values, weight, dtype=np.uint16)
    np.right_shift(term, 8, out=term)
    # The two floored terms never sum past 255, so the cast back to uint8 is exact.
    np.add(total, term, out=total, casting="unsafe")


class PanopticPainter:
    """Colourings and overlays for one class table, with the class palette computed once.

    `overlay` gives exactly `overlay(image, colorize_panoptic(result, palette), alpha)`, but scales
    the small palette instead of the full-size colour image, and works through
    the image in bands of rows, so that each band's scratch arrays stay in the
    CPU cache. With `threads` > 1 the bands are shared out in `threads` runs of
    consecutive bands: the calling thread paints one run and a pool thread each
    of the others (numpy releases the GIL), so a frame wakes `threads` - 1 threads.
    """

    def __init__(self, classes: Sequence[ClassInfo], threads: int | None = None):
        self.palette = class_palette(classes)
        self.threads = min(_MAX_THREADS, os.cpu_count() or 1) if threads is None else threads
        helpers = self.threads - 1
        self._pool = ThreadPoolExecutor(helpers, thread_name_prefix="efficientps-paint") if helpers > 0 else None

    def overlay(self, image: np.ndarray, result: PanopticResult, alpha: float) -> np.ndarray:
        height, width = result.semantic.shape
        if image.shape != (height, width, 3):
            raise ValueError(f"overlay: image {image.shape} and result {result.semantic.shape} differ in size")
        weight = alpha_weight(alpha)
        words = _palette_words(scale(panoptic_palette(result, self.palette), weight))
        buffer = np.empty(3 * height * width, np.uint8)

        def paint(tops: Sequence[int]) -> None:
            for top in tops:
                rows = slice(top, min(top + _BAND_ROWS, height))
                index = _index(result.semantic[rows], result.instance[rows], len(result.instances))
                _gather_into(words, index, buffer, 3 * top * width)
                band = buffer[3 * top * width : 3 * rows.stop * width].reshape(rows.stop - top, width, 3)
                add_scaled(band, image[rows], WEIGHT_UNIT - weight)

        runs = _runs(range(0, height, _BAND_ROWS), self.threads if self._pool is not None else 1)
        helped = [self._pool.submit(paint, run) for run in runs[1:]] if self._pool is not None else []
        try:
            paint(runs[0])
        finally:
            for done in helped:
                done.result()
        return buffer.reshape(height, width, 3)


def _runs(items: Sequence[int], count: int) -> list[Sequence[int]]:
    """`items` cut into at most `count` runs of consecutive items, as even as they go; at least one run."""
    count = max(1, min(count, len(items)))
    bounds = [len(items) * k // count for k in range(count + 1)]
    return [items[bounds[k] : bounds[k + 1]] for k in range(count)]
