"""The node's own overhead per frame: everything but the model.

    python -m efficientps_ros.ros.benchmark [--height 1024 --width 2048 --frames 50]

Stages: the input Image to an RGB array, the PanopticResult to every output
message (semantic, instance, panoptic, overlay, detections), and publishing
them to a subscriber in another process. Prints the median and p95 of each
stage and of the total.

Then the frame rate of the node's own pipeline with a stand-in model that
waits `--model-ms` a frame, as a GPU model leaves the CPU waiting: outputs
built and published inline, against on the output thread while the next
frame is in the model. Like every ROS process here, run it with the same
FASTDDS_BUILTIN_TRANSPORTS as its peers.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

import numpy as np

from ..model.config import load_config
from ..result import Instance, PanopticResult
from .memory import keep_freed_memory
from .params import OUTPUTS

PREFIX = "/benchmark/efficientps"


def synthetic_result(height: int, width: int, instances: int, seed: int = 0) -> PanopticResult:
    """A street-like result: horizontal stuff bands and rectangular thing instances."""
    config = load_config("small")
    rng = np.random.default_rng(seed)
    semantic = np.empty((height, width), np.uint8)
    bands = np.linspace(0, height, 5).astype(int)
    for band, class_id in zip(range(4), (10, 2, 1, 0)):  # sky, building, sidewalk, road
        semantic[bands[band] : bands[band + 1]] = class_id
    instance = np.zeros((height, width), np.uint16)
    things = [c for c in config.classes if c.is_thing]
    found = []
    for k in range(1, instances + 1):
        info = things[k % len(things)]
        h, w = rng.integers(height // 20, height // 4), rng.integers(width // 40, width // 6)
        y0, x0 = rng.integers(0, height - h), rng.integers(0, width - w)
        instance[y0 : y0 + h, x0 : x0 + w] = k
        semantic[y0 : y0 + h, x0 : x0 + w] = info.train_id
        found.append(Instance(k, info.train_id, info.name, 0.9, (float(x0), float(y0), float(x0 + w), float(y0 + h))))
    label_ids = np.asarray([c.label_id for c in config.classes] + [0] * (256 - len(config.classes)), np.int32)
    panoptic = label_ids[semantic]
    panoptic = np.where(instance > 0, panoptic * 1000 + instance, panoptic).astype(np.int32)
    return PanopticResult(semantic, instance, panoptic, found)


def listen(seconds: float) -> None:
    """Subscriber side: receive every output for a while.

    Messages stay serialized, as a C++ subscriber such as rviz2 would leave
    them: converting 20 MB per frame to Python objects would only measure
    this listener.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    # SIGINT ends the loop below at its next turn. rclpy's handler would shut
    # rclpy down under it, and Python's would raise KeyboardInterrupt wherever
    # the loop is, in a finaliser too, where it is printed and then ignored.
    stopped = []
    signal.signal(signal.SIGINT, lambda *_: stopped.append(True))
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("benchmark_listener")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    for name in OUTPUTS:
        kind = Detection2DArray if name == "detections" else Image
        node.create_subscription(kind, f"{PREFIX}/{name}", lambda _msg: None, qos, raw=True)
    end = time.monotonic() + seconds
    try:
        while not stopped and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per stage and frame, publishing to a listener in another process."""
    import rclpy

    from .camera import CameraOutputs
    from .params import NodeSettings

    settings = NodeSettings.from_values({})
    rclpy.init()
    node = rclpy.create_node("benchmark")
    outputs = CameraOutputs(node, "/benchmark/image_raw", settings)
    listener = None
    if not args.no_listener:
        command = [sys.executable, "-m", "efficientps_ros.ros.benchmark", "--listen", str(args.frames + 30)]
        listener = subprocess.Popen(command)
    try:
        if listener is not None:
            _wait_for_subscribers(outputs, settings, args.listener_timeout)
        times = _time_frames(outputs, settings, args)
        if args.model_ms > 0:
            for overlap in (False, True):
                times[_rate_name(overlap)] = _frame_periods(outputs, settings, args, overlap)
        return times
    finally:
        if listener is not None:
            listener.send_signal(signal.SIGINT)
            try:
                listener.wait(10)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()
        node.destroy_node()
        rclpy.try_shutdown()


def _time_frames(outputs, settings, args: argparse.Namespace) -> dict[str, list[float]]:
    """What the node does per frame, minus the model: decode, build every output, publish."""
    from std_msgs.msg import Header

    from ..visualize import PanopticPainter
    from .image_codec import array_to_image, to_rgb8

    result = synthetic_result(args.height, args.width, args.instances)
    rgb = np.random.default_rng(1).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    frame = np.ascontiguousarray(rgb[..., ::-1]) if args.encoding == "bgr8" else rgb
    message = array_to_image(frame, args.encoding, Header(frame_id="camera"))
    painter = PanopticPainter(load_config("small").classes)
    times: dict[str, list[float]] = {"conversion in": [], "messages": [], "publish": []}
    times.update({f"  {name}": [] for name in OUTPUTS})
    for index in range(args.warmup + args.frames):
        measured = index >= args.warmup
        start = time.perf_counter()
        image = to_rgb8(message)
        converted = time.perf_counter()
        built = {}
        for name in OUTPUTS:
            begin = time.perf_counter()
            built.update(outputs.build([name], result, image, message.header, settings, painter))
            if measured:
                times[f"  {name}"].append(time.perf_counter() - begin)
        messages_done = time.perf_counter()
        outputs.wanted(settings)  # the node asks every frame who listens
        outputs.send(built)
        published = time.perf_counter()
        if measured:
            times["conversion in"].append(converted - start)
            times["messages"].append(messages_done - converted)
            times["publish"].append(published - messages_done)
        time.sleep(args.period)
    times["total"] = [sum(stages) for stages in zip(times["conversion in"], times["messages"], times["publish"])]
    return times


class _WaitingModel:
    """Stands in for a predictor on a GPU: it waits `seconds` (without the GIL) and returns `result`."""

    def __init__(self, result: PanopticResult, seconds: float):
        import torch

        self.config = load_config("small")
        self.device = torch.device("cpu")
        self._result, self._seconds = result, seconds

    def predict(self, images):
        time.sleep(self._seconds)
        return [self._result for _ in images]


def _rate_name(overlap: bool) -> str:
    return "frame, output thread" if overlap else "frame, inline outputs"


def _frame_periods(outputs, settings, args: argparse.Namespace, overlap: bool) -> list[float]:
    """Seconds per frame through the node's pipeline with a `--model-ms` model, frames back to back."""
    from std_msgs.msg import Header

    from .diagnostics import CameraStats
    from .frame_slots import Frame
    from .image_codec import array_to_image
    from .pipeline import PerceptionPipeline

    result = synthetic_result(args.height, args.width, args.instances)
    rgb = np.random.default_rng(1).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    message = array_to_image(rgb, "rgb8", Header(frame_id="camera"))
    camera = "/benchmark/image_raw"
    model = _WaitingModel(result, args.model_ms / 1000)
    pipeline = PerceptionPipeline(model, settings, {camera: outputs}, {camera: CameraStats()}, print, overlap)
    periods = []
    try:
        last = time.perf_counter()
        for index in range(args.warmup + args.frames):
            pipeline.process([Frame(camera, message, time.monotonic())])
            now = time.perf_counter()
            if index >= args.warmup:
                periods.append(now - last)
            last = now
        pipeline.drain()
    finally:
        pipeline.close()
    return periods


def _wait_for_subscribers(outputs, settings, timeout: float) -> None:
    end = time.monotonic() + timeout
    while len(outputs.wanted(settings)) < len(OUTPUTS):
        if time.monotonic() > end:
            raise SystemExit(f"the listener did not subscribe to all outputs within {timeout} s")
        time.sleep(0.05)


def report(times: dict[str, list[float]], args: argparse.Namespace) -> str:
    from .serialized_publish import direct_publishing

    lines = [
        f"node overhead at {args.height}x{args.width} {args.encoding}, {args.instances} instances, "
        f"{args.frames} frames, all outputs; images published through "
        f"{'rcl from their own buffer' if direct_publishing() else 'rclpy'}",
        f"{'stage':20s} {'median ms':>10s} {'p95 ms':>10s}",
    ]
    rates = {name: times.pop(name) for name in (_rate_name(False), _rate_name(True)) if name in times}
    for stage, values in times.items():
        ms = np.asarray(values) * 1000
        lines.append(f"{stage:20s} {np.median(ms):10.2f} {np.percentile(ms, 95):10.2f}")
    if rates:
        lines.append(f"the node's pipeline with a model that waits {args.model_ms:g} ms a frame, as on a GPU:")
        for name, values in rates.items():
            ms = np.asarray(values) * 1000
            lines.append(f"{name:24s} {np.median(ms):6.2f} ms median, {1000 / np.median(ms):5.1f} frames/s")
        inline, threaded = (np.median(v) for v in rates.values())
        lines.append(f"output thread / inline frame rate: x{inline / threaded:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efficientps_ros.ros.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8")
    parser.add_argument("--period", type=float, default=0.05, help="seconds between frames, so the listener keeps up")
    parser.add_argument("--no-listener", action="store_true", help="publish with no subscriber")
    parser.add_argument("--model-ms", type=float, default=30.0,
                        help="also time the node's pipeline with a model that waits this long (0: do not)")
    parser.add_argument("--listener-timeout", type=float, default=20.0)
    parser.add_argument("--listen", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # The node does the same at start; the listener, so that its page faults do not
    # steal the CPU from the process measured.
    keep_freed_memory()
    if args.listen is not None:
        listen(args.listen)
        return 0
    print(report(measure(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
