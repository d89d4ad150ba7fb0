"""The dense part of the network (backbone, FPN, semantic head) in each layout and precision it could run in.

    python scripts/bench_dense.py [--config small] [--height 384 --width 768] [--threads 2] [--frames 10]
                                  [--device cpu] [--dtype bf16] [--compile]

Norms are folded in every variant, as the predictor folds them. The variants:
fp32 weights in NCHW and in channels-last; reduced precision by autocast
alone (fp32 weights), NCHW and channels-last; weights cast to the reduced
precision, NCHW and channels-last (the predictor's fast path); with
`--compile`, that last one compiled as the predictor compiles it, and the
compilation time. Frames go round the variants in turn, so that load which
comes and goes on the machine slows them alike. Prints each variant's median
and p95 ms and its speed-up over fp32 NCHW.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from typing import Callable, Optional

import torch
from torch import nn

from efficientps_ros.model.config import load_config
from efficientps_ros.model.efficientps import EfficientPS
from efficientps_ros.model.norm import fold_norms

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The modules `--compile` compiles: the dense part, as the predictor does.
COMPILED = ("backbone", "fpn", "semantic_head")


class Variant:
    """One way to run the dense part: a model in its layout and weight dtype, and an autocast dtype or none."""

    def __init__(self, model: nn.Module, image: torch.Tensor, autocast: Optional[torch.dtype]):
        self.model, self.image, self.autocast = model, image, autocast
        self.times: list[float] = []

    def run(self) -> torch.Tensor:
        device = self.image.device.type
        guard = torch.autocast(device, self.autocast) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), guard:
            features = self.model.fpn(self.model.backbone(self.image))
            return self.model.semantic_head(features, self.image.shape[-2:])


def variants(base: nn.Module, image: torch.Tensor, dtype: torch.dtype, name: str) -> dict[str, Variant]:
    def made(channels_last: bool, weights: torch.dtype, autocast: Optional[torch.dtype]) -> Variant:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(base).to(memory_format=layout)
        for param in model.parameters():
            param.data = param.data.to(weights)
        as_input = image.to(weights if autocast is None else image.dtype).contiguous(memory_format=layout)
        return Variant(model, as_input, autocast)

    return {
        "fp32 NCHW": made(False, torch.float32, None),
        "fp32 channels-last": made(True, torch.float32, None),
        f"{name} autocast NCHW": made(False, torch.float32, dtype),
        f"{name} autocast channels-last": made(True, torch.float32, dtype),
        f"{name} weights NCHW": made(False, dtype, None),
        f"{name} weights channels-last": made(True, dtype, None),
    }


def compiled(variant: Variant) -> tuple[Variant, float]:
    """A copy of `variant` with the dense modules compiled, and the seconds its first frame took."""
    model = copy.deepcopy(variant.model)
    for module in COMPILED:
        model.get_submodule(module).compile(dynamic=False)
    result = Variant(model, variant.image, variant.autocast)
    return result, timed(result.run, variant.image.device)


def timed(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = fold_norms(EfficientPS(load_config(args.config)).eval()).to(device)
    image = torch.randn(1, 3, args.height, args.width, device=device)
    runs = variants(base, image, DTYPES[args.dtype], args.dtype)
    if args.compile:
        fast = f"{args.dtype} weights channels-last"
        runs[f"{fast}, compiled"], seconds = compiled(runs[fast])
        print(f"compilation and first frame: {seconds:.1f} s")
    for variant in runs.values():
        for _ in range(args.warmup):
            variant.run()
    for _ in range(args.frames):
        for variant in runs.values():
            variant.times.append(timed(variant.run, device))
    print(f"dense part of {args.config} at {args.height}x{args.width} on {device}, "
          f"{torch.get_num_threads()} threads, {args.frames} frames each, median and p95 ms")
    reference = statistics.median(runs["fp32 NCHW"].times)
    for name, variant in runs.items():
        ms = sorted(t * 1000 for t in variant.times)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        median = statistics.median(ms)
        print(f"{name:40s} {median:8.1f} {p95:8.1f}   x{reference * 1000 / median:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
