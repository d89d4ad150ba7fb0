"""Model latency: the predictor's variants against the plain eager network.

Every number comes from the same run on the same machine, on the same
synthetic street scene and weights: the baseline is the unfolded fp32 network
called directly, and each variant prints its ratio to it. Timings on a noisy machine vary; ratios within one run are what compare.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from .data.synthetic import street_scene
from .data.targets import normalize, padded_size
from .model import build_model, load_config
from .model.config import parse_size
from .model.checkpoint import load_checkpoint, load_weights, read_config
from .predictor import Predictor, default_checkpoint, resolve_device


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [parse_size(item) for item in text.split(",")]
    except ValueError as exc:
        raise ValueError(f"--sizes {text!r}: {exc}") from None


def _time(fn, iterations: int, device: torch.device) -> list[float]:
    fn()  # warm-up: allocator, cudnn autotuning, lazy init
    samples = []
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def _baseline(config, checkpoint: str | None, device: torch.device, image: np.ndarray):
    """The network as built for training, in eval mode, norms unfolded, same weights and image."""
    model = build_model(config)
    source = checkpoint or default_checkpoint(config)
    if source is not None:
        state, _ = load_checkpoint(source)
        load_weights(model, state, source)
    model = model.eval().to(device)
    size = image.shape[:2]
    images = normalize(image, config, padded_size(size, config.size_divisor))[None].to(device)

    @torch.inference_mode()
    def run():
        model(images, [size])

    return run


def _variants(args: argparse.Namespace, device: torch.device) -> list[str]:
    if args.precision != "fp32":
        return ["fp32", args.precision]
    return ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]


def run_bench(args: argparse.Namespace) -> int:
    # A checkpoint alone brings its own config, as in the predictor.
    if args.config is None and args.checkpoint is not None:
        config = read_config(args.checkpoint)
    else:
        config = load_config(args.config or "b5_cityscapes")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"model {config.name} on {device} ({torch.get_num_threads()} CPU threads), "
          f"{args.iterations} iterations after one warm-up; ms median / p95")
    for size in _parse_sizes(args.sizes):
        image = street_scene(*size, seed=0).image
        base = _time(_baseline(config, args.checkpoint, device, image), args.iterations, device)
        _report(size, "network only, unfolded fp32 (baseline)", base, statistics.median(base))
        for precision in _variants(args, device):
            predictor = Predictor(config, args.checkpoint, device=str(device), precision=precision)
            samples = _time(lambda: predictor.predict(image), args.iterations, device)
            _report(size, f"predictor {precision} (folded, with fusion and copies)", samples, statistics.median(base))
            predictor.close()
    return 0


def _report(size: tuple[int, int], label: str, samples: list[float], baseline: float) -> None:
    median = statistics.median(samples)
    p95 = float(np.percentile(samples, 95))
    print(f"{size[0]}x{size[1]:<5d} {label:52s} {median * 1e3:8.1f} {p95 * 1e3:8.1f}   x{baseline / median:.2f}")
