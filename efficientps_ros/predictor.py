"""Arrays in, panoptic results out: device, precision, batching, resizing.

The predictor is plain PyTorch and numpy; the ROS node and the command-line
tools both drive it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .model import build_model
from .model.boxes import segment_boxes
from .model.checkpoint import CheckpointError, load_checkpoint, load_weights
from .model.config import VOID_TRAIN_ID, EfficientPSConfig, load_config
from .model.fusion import dense_ids, panoptic_fusion
from .model.norm import fold_norms
from .result import Instance, PanopticResult

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_checkpoint(config: EfficientPSConfig) -> Path | None:
    """The weights shipped with the package for this preset, if there are any."""
    path = WEIGHTS_DIR / f"{config.name}_synthetic.safetensors"
    return path if path.is_file() else None


def resolve_device(device: str) -> torch.device:
    """'auto' picks the first GPU when there is one; anything else is checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on cpu")
    return PRECISIONS[precision]


class Predictor:
    """EfficientPS inference on HxWx3 uint8 RGB images of any size.

    `config` is a preset name, a YAML path or a config; with a checkpoint and
    no config, the checkpoint's own config is used. `input_size` (h, w) resizes
    every image for the network; results always come back at the input size.
    """

    def __init__(
        self,
        config: EfficientPSConfig | str | Path | None = None,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
    ):
        self.device = resolve_device(device)
        self.precision = precision
        self._dtype = check_precision(precision, self.device)
        self.input_size = _check_input_size(input_size)
        self.config, state, source = _resolve_weights(config, checkpoint)
        # The file the weights came from; "" when they are random.
        self.weights_source = source
        model = build_model(self.config)
        if state is None:
            log.warning(
                "no weights for preset %r: running with RANDOM weights, outputs are meaningless", self.config.name
            )
        else:
            load_weights(model, state, source)
        self.model = fold_norms(model.eval()).to(self.device)
        self._mean = torch.tensor(self.config.pixel_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.config.pixel_std, device=self.device).view(1, 3, 1, 1)
        self._label_ids = torch.tensor([c.label_id for c in self.config.classes] + [0], device=self.device)

    def set_fusion(self, **thresholds) -> None:
        """Change fusion thresholds (score_threshold, overlap_threshold, ...).

        A score threshold also moves the box head's own cut, which would
        otherwise hide every detection below it from the fusion.
        """
        fusion = replace(self.config.fusion, **thresholds)
        roi = self.config.roi
        if "score_threshold" in thresholds:
            roi = replace(roi, score_threshold=fusion.score_threshold)
        self.config = replace(self.config, fusion=fusion, roi=roi)
        if self.model is not None:
            self.model.instance_head.config = self.config

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> PanopticResult | list[PanopticResult]:
        """One HxWx3 uint8 image gives one result; a list gives a list.

        Images the network sees at one size run as one batch: all of them
        with `input_size`, else those of equal size.
        """
        if isinstance(images, np.ndarray):
            return self._predict_batch([_check_image(images, 0)])[0]
        checked = [_check_image(image, i) for i, image in enumerate(images)]
        results: list[PanopticResult | None] = [None] * len(checked)
        groups = [list(range(len(checked)))] if self.input_size else _group_by_size(checked)
        for indices in groups:
            for index, result in zip(indices, self._predict_batch([checked[i] for i in indices])):
                results[index] = result
        return results

    def close(self) -> None:
        """Free the model and, on a GPU, its cached memory."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _predict_batch(self, images: list[np.ndarray]) -> list[PanopticResult]:
        if self.model is None:
            raise RuntimeError("the predictor was closed")
        start = time.perf_counter()
        batch, size = self._prepare(images)
        with torch.autocast(self.device.type, dtype=self._dtype, enabled=self._dtype != torch.float32):
            outputs = self.model(batch, [size] * len(images))
        fused = [
            self._fuse(logits, detections, size, image.shape[:2])
            for logits, detections, image in zip(outputs["semantic_logits"], outputs["detections"], images)
        ]
        results = [self._to_result(*maps) for maps in fused]
        elapsed = (time.perf_counter() - start) / len(results)
        for result in results:
            result.model_time = elapsed
        return results

    def _prepare(self, images: list[np.ndarray]) -> tuple[Tensor, tuple[int, int]]:
        """uint8 HxWx3 arrays -> normalised, padded NCHW batch on the device.

        Without `input_size` the images share one size; with it, each is
        resized on its own and then they are stacked.
        """
        if self.input_size is None:
            batch = self._to_device(np.stack(images))
        else:
            batch = torch.cat([self._resized(self._to_device(image[None])) for image in images])
        size = (batch.shape[-2], batch.shape[-1])
        batch = (batch - self._mean) / self._std
        divisor = self.config.size_divisor
        pad_h, pad_w = -size[0] % divisor, -size[1] % divisor
        # Zero after normalisation: the padding is the mean colour.
        return F.pad(batch, (0, pad_w, 0, pad_h)), size

    def _to_device(self, images: np.ndarray) -> Tensor:
        """NHWC uint8 -> NCHW float on the device."""
        # Views of message buffers are read-only, which torch must not alias;
        # those are copied, and the float conversion below copies the rest.
        pixels = torch.from_numpy(images if images.flags.writeable else images.copy())
        return pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()

    def _resized(self, batch: Tensor) -> Tensor:
        if tuple(batch.shape[-2:]) == self.input_size:
            return batch
        return F.interpolate(batch, size=self.input_size, mode="bilinear", align_corners=False)

    def _fuse(
        self, logits: Tensor, detections: dict, size: tuple[int, int], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Fusion at network resolution, then the maps at the input size."""
        logits = logits[:, : size[0], : size[1]].float()
        detections = {k: v.float() if v.is_floating_point() else v for k, v in detections.items()}
        out = panoptic_fusion(logits, detections, self._fusion_config(size, out_size))
        semantic, instance, scores, class_ids = out.semantic, out.instance, out.scores, out.class_ids
        if size != out_size:
            semantic = _resize_nearest(semantic, out_size)
            # Shrinking can take every pixel from a small instance; ids stay dense.
            instance, present = dense_ids(_resize_nearest(instance, out_size), len(scores))
            scores, class_ids = scores[present], class_ids[present]
        return semantic, instance, segment_boxes(instance, len(scores)), scores, class_ids

    def _fusion_config(self, size: tuple[int, int], out_size: tuple[int, int]) -> EfficientPSConfig:
        """min_stuff_area counts input pixels, also when the network sees another size."""
        if size == out_size:
            return self.config
        fusion = self.config.fusion
        area = round(fusion.min_stuff_area * size[0] * size[1] / (out_size[0] * out_size[1]))
        return replace(self.config, fusion=replace(fusion, min_stuff_area=area))

    def _to_result(
        self, semantic: Tensor, instance: Tensor, boxes: Tensor, scores: Tensor, class_ids: Tensor
    ) -> PanopticResult:
        panoptic = self._panoptic(semantic, instance)
        classes = self.config.classes
        instances = [
            Instance(k + 1, int(c), classes[int(c)].name, float(s), tuple(float(v) for v in box))
            for k, (c, s, box) in enumerate(zip(class_ids.tolist(), scores.tolist(), boxes.tolist()))
        ]
        return PanopticResult(
            semantic=semantic.to(torch.uint8).cpu().numpy(),
            instance=instance.to(torch.int32).cpu().numpy().astype(np.uint16),
            panoptic=panoptic.cpu().numpy(),
            instances=instances,
        )

    def _panoptic(self, semantic: Tensor, instance: Tensor) -> Tensor:
        """Cityscapes panoptic ids: label id, or label id * 1000 + k; void 0."""
        train_ids = torch.where(semantic == VOID_TRAIN_ID, len(self.config.classes), semantic)
        label_ids = self._label_ids[train_ids]
        return torch.where(instance > 0, label_ids * 1000 + instance, label_ids).to(torch.int32)


def _resolve_weights(
    config: EfficientPSConfig | str | Path | None, checkpoint: str | Path | None
) -> tuple[EfficientPSConfig, dict | None, str]:
    if checkpoint is not None:
        state, stored = load_checkpoint(checkpoint)
        return (stored if config is None else _as_config(config)), state, str(checkpoint)
    if config is None:
        raise ValueError("a Predictor needs a config (preset name or YAML) or a checkpoint")
    config = _as_config(config)
    default = default_checkpoint(config)
    if default is None:
        return config, None, ""
    state, _ = load_checkpoint(default)
    return config, state, str(default)


def _as_config(config: EfficientPSConfig | str | Path) -> EfficientPSConfig:
    return config if isinstance(config, EfficientPSConfig) else load_config(config)


def _check_input_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"input_size {size!r} must be (height, width) with both sides at least 32")
    return int(size[0]), int(size[1])


def _check_image(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image {index}: expected an HxWx3 uint8 RGB array, got shape {shape} of {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: empty image of shape {image.shape}")
    return image


def _group_by_size(images: list[np.ndarray]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape[:2], []).append(index)
    return list(groups.values())


def _resize_nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    resized = F.interpolate(labels[None, None].float(), size=size, mode="nearest")
    return resized[0, 0].to(labels.dtype)


__all__ = ["CheckpointError", "Predictor", "PanopticResult", "Instance", "default_checkpoint"]
