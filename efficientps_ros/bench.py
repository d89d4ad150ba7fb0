"""End-to-end latency per frame, stage by stage, against the plain eager network.

    efficientps bench --config small --height 384 --width 768 --batch 1 --frames 10 --precision bf16

One frame is `--batch` camera images of one synthetic street scene each,
from the camera messages to every output published. Each stage's median and
p95 come from `--frames` frames after the warm-up. In the same run the
network as training built it (norms unfolded, fp32 weights, NCHW, eager)
predicts the same images, its frames alternating with the variant's: its
time gives the speed-up. The agreement of the outputs is pooled over
`--agreement-scenes` scenes, the timed frame's and more predicted after it,
untimed: one scene alone can hang on a single near-tie, such as which of two
overlapping proposals of a large, uncertain object survives. Timings on a
busy machine vary; ratios within one run compare.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import resource
from typing import Callable

import numpy as np
import torch

from .bench_stages import (
    MODEL_STAGES,
    OUTPUT_THREAD_STAGES,
    OVERHEAD_STAGES,
    ROS_STAGES,
    STAGES,
    StageClock,
    agreement,
    rpn_marked,
    summary,
)
from .data.synthetic import street_scene
from .device_overlay import pays_on
from .model import load_config
from .model.checkpoint import read_config
from .model.config import parse_size
from .paths import writable_file
from .predictor import Predictor, check_precision, resolve_device

# (least, most) of each count: a few digits too many would run for days, or allocate
# a batch of images beyond any memory, before the first frame is timed.
COUNT_LIMITS = {"batch": (1, 64), "frames": (1, 100_000), "warmup": (0, 1000), "agreement_scenes": (1, 1000)}


def run_bench(args: argparse.Namespace) -> int:
    # The settings, then where the report goes, before a frame is run: a
    # benchmark of minutes must not end in a file that cannot be written.
    check_settings(args)
    path = writable_file(args.json, "--json") if args.json else None
    (report,) = run_variants(args, [(args.precision, args.compile)])
    if path is not None:
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


def check_settings(args: argparse.Namespace) -> None:
    """ValueError naming the first setting out of range: the counts, the image size, the score threshold."""
    for name, (least, most) in COUNT_LIMITS.items():
        value = getattr(args, name)
        if not least <= value <= most:
            raise ValueError(f"--{name.replace('_', '-')} {value}: allowed: {least} to {most:,}")
    try:
        # The limits every image size of the project keeps: sides, aspect ratio, pixels.
        parse_size(f"{args.height}x{args.width}")
    except ValueError as exc:
        raise ValueError(f"--height {args.height} and --width {args.width}: {exc}") from None
    threshold = args.score_threshold
    # NaN fails every comparison, so it is tested for on its own.
    if threshold is not None and not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ValueError(f"--score-threshold {threshold}: allowed: a number from 0 to 1")


def run_variants(
    args: argparse.Namespace, variants: list[tuple[str, bool]], on_report: Callable[[dict], None] | None = None
) -> list[dict]:
    """Each (precision, compile) variant against the plain network; one report each.

    `on_report` gets each report as soon as it is ready, so that a run cut
    short still leaves the variants it finished.
    """
    check_settings(args)
    config = _config(args)
    device = resolve_device(args.device)
    for precision, _ in variants:
        check_precision(precision, device)
    images = [street_scene(args.height, args.width, seed=i).image for i in range(args.batch)]
    plain = _predictor(config, args, device, "fp32", compile=False, optimize=False)
    reports = []
    try:
        for precision, compile in variants:
            variant = argparse.Namespace(**{**vars(args), "precision": precision, "compile": compile})
            reports.append(_run_variant(variant, config, device, images, plain))
            print(_table(reports[-1]), flush=True)
            if on_report is not None:
                on_report(reports[-1])
    finally:
        plain.close()
    return reports


def _run_variant(args: argparse.Namespace, config, device, images, plain: Predictor) -> dict:
    """The variant's frames alternate with the plain network's, so that a load that comes
    and goes on the machine slows both alike and their ratio holds."""
    memory = _MemoryPeak(device)
    fast = _predictor(config, args, device, args.precision, compile=args.compile, optimize=True)
    warm_up_s = fast.warm_up([(args.height, args.width)], args.batch)
    peak = memory.peak_mb()
    ros, absent = _ros_stages(args, images, config)
    if ros is not None and pays_on(device):
        # As the node does there: the overlay painted with the maps.
        fast.set_overlay(ros.overlay_alpha)
    clock = StageClock(device)
    stages: dict[str, list[float]] = {}
    baseline: dict[str, list[float]] = {}
    try:
        with rpn_marked(plain.model, clock), rpn_marked(fast.model, clock):
            for index in range(args.warmup + args.frames):
                reference = _frame(plain, images, None, clock, baseline if index >= args.warmup else {})
                results = _frame(fast, images, ros, clock, stages if index >= args.warmup else {})
        agree = _agreement_over_scenes(args, fast, plain, results, reference)
    finally:
        if ros is not None:
            ros.close()
        fast.close()
    return _report(args, config, device, stages, baseline, agree, absent, warm_up_s, peak)


def _agreement_over_scenes(args: argparse.Namespace, fast: Predictor, plain: Predictor, results, reference) -> dict:
    """`agreement` pooled over the timed frame's scenes and more, up to `--agreement-scenes`, and its worst scene."""
    pairs = list(zip(results, reference))
    for seed in range(len(pairs), args.agreement_scenes):
        image = street_scene(args.height, args.width, seed=seed).image
        pairs.append((fast.predict([image])[0], plain.predict([image])[0]))
    pooled = agreement([ours for ours, _ in pairs], [theirs for _, theirs in pairs])
    pooled["scenes"] = len(pairs)
    pooled["worst_scene"] = min(agreement([ours], [theirs])["semantic_agreement"] for ours, theirs in pairs)
    return pooled


def _frame(predictor: Predictor, images, ros, clock: StageClock, samples: dict[str, list[float]]) -> list:
    """One frame of `images` through `predictor` (and ROS), its milliseconds per stage added to `samples`."""
    clock.start()
    arrays = images
    if ros is not None:
        arrays = ros.to_arrays()
        clock.mark("message to array")
    results = predictor.predict(arrays, on_stage=clock.mark)
    if ros is not None:
        ros.build(results, arrays)
        clock.mark("arrays to messages")
        ros.publish()
        clock.mark("publish")
    for stage, ms in clock.stop().items():
        samples.setdefault(stage, []).append(ms)
    return results


class _MemoryPeak:
    """The most memory a predictor takes, from its creation to now.

    On CUDA, above what was allocated before it (the plain network's weights);
    on the CPU, the whole process's peak resident size, which includes both networks.
    """

    def __init__(self, device: torch.device):
        self._device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._before = torch.cuda.memory_allocated(device)

    def peak_mb(self) -> dict:
        if self._device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self._device) - self._before
            return {"peak_memory_mb": peak / 2**20, "peak_memory_kind": "CUDA allocated by the predictor"}
        # ru_maxrss is in KiB on Linux.
        return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_memory_kind": "process peak RSS"}


def _config(args: argparse.Namespace):
    # A checkpoint alone brings its own config, as in the predictor.
    if args.config is None and args.checkpoint is not None:
        return read_config(args.checkpoint)
    return load_config(args.config or "b5_cityscapes")


def _predictor(config, args, device, precision: str, compile: bool, optimize: bool) -> Predictor:
    # Without trained weights both networks must start from the same random ones.
    torch.manual_seed(0)
    predictor = Predictor(config, args.checkpoint, str(device), precision, compile=compile, optimize=optimize)
    if args.score_threshold is not None:
        predictor.set_fusion(score_threshold=args.score_threshold)
    return predictor


def _ros_stages(args: argparse.Namespace, images, config):
    """The ROS stages and '', or None and why they are absent."""
    from .ros.bench_messages import RosStages, ros_available

    if args.ros == "off":
        return None, "switched off (--ros off)"
    missing = ros_available()
    if missing:
        if args.ros == "on":
            raise ValueError(f"--ros on: {missing}")
        return None, missing
    return RosStages(images, config.classes), ""


def _report(args, config, device, stages, baseline, agree, absent: str, warm_up_s: float, peak: dict) -> dict:
    frames = len(next(iter(stages.values())))
    model = _per_frame_sum(stages, MODEL_STAGES)
    plain_model = _per_frame_sum(baseline, MODEL_STAGES)
    total = _per_frame_sum(stages, STAGES)
    overhead = _per_frame_sum(stages, OVERHEAD_STAGES) if not absent else None
    speedup = float(np.median(plain_model) / np.median(model))
    return {
        "config": config.name,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "frames": frames,
        "warmup_frames": args.warmup,
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch_version": torch.__version__,
        "compiled": bool(args.compile),
        "weights": "random" if not _has_weights(config, args) else "trained",
        "score_threshold": args.score_threshold,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stages": {stage: summary(stages[stage]) for stage in STAGES if stage in stages},
        "absent_stages": {stage: absent for stage in ROS_STAGES} if absent else {},
        "model_ms": summary(model),
        "total_ms": summary(total),
        "fps": float(args.batch * 1000.0 / np.median(total)),
        "fps_with_output_thread": _fps_with_output_thread(stages, args.batch) if not absent else None,
        "eager_fp32_stages": {stage: summary(baseline[stage]) for stage in MODEL_STAGES if stage in baseline},
        "eager_fp32_total_ms": float(np.median(plain_model)),
        "speedup_vs_eager": speedup,
        "agreement_scenes": agree["scenes"],
        "semantic_agreement_vs_eager": agree["semantic_agreement"],
        "semantic_agreement_worst_scene_vs_eager": agree["worst_scene"],
        "panoptic_pixels_differ_vs_eager": agree["panoptic_pixels_differ"],
        "detections": agree["detections"],
        "detections_eager": agree["detections_reference"],
        "detections_matched_vs_eager": agree["detections_matched"],
        "node_overhead_ms": float(np.median(overhead)) if overhead is not None else None,
        "warm_up_s": warm_up_s,
        **peak,
    }


def _fps_with_output_thread(stages: dict[str, list[float]], batch: int) -> float:
    """The node's frame rate when its two threads overlap: set by the slower of them."""
    inference = [name for name in STAGES if name not in OUTPUT_THREAD_STAGES]
    slower = max(np.median(_per_frame_sum(stages, inference)), np.median(_per_frame_sum(stages, OUTPUT_THREAD_STAGES)))
    return float(batch * 1000.0 / slower)


def _per_frame_sum(stages: dict[str, list[float]], names) -> list[float]:
    present = [stages[name] for name in names if name in stages]
    return [sum(values) for values in zip(*present)]


def _has_weights(config, args) -> bool:
    from .predictor import default_checkpoint

    return args.checkpoint is not None or default_checkpoint(config) is not None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _table(report: dict) -> str:
    mode = "compiled" if report["compiled"] else "eager"
    lines = [
        f"{report['config']} at {report['height']}x{report['width']}, batch {report['batch']}, "
        f"{report['precision']} {mode} on {report['device']} ({report['device_name']}, "
        f"{report['cpu_threads']} CPU threads), {report['weights']} weights; "
        f"{report['frames']} frames after {report['warmup_frames']} warm-up",
        f"{'stage':24s} {'median ms':>10s} {'p95 ms':>10s} {'eager fp32':>11s}",
    ]
    for stage in STAGES:
        plain = report["eager_fp32_stages"].get(stage)
        plain_text = f"{plain['median_ms']:11.2f}" if plain else f"{'':11s}"
        if stage in report["stages"]:
            times = report["stages"][stage]
            lines.append(f"{stage:24s} {times['median_ms']:10.2f} {times['p95_ms']:10.2f} {plain_text}")
        else:
            why = report["absent_stages"].get(stage, "not reached")
            lines.append(f"{stage:24s} {'absent':>10s} {'':10s} {plain_text}   {why}")
    model, total = report["model_ms"], report["total_ms"]
    lines += [
        f"{'model and fusion':24s} {model['median_ms']:10.2f} {model['p95_ms']:10.2f} "
        f"{report['eager_fp32_total_ms']:11.2f}",
        f"{'total':24s} {total['median_ms']:10.2f} {total['p95_ms']:10.2f}",
        f"frames/s {report['fps']:.2f} one stage after another"
        + (f", {report['fps_with_output_thread']:.2f} with the node's output thread overlapping"
           if report["fps_with_output_thread"] is not None else "")
        + f"; warm-up {report['warm_up_s']:.1f} s; "
        f"peak memory {report['peak_memory_mb']:.0f} MB ({report['peak_memory_kind']})",
        f"speed-up over the plain eager fp32 network: x{report['speedup_vs_eager']:.2f} "
        f"({report['eager_fp32_total_ms']:.1f} -> {model['median_ms']:.1f} ms)",
        f"agreement with it over {report['agreement_scenes']} scene{'s' * (report['agreement_scenes'] != 1)}: semantic "
        f"{report['semantic_agreement_vs_eager']:.3f} % of pixels (worst scene "
        f"{report['semantic_agreement_worst_scene_vs_eager']:.3f} %), "
        f"{report['panoptic_pixels_differ_vs_eager']} panoptic pixels differ, "
        f"{report['detections_matched_vs_eager']} of {report['detections_eager']} detections matched "
        f"({report['detections']} found)",
    ]
    overhead = report["node_overhead_ms"]
    lines.append(
        f"node overhead (all outputs): {overhead:.2f} ms" if overhead is not None
        else "node overhead: not measured, the ROS stages are absent"
    )
    return "\n".join(lines)
