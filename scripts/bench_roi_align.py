"""RoI feature extraction with the legacy RoIAlign against plain torchvision, on the same RoIs.

    python scripts/bench_roi_align.py [--device cuda] [--threads 2] [--narrow 0.05]

Features of a 1024x2048 image (256 channels at strides 4 to 32), RoIs spread
over it with sides from 1 to 600 px, a share of them (`--narrow`) under one
feature pixel in width or height. Prints the median time of `roi_features`
(the legacy RoIAlign), of the same per-level loop calling torchvision's
unaligned kernel, and of the stage as it was before (one torchvision call and
one copy per level), with the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.ops import roi_align

from efficientps_ros.model.config import RoIConfig
from efficientps_ros.model.roi_heads import roi_features, roi_levels

STRIDES = (4, 8, 16, 32)
IMAGE = (1024, 2048)
CHANNELS = 256


def make_rois(count: int, narrow: float, generator: torch.Generator) -> torch.Tensor:
    """`[count, 5]` RoIs in one image, log-uniform sides, `narrow` of them under a P4 pixel in width."""
    sides = torch.exp(torch.rand(count, 2, generator=generator) * torch.log(torch.tensor(600.0)))
    thin = torch.rand(count, generator=generator) < narrow
    sides[thin, 0] = 0.5 + 3 * torch.rand(int(thin.sum()), generator=generator)
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor(IMAGE[::-1], dtype=torch.float32) - sides)
    return torch.cat([torch.zeros(count, 1), corner, corner + sides - 1], dim=1)


def plain_torchvision(features, strides, rois, output_size, config):
    """The same level grouping as `roi_features`, with torchvision's unaligned kernel (sizes clamped to 1)."""
    levels = roi_levels(rois[:, 1:], config.finest_scale, len(features))
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    ends_plus_one = rois + rois.new_tensor([0.0, 0, 0, 1, 1])
    pooled = [
        roi_align(feature, level_rois, output_size, 1.0 / stride, config.sampling_ratio, aligned=False)
        for feature, stride, level_rois in zip(features, strides, ends_plus_one[order].split(counts))
        if level_rois.shape[0]
    ]
    return torch.cat(pooled).index_select(0, torch.argsort(order))


def previous_stage(features, strides, rois, output_size, config):
    """The RoI stage before the legacy RoIAlign: torchvision's unaligned kernel, one copy per level."""
    levels = roi_levels(rois[:, 1:], config.finest_scale, len(features))
    shifted = rois + rois.new_tensor([0.0, 0, 0, 1, 1])
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        index = torch.nonzero(levels == level, as_tuple=False).flatten()
        if index.numel():
            pooled = roi_align(feature, shifted[index], output_size, 1.0 / stride, config.sampling_ratio, aligned=False)
            out = out.index_put((index,), pooled)
    return out


def median_times(functions, device: torch.device, repeats: int) -> list[float]:
    """Median seconds of each function, run in turns so that a busy machine slows them alike."""
    times = [[] for _ in functions]
    for i in range(repeats + 1):
        for fn, record in zip(functions, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first turn warms up
                record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--narrow", type=float, default=0.05, help="share of RoIs under one feature pixel wide")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    features = [
        torch.randn(1, CHANNELS, IMAGE[0] // s, IMAGE[1] // s, generator=generator).to(device) for s in STRIDES
    ]
    config = RoIConfig()
    print(f"device {device}, {torch.get_num_threads()} threads, {args.narrow:.0%} of RoIs under one feature pixel")
    print(f"{'stage':<24}{'legacy ms':>11}{'torchvision ms':>16}{'ratio':>8}{'before ms':>11}{'ratio':>8}")
    for name, count, size in (("box head, 1000 RoIs", 1000, config.box_roi_size), ("mask head, 100 RoIs", 100, config.mask_roi_size)):
        rois = make_rois(count, args.narrow, generator).to(device)
        with torch.inference_mode():
            ours, plain, before = median_times(
                [
                    lambda: roi_features(features, STRIDES, rois, size, config),
                    lambda: plain_torchvision(features, STRIDES, rois, size, config),
                    lambda: previous_stage(features, STRIDES, rois, size, config),
                ],
                device,
                args.repeats,
            )
        print(f"{name:<24}{ours * 1e3:>11.2f}{plain * 1e3:>16.2f}{ours / plain:>8.3f}{before * 1e3:>11.2f}{ours / before:>8.3f}")


if __name__ == "__main__":
    main()
