"""Arrays in, panoptic results out: device, precision, batching, resizing.

The predictor is plain PyTorch and numpy; the ROS node and the command-line
tools both drive it. By default it runs the network the fast way: norms
folded, channels-last tensors, weights stored in the chosen precision, and
optionally the dense part compiled. `optimize=False` runs the network as
training built it, which is what the benchmark compares against.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device_overlay import DeviceOverlay
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
# The parts of the network whose shapes are fixed by the image size alone: these compile.
DENSE_MODULES = ("backbone", "fpn", "semantic_head", "instance_head.rpn_head")
# Floats per detection in the table that comes back with the maps: box, score, class id.
_DETECTION_FIELDS = 6

# Called with the name of each step of a prediction as it ends; the benchmark times them.
StageMark = Callable[[str], None]


def _no_mark(_stage: str) -> None:
    pass


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
    `compile` compiles the dense part with static shapes, once per image size
    and batch (see `warm_up`); `optimize=False` keeps the network as built for
    training (norms unfolded, fp32 weights, NCHW), the reference for speed-ups.
    """

    def __init__(
        self,
        config: EfficientPSConfig | str | Path | None = None,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        compile: bool = False,
        optimize: bool = True,
    ):
        self.device = resolve_device(device)
        self.precision = precision
        self._dtype = check_precision(precision, self.device)
        if compile and not optimize:
            raise ValueError("compile needs the optimized network; drop optimize=False")
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
        model = model.eval()
        self.optimized = optimize
        self.compiled = compile
        self.model = _optimized(model, self._dtype, compile).to(self.device) if optimize else model.to(self.device)
        self._mean = torch.tensor(self.config.pixel_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.config.pixel_std, device=self.device).view(1, 3, 1, 1)
        self._label_ids = torch.tensor([c.label_id for c in self.config.classes] + [0], device=self.device)
        # On a GPU the maps come back in one copy into page-locked memory; on
        # the CPU they are already where numpy can read them.
        self.packed_copy = self.device.type == "cuda"
        self._overlay: DeviceOverlay | None = None

    def set_overlay(self, alpha: float | None) -> None:
        """Paint the overlay at `alpha` with the maps, on the device (see device_overlay.py); None: do not."""
        if alpha is None:
            self._overlay = None
        elif self._overlay is None or self._overlay.alpha != alpha:
            self._overlay = DeviceOverlay(
                self.config.classes, alpha, self.config.roi.detections_per_image, self.device
            )

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

    def predict(
        self, images: np.ndarray | Sequence[np.ndarray], on_stage: StageMark | None = None
    ) -> PanopticResult | list[PanopticResult]:
        """One HxWx3 uint8 image gives one result; a list gives a list.

        Images the network sees at one size run as one batch: all of them
        with `input_size`, else those of equal size. `on_stage`, if given, is
        called with each step's name as the step ends, once per batch.
        """
        mark = on_stage or _no_mark
        if isinstance(images, np.ndarray):
            return self._predict_batch([_check_image(images, 0)], mark)[0]
        checked = [_check_image(image, i) for i, image in enumerate(images)]
        results: list[PanopticResult | None] = [None] * len(checked)
        groups = [list(range(len(checked)))] if self.input_size else _group_by_size(checked)
        for indices in groups:
            for index, result in zip(indices, self._predict_batch([checked[i] for i in indices], mark)):
                results[index] = result
        return results

    def warm_up(self, sizes: Sequence[tuple[int, int]], batch: int = 1) -> float:
        """Predict once per camera size, `batch` images at a time; returns the seconds it took.

        The first prediction at a size pays for memory allocation, cuDNN's
        algorithm search and, with `compile`, the compilation; a node calls
        this at activation so that its first real frame does not.
        """
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for height, width in sizes:
            image = rng.integers(0, 256, (int(height), int(width), 3), dtype=np.uint8)
            self.predict([image] * batch)
        return time.perf_counter() - start

    def close(self) -> None:
        """Free the model and, on a GPU, its cached memory."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _predict_batch(self, images: list[np.ndarray], mark: StageMark = _no_mark) -> list[PanopticResult]:
        if self.model is None:
            raise RuntimeError("the predictor was closed")
        start = time.perf_counter()
        batch, size, pixels = self._prepare(images)
        mark("upload and normalise")
        # Autocast also with weights already cast: it runs the ops that need
        # fp32 (RoIAlign has no reduced-precision CPU kernel) in fp32.
        with torch.autocast(self.device.type, dtype=self._dtype, enabled=self._dtype != torch.float32):
            logits, detections = self._network(batch, [size] * len(images), mark)
        fused = [
            self._fuse(one_logits, one_detections, size, one_pixels)
            for one_logits, one_detections, one_pixels in zip(logits, detections, pixels)
        ]
        mark("fusion")
        host = self._to_host(fused)
        mark("maps to host")
        results = [self._to_result(*maps) for maps in host]
        elapsed = (time.perf_counter() - start) / len(results)
        for result in results:
            result.model_time = elapsed
        return results

    def _network(self, batch: Tensor, sizes: list[tuple[int, int]], mark: StageMark) -> tuple[Tensor, list[dict]]:
        """The network's inference, one submodule at a time so that each step can be timed."""
        model = self.model
        features = model.fpn(model.backbone(batch))
        mark("backbone + FPN")
        logits = model.semantic_head(features, batch.shape[-2:])
        mark("semantic head")
        detections = model.instance_head(features, sizes)
        mark("RoI heads")
        return logits, detections

    def _prepare(self, images: list[np.ndarray]) -> tuple[Tensor, tuple[int, int], list[Tensor]]:
        """uint8 HxWx3 arrays -> normalised, padded NCHW batch on the device, and each image there as uint8.

        Without `input_size` the images share one size; with it, each is
        resized on its own and then they are stacked.
        """
        if self.input_size is None:
            # One image needs no stacking copy: the float conversion copies it.
            uploaded = self._upload(images[0][None] if len(images) == 1 else np.stack(images))
            batch, pixels = _as_float(uploaded), list(uploaded)
        else:
            uploads = [self._upload(image[None]) for image in images]
            batch = torch.cat([self._resized(_as_float(one)) for one in uploads])
            pixels = [one[0] for one in uploads]
        size = (batch.shape[-2], batch.shape[-1])
        # In place: the float batch is a fresh copy of the pixels.
        batch = self._normalise_(batch)
        divisor = self.config.size_divisor
        padded = (size[0] + -size[0] % divisor, size[1] + -size[1] % divisor)
        # Zero after normalisation: the padding is the mean colour.
        if not self.optimized:
            return F.pad(batch, (0, padded[1] - size[1], 0, padded[0] - size[0])), size, pixels
        return self._network_layout(batch, padded), size, pixels

    def _normalise_(self, batch: Tensor) -> Tensor:
        """(pixels - mean) / std, in place.

        The pixels usually lie channels-last in memory, as they came. A
        per-channel broadcast then runs an inner loop of 3 elements; rows of
        width x 3 values against the mean and std repeated along a row
        vectorise, and give the same values: at 1024x2048 on the CPU, 3 to 4
        times faster.
        """
        pixels = batch.permute(0, 2, 3, 1)
        if not pixels.is_contiguous():
            return batch.sub_(self._mean).div_(self._std)
        width = pixels.shape[2]
        rows = pixels.view(-1, width * 3)
        rows.sub_(self._mean.view(3).repeat(width)).div_(self._std.view(3).repeat(width))
        return batch

    def _network_layout(self, batch: Tensor, padded: tuple[int, int]) -> Tensor:
        """The batch in the weights' dtype, channels-last and zero-padded, in one copy.

        Separate in-place passes (float, minus mean, over std, cast) beat
        writing the reduced dtype from uint8 in one or two mixed-dtype ops:
        measured at 1024x2048 on 2 threads, 21 ms against 34 to 51 ms, as
        torch does not vectorise casting loops.

        Pixels arrive as NHWC, which already is the channels-last layout, so
        nothing here transposes; F.pad would, and return NCHW.
        """
        if tuple(batch.shape[-2:]) == padded:
            return batch.to(self._dtype).contiguous(memory_format=torch.channels_last)
        out = torch.empty(
            (*batch.shape[:2], *padded), dtype=self._dtype, device=batch.device, memory_format=torch.channels_last
        ).zero_()
        out[:, :, : batch.shape[-2], : batch.shape[-1]] = batch
        return out

    def _upload(self, images: np.ndarray) -> Tensor:
        """NHWC uint8 on the device."""
        # Views of message buffers are read-only, which torch must not alias;
        # those are copied, and the float conversion after this copies the rest.
        pixels = torch.from_numpy(images if images.flags.writeable else images.copy())
        return pixels.to(self.device, non_blocking=True)

    def _resized(self, batch: Tensor) -> Tensor:
        if tuple(batch.shape[-2:]) == self.input_size:
            return batch
        return F.interpolate(batch, size=self.input_size, mode="bilinear", align_corners=False)

    def _fuse(self, logits: Tensor, detections: dict, size: tuple[int, int], pixels: Tensor) -> DeviceMaps:
        """Fusion at network resolution, then the maps at the input size (of `pixels`), all on the device."""
        out_size = tuple(pixels.shape[:2])
        logits = logits[:, : size[0], : size[1]].float()
        detections = {k: v.float() if v.is_floating_point() else v for k, v in detections.items()}
        out = panoptic_fusion(logits, detections, self._fusion_config(size, out_size))
        semantic, instance, scores, class_ids = out.semantic, out.instance, out.scores, out.class_ids
        if size != out_size:
            semantic = _resize_nearest(semantic, out_size)
            # Shrinking can take every pixel from a small instance; ids stay dense.
            instance, present = dense_ids(_resize_nearest(instance, out_size), len(scores))
            scores, class_ids = scores[present], class_ids[present]
        boxes = segment_boxes(instance, len(scores))
        table = torch.cat([boxes.float(), scores.float()[:, None], class_ids.float()[:, None]], dim=1)
        return DeviceMaps(
            semantic=semantic.to(torch.uint8),
            # int16 holds the bits of uint16, which torch barely supports; numpy reads them back as uint16.
            instance=instance.to(torch.int16),
            panoptic=self._panoptic(semantic, instance),
            detections=table,
            overlay=None if self._overlay is None else self._overlay.paint(pixels, semantic, instance, class_ids),
        )

    def _fusion_config(self, size: tuple[int, int], out_size: tuple[int, int]) -> EfficientPSConfig:
        """min_stuff_area counts input pixels, also when the network sees another size."""
        if size == out_size:
            return self.config
        fusion = self.config.fusion
        area = round(fusion.min_stuff_area * size[0] * size[1] / (out_size[0] * out_size[1]))
        return replace(self.config, fusion=replace(fusion, min_stuff_area=area))

    def _to_host(self, maps: list[DeviceMaps]) -> list[tuple[np.ndarray, ...]]:
        """Each image's semantic, instance, panoptic and detection arrays, and its overlay if painted, on the host."""
        if not self.packed_copy:
            return [
                (m.semantic.cpu().numpy(), m.instance.cpu().numpy().view(np.uint16),
                 m.panoptic.cpu().numpy(), m.detections.cpu().numpy(),
                 *(() if m.overlay is None else (m.overlay.cpu().numpy(),)))
                for m in maps
            ]
        packed, layout = pack_maps(maps)
        host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        host.copy_(packed, non_blocking=True)
        if self.device.type == "cuda":
            # The one wait of a frame for the device: the maps must be complete before numpy reads them.
            torch.cuda.current_stream(self.device).synchronize()
        return unpack_maps(host.numpy(), layout)

    def _to_result(
        self,
        semantic: np.ndarray,
        instance: np.ndarray,
        panoptic: np.ndarray,
        detections: np.ndarray,
        overlay: np.ndarray | None = None,
    ) -> PanopticResult:
        classes = self.config.classes
        instances = [
            Instance(k + 1, int(row[5]), classes[int(row[5])].name, float(row[4]), tuple(float(v) for v in row[:4]))
            for k, row in enumerate(detections.tolist())
        ]
        alpha = None if overlay is None else self._overlay.alpha
        return PanopticResult(semantic, instance, panoptic, instances, overlay=overlay, overlay_alpha=alpha)

    def _panoptic(self, semantic: Tensor, instance: Tensor) -> Tensor:
        """Cityscapes panoptic ids: label id, or label id * 1000 + k; void 0."""
        train_ids = torch.where(semantic == VOID_TRAIN_ID, len(self.config.classes), semantic)
        label_ids = self._label_ids[train_ids]
        return torch.where(instance > 0, label_ids * 1000 + instance, label_ids).to(torch.int32)


@dataclass
class DeviceMaps:
    """One image's outputs on the device, in the types they leave it in.

    `detections` is `[K, 6]` float32: box x0, y0, x1, y1, score, train id.
    """

    semantic: Tensor  # [H, W] uint8
    instance: Tensor  # [H, W] int16, the bits of uint16
    panoptic: Tensor  # [H, W] int32
    detections: Tensor  # [K, 6] float32
    overlay: Tensor | None = None  # [H, W, 3] uint8


def pack_maps(maps: Sequence[DeviceMaps]) -> tuple[Tensor, list[list[tuple[int, tuple[int, ...], np.dtype]]]]:
    """Every map of every image as one flat byte tensor, and where each lies in it.

    One copy to the host then replaces a dozen small ones, each of which
    would wait for the device.
    """
    parts, layout = [], []
    offset = 0
    for m in maps:
        entries = []
        arrays = [(m.semantic, np.uint8), (m.instance, np.uint16), (m.panoptic, np.int32), (m.detections, np.float32)]
        if m.overlay is not None:
            arrays.append((m.overlay, np.uint8))
        for tensor, dtype in arrays:
            raw = tensor.contiguous().flatten().view(torch.uint8)
            entries.append((offset, tuple(tensor.shape), np.dtype(dtype)))
            parts.append(raw)
            # Each array starts on a multiple of its item size, so numpy views need no copy.
            offset += raw.numel()
            padding = -offset % 8
            if padding:
                parts.append(raw.new_zeros(padding))
                offset += padding
        layout.append(entries)
    return torch.cat(parts), layout


def unpack_maps(buffer: np.ndarray, layout) -> list[tuple[np.ndarray, ...]]:
    """The arrays of `pack_maps`, as views of `buffer` (bytes)."""
    return [
        tuple(
            buffer[offset : offset + dtype.itemsize * int(np.prod(shape))].view(dtype).reshape(shape)
            for offset, shape, dtype in entries
        )
        for entries in layout
    ]


def _as_float(pixels: Tensor) -> Tensor:
    """NHWC uint8 -> NCHW float, a copy."""
    return pixels.permute(0, 3, 1, 2).float()


def _optimized(model: nn.Module, dtype: torch.dtype, compile: bool) -> nn.Module:
    """Norms folded, convs channels-last, weights in `dtype`, the dense part compiled if asked."""
    model = fold_norms(model).to(memory_format=torch.channels_last)
    # Parameters only: the anchors buffer holds corners up to a few hundred
    # pixels, which bf16 cannot represent exactly.
    for param in model.parameters():
        param.data = param.data.to(dtype)
    if compile:
        for name in DENSE_MODULES:
            # In place, so the state dict and the modules' names stay as they are.
            model.get_submodule(name).compile(dynamic=False)
    return model


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
