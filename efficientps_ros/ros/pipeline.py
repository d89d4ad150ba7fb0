"""Frames in, outputs out: decode each camera's frame, predict them as one batch, publish.

With `overlap_outputs`, a batch's outputs are built and published on the
output thread while the next batch is in the model (see output_stage.py).
A bad frame, or a batch the device has no memory for, is reported and skipped;
it never ends the worker. Once closed, a batch still in the model is dropped
silently: its publishers may be gone.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from ..device_overlay import pays_on
from ..input_limits import check_image_size
from ..predictor import Predictor
from ..visualize import PanopticPainter
from .camera import CameraOutputs
from .diagnostics import CameraStats
from .frame_slots import Frame
from .image_codec import compressed_to_rgb8, to_rgb8
from .output_stage import OutputStage
from .params import NodeSettings


def decode(
    message: Any,
    transport: str,
    max_pixels: int,
    size_divisor: int = 1,
    inference_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """An Image or CompressedImage as HxWx3 uint8 RGB; ValueError names what is wrong.

    Sizes are checked before decoding, by `check_image_size`: the raw
    message's own fields here, the compressed header by the codec. Given the
    model's `size_divisor` (and the fixed `inference_size`, if any), the
    limit bounds the padded area the network sees.
    """
    try:
        if transport == "raw":
            check_image_size(message.height, message.width, max_pixels, size_divisor, inference_size)
        if transport == "compressed":
            return compressed_to_rgb8(message, max_pixels, size_divisor, inference_size)
        return to_rgb8(message)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for corrupt data
        raise ValueError(f"cannot decode the image ({type(exc).__name__}: {exc})") from None


class PerceptionPipeline:
    """Runs the predictor on frames and publishes each camera's outputs."""

    def __init__(
        self,
        predictor: Predictor,
        settings: NodeSettings,
        outputs: dict[str, CameraOutputs],
        stats: dict[str, CameraStats],
        log_error: Callable[[str], None],
        overlap_outputs: bool = False,
        device_overlay: bool | None = None,
    ):
        self.predictor = predictor
        # Replaced as a whole when a live parameter changes.
        self.settings = settings
        self._outputs = outputs
        self._stats = stats
        self._log_error = log_error
        self._painter = PanopticPainter(predictor.config.classes)
        self._device_overlay = pays_on(predictor.device) if device_overlay is None else device_overlay
        # Held while sending, so that after `close` nothing is sent on destroyed publishers.
        self._sending = threading.Lock()
        self._closed = False
        self._stage = OutputStage(self._publish_all, self._on_output_failure) if overlap_outputs else None

    def close(self) -> None:
        """Publish nothing more and report nothing more; returns once a send in progress is done."""
        # The stage first: a batch waiting for the output thread is dropped, not sent.
        if self._stage is not None:
            self._stage.close()
        with self._sending:
            self._closed = True

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the outputs of every batch processed so far were sent; True when they were."""
        return self._stage is None or self._stage.drain(timeout)

    def process(self, frames: list[Frame]) -> None:
        settings = self.settings
        decoded = []
        for frame in frames:
            try:
                decoded.append((frame, decode(
                    frame.message, settings.transport, settings.max_image_pixels,
                    self.predictor.config.size_divisor, settings.inference_size,
                )))
            except ValueError as exc:
                self._skip(frame.camera, f"bad input: {exc}")
        if decoded:
            self._predict_and_publish(decoded, settings)

    def _predict_and_publish(self, decoded: list[tuple[Frame, np.ndarray]], settings: NodeSettings) -> None:
        try:
            if self._device_overlay:
                wanted = any("overlay" in self._outputs[frame.camera].wanted(settings) for frame, _ in decoded)
                self.predictor.set_overlay(settings.overlay_alpha if wanted else None)
            results = self.predictor.predict([rgb for _, rgb in decoded])
        except torch.OutOfMemoryError:
            if self.predictor.device.type == "cuda":
                torch.cuda.empty_cache()
            for frame, _ in decoded:
                self._skip(frame.camera, f"out of memory on {self.predictor.device}")
            return
        except Exception as exc:  # noqa: BLE001 - the next frame may well succeed
            for frame, _ in decoded:
                self._skip(frame.camera, f"inference failed: {type(exc).__name__}: {exc}")
            return
        batch = [(frame, rgb, result, settings) for (frame, rgb), result in zip(decoded, results)]
        if self._stage is None:
            self._publish_all(batch)
        else:
            self._stage.put(batch)

    def _publish_all(self, batch: list[tuple[Frame, np.ndarray, Any, NodeSettings]]) -> None:
        for frame, rgb, result, settings in batch:
            self._publish(frame, rgb, result, settings)

    def _on_output_failure(self, exc: Exception) -> None:
        # `_publish` reports its own failures per camera; this is anything else.
        if not self._closed:
            self._log_error(f"output thread: {type(exc).__name__}: {exc}")

    def _publish(self, frame: Frame, rgb: np.ndarray, result, settings: NodeSettings) -> None:
        outputs = self._outputs[frame.camera]
        try:
            wanted = outputs.wanted(settings)
            built = outputs.build(wanted, result, rgb, frame.message.header, settings, self._painter)
            with self._sending:
                if self._closed:
                    return
                outputs.send(built)
        except Exception as exc:  # noqa: BLE001 - a failed publish must not end the worker
            self._skip(frame.camera, f"publishing failed: {type(exc).__name__}: {exc}")
            return
        self._stats[frame.camera].record_output(time.monotonic() - frame.received, result.model_time)

    def _skip(self, camera: str, problem: str) -> None:
        if self._closed:
            return  # a batch interrupted by deactivate or shutdown is no bad input
        if self._stats[camera].record_error(problem):
            self._log_error(f"camera {camera}: frame skipped, {problem}")
