"""`make demo`: the node in its own process, fed a synthetic camera stream.

This process plays the camera and the consumer: it publishes street scenes on
/camera/image_raw, listens to every output of the node, prints what arrived
and writes the last frame's input, overlay and maps to the output folder.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import rclpy
from PIL import Image as PILImage
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ..data.synthetic import street_scene
from .camera import IMAGE_OUTPUTS, LABEL_INFO_QOS
from .image_codec import array_to_image, image_to_array

CAMERA = "/camera/image_raw"
OUTPUTS = "/camera/efficientps"


def _start_node(log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The paper's min_stuff_area of 2048 px is for 1024x2048 frames; the demo's are a sixth of that.
    command = [sys.executable, "-m", "efficientps_ros.ros.node", "--ros-args", "-p", f"image_topics:=['{CAMERA}']",
               "-p", "min_stuff_area:=256"]
    log = log_path.open("w")
    # Same process group as the demo: whoever stops the demo stops the node too.
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


class _Consumer:
    """Subscribes to every output and keeps what came, keyed by input stamp."""

    def __init__(self, node):
        self.received: dict[str, dict[int, object]] = defaultdict(dict)
        self.arrival: dict[tuple[str, int], float] = {}
        self.label_info = None
        for name in IMAGE_OUTPUTS:
            node.create_subscription(Image, f"{OUTPUTS}/{name}", self._keeper(name), 10)
        node.create_subscription(Detection2DArray, f"{OUTPUTS}/detections", self._keeper("detections"), 10)
        node.create_subscription(LabelInfo, f"{OUTPUTS}/label_info", self._label_info, LABEL_INFO_QOS)

    def _keeper(self, name: str):
        def keep(msg) -> None:
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            self.received[name][stamp] = msg
            self.arrival[(name, stamp)] = time.monotonic()

        return keep

    def _label_info(self, msg) -> None:
        self.label_info = msg


def _wait(executor, condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.05)
    return condition()


def run_demo(frames: int = 20, out: Path = Path("outputs/demo"), height: int = 384, width: int = 768) -> int:
    out.mkdir(parents=True, exist_ok=True)
    # This process and the node must share the transport, or they do not talk.
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    node_process = _start_node(out / "node.log")
    rclpy.init()
    demo = rclpy.create_node("efficientps_demo_camera")
    executor = SingleThreadedExecutor()
    executor.add_node(demo)
    try:
        consumer = _Consumer(demo)
        camera = demo.create_publisher(Image, CAMERA, 10)
        print(f"waiting for the node to load its model and subscribe to {CAMERA} ...")
        if not _wait(executor, lambda: camera.get_subscription_count() > 0, 120.0):
            print(f"the node did not come up; its log is in {out / 'node.log'}", file=sys.stderr)
            return 1
        sent = _stream(executor, demo, camera, frames, height, width)
        _wait(executor, lambda: len(consumer.received["panoptic"]) >= 1 and _settled(consumer, sent), 30.0)
        return _report(consumer, sent, out)
    finally:
        demo.destroy_node()
        rclpy.try_shutdown()
        _stop_node(node_process)


def _stream(executor, demo, camera, frames: int, height: int, width: int) -> dict:
    """Publish at 5 Hz; a slow model drops frames, and the node counts them."""
    sent = {}
    for index in range(frames):
        scene = street_scene(height, width, seed=index)
        msg = array_to_image(scene.image, "rgb8")
        msg.header.stamp = demo.get_clock().now().to_msg()
        msg.header.frame_id = "camera"
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        sent[stamp] = (scene.image, time.monotonic())
        camera.publish(msg)
        _wait(executor, lambda: False, 0.2)
    return sent


def _settled(consumer: _Consumer, sent: dict) -> bool:
    last = max(consumer.received["panoptic"], default=None)
    return last == max(sent)


def _report(consumer: _Consumer, sent: dict, out: Path) -> int:
    print(f"\nsent {len(sent)} frames of {next(iter(sent.values()))[0].shape[1::-1]} (w, h) rgb8 to {CAMERA}")
    ok = True
    for name in (*IMAGE_OUTPUTS, "detections"):
        got = consumer.received[name]
        stamps_ok = all(stamp in sent for stamp in got)
        latencies = [consumer.arrival[(name, s)] - sent[s][1] for s in got if s in sent]
        detail = ""
        if got and name != "detections":
            msg = next(iter(got.values()))
            detail = f"{msg.encoding:6s} {msg.width}x{msg.height}"
        median = f"{statistics.median(latencies) * 1000:7.0f} ms" if latencies else "      -"
        print(f"  {OUTPUTS}/{name:11s} {len(got):3d} msgs  {detail:16s} latency median {median}"
              f"  headers match inputs: {stamps_ok}")
        ok &= bool(got) and stamps_ok
    classes = len(consumer.label_info.class_map) if consumer.label_info else 0
    print(f"  {OUTPUTS}/label_info  {classes} classes, void included (transient local)")
    ok &= classes > 0
    if consumer.received["detections"]:
        counts = [len(m.detections) for m in consumer.received["detections"].values()]
        print(f"  instances per frame: {counts}")
    _save_last(consumer, sent, out)
    print(f"\nwrote the last frame's input, overlay and maps to {out}/ (node log: {out / 'node.log'})")
    return 0 if ok else 1


def _save_last(consumer: _Consumer, sent: dict, out: Path) -> None:
    """The last frame as input | overlay | instances, and its semantic and instance maps."""
    stamp = max(consumer.received["overlay"], default=None)
    if stamp is None or stamp not in consumer.received["instance"]:
        return
    image = sent[stamp][0]
    overlay = image_to_array(consumer.received["overlay"][stamp])
    instance = np.ascontiguousarray(image_to_array(consumer.received["instance"][stamp]))
    panels = np.concatenate([image, overlay, _instance_view(image, instance)], axis=1)
    PILImage.fromarray(panels).save(out / "input_overlay_instances.png")
    PILImage.fromarray(instance).save(out / "instance.png")
    if stamp in consumer.received["semantic"]:
        semantic = np.ascontiguousarray(image_to_array(consumer.received["semantic"][stamp]))
        PILImage.fromarray(semantic).save(out / "semantic.png")


def _instance_view(image: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Each instance in its own bright colour over a dimmed grey input."""
    grey = (image.mean(axis=2) // 2).astype(np.uint8)
    view = np.repeat(grey[..., None], 3, axis=2)
    palette = np.random.default_rng(0).integers(64, 256, (int(instance.max()) + 1, 3), dtype=np.uint8)
    things = instance > 0
    view[things] = palette[instance[things]]
    return view
