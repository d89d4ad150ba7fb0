"""The node as users run it: its own process, the small preset, frames published from here.

One node serves two cameras for most tests; the compressed transport, refused
start-up parameters and a missing checkpoint get processes of their own. A
failed activate is checked in this process, where the node's entities can be counted.
"""
from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from PIL import Image as PILImage
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.model.config import CITYSCAPES_CLASSES

from .conftest import error_lines, wait_until

CAM_A, CAM_B, CAM_C = "/cam_a/image_raw", "/cam_b/image_raw", "/cam_c/image_raw"
IMAGE_OUTPUTS = {"semantic": "mono8", "instance": "mono16", "panoptic": "32SC1", "overlay": "rgb8"}
START_TIMEOUT = 180.0
FRAME_TIMEOUT = 60.0
DISCOVERY_TIMEOUT = 30.0
DISCOVERY_ATTEMPTS = 3
RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
_stamps = itertools.count(1)


class NodeProcess:
    """`python -m efficientps_ros.ros.node --ros-args ...` with its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *ros_args: str):
        self.log_path = log_path
        command = [sys.executable, "-m", "efficientps_ros.ros.node", "--ros-args", *ros_args]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, fragment: str, timeout: float = START_TIMEOUT) -> None:
        wait_until(lambda: fragment in self.text() or self.process.poll() is not None, timeout)
        assert fragment in self.text(), f"{fragment!r} not in the node's output:\n{self.text()[-3000:]}"

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        """SIGINT, as Ctrl-C would; kill if the node lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Collector:
    """Every message received on one topic, kept in arrival order."""

    def __init__(self):
        self.messages: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        with self._lock:
            self.messages.append(message)

    def with_stamp(self, stamp: Time) -> Any:
        with self._lock:
            for message in reversed(self.messages):
                if message.header.stamp == stamp:
                    return message
        return None

    def latest(self) -> Any:
        with self._lock:
            return self.messages[-1] if self.messages else None


class Ros:
    """The test's own ROS side: publishers, subscriptions and service calls, spun in a thread."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("efficientps_test_driver", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._publishers: dict[str, Any] = {}
        self._collectors: dict[str, Collector] = {}

    def publisher(self, topic: str, kind: type = Image):
        if topic not in self._publishers:
            self._publishers[topic] = self.node.create_publisher(kind, topic, RELIABLE)
        return self._publishers[topic]

    def collect(self, topic: str, kind: type = Image, qos: QoSProfile = RELIABLE) -> Collector:
        if topic not in self._collectors:
            collector = Collector()
            self.node.create_subscription(kind, topic, collector, qos)
            self._collectors[topic] = collector
        return self._collectors[topic]

    def call(self, kind: type, service: str, request: Any, timeout: float = 60.0) -> Any:
        client = self.node.create_client(kind, service)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"no service {service}"
            future = client.call_async(request)
            assert wait_until(future.done, timeout), f"{service} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def new_header(frame_id: str) -> Header:
    return Header(stamp=Time(sec=1_700_000_000, nanosec=next(_stamps)), frame_id=frame_id)


def rgb_frame(height: int, width: int, frame_id: str, seed: int = 0) -> Image:
    """A synthetic street scene: the packaged model finds its cars and people."""
    rgb = street_scene(height, width, seed=seed).image
    return Image(header=new_header(frame_id), height=height, width=width, encoding="rgb8",
                 step=width * 3, data=rgb.tobytes())


def jpeg_frame(height: int, width: int, frame_id: str, fmt: str = "jpeg") -> CompressedImage:
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, fmt.upper())
    return CompressedImage(header=new_header(frame_id), format=fmt, data=buffer.getvalue())


def prefix(topic: str) -> str:
    return topic.rsplit("/", 1)[0] + "/efficientps"


def output_collectors(ros: Ros, camera: str) -> dict[str, Collector]:
    collectors = {name: ros.collect(f"{prefix(camera)}/{name}") for name in IMAGE_OUTPUTS}
    collectors["detections"] = ros.collect(f"{prefix(camera)}/detections", Detection2DArray)
    return collectors


def publish_until(ros: Ros, topic: str, message: Any, done: Callable[[], Any], timeout: float = FRAME_TIMEOUT):
    """Publish `message` again every few seconds until `done()`: discovery and best effort may lose it."""
    publisher = ros.publisher(topic, type(message))
    wait_until(lambda: publisher.get_subscription_count() > 0, timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        publisher.publish(message)
        result = wait_until(done, 3.0)
        if result:
            return result
    return done()


def outputs_for(ros: Ros, camera: str, message: Any) -> dict[str, Any]:
    """Publish one frame and return every output carrying its stamp."""
    collectors = output_collectors(ros, camera)
    stamp = message.header.stamp

    def all_arrived():
        found = {name: c.with_stamp(stamp) for name, c in collectors.items()}
        return found if all(m is not None for m in found.values()) else None

    found = publish_until(ros, camera, message, all_arrived)
    assert found, f"not every output of {camera} arrived for stamp {stamp}"
    return found


def assert_same_header(actual: Header, expected: Header) -> None:
    assert actual.stamp == expected.stamp
    assert actual.frame_id == expected.frame_id


def diagnostic_status(ros: Ros, name: str, predicate: Callable[[dict], bool] = lambda v: True,
                      timeout: float = 20.0) -> dict:
    """The values of the latest status called `name` on /diagnostics that satisfies `predicate`."""
    collector = ros.collect("/diagnostics", DiagnosticArray, QoSProfile(depth=10))

    def find():
        with collector._lock:
            arrays = list(reversed(collector.messages[-20:]))
        for array in arrays:
            for status in array.status:
                if status.name == name:
                    values = {kv.key: kv.value for kv in status.values}
                    values["_level"], values["_message"] = status.level, status.message
                    if predicate(values):
                        return values
        return None

    values = wait_until(find, timeout)
    assert values, f"no diagnostics {name!r} satisfying the check"
    return values


def camera_status(ros: Ros, camera: str, predicate: Callable[[dict], bool] = lambda v: True,
                  node_name: str = "efficientps") -> dict:
    """The latest diagnostics values of `camera` that satisfy `predicate`."""
    return diagnostic_status(ros, f"{node_name}: camera {camera}", predicate)


def node_state(ros: Ros, name: str = "efficientps") -> str:
    return ros.call(GetState, f"/{name}/get_state", GetState.Request()).current_state.label


def change_state(ros: Ros, transition: int, name: str = "efficientps") -> bool:
    request = ChangeState.Request()
    request.transition.id = transition
    return ros.call(ChangeState, f"/{name}/change_state", request, timeout=120.0).success


def set_parameter(ros: Ros, name: str, value: Any):
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return ros.call(SetParameters, "/efficientps/set_parameters", request).results[0]


@pytest.fixture(scope="module")
def ros():
    harness = Ros()
    yield harness
    harness.close()


def start_node(ros: Ros, env: dict[str, str], log_path: Path, ros_args: Sequence[str], announces: str) -> NodeProcess:
    """The node, active and seen from this side's graph publishing `announces`.

    A participant joining a running graph is, rarely, never discovered by it
    (Fast DDS over loopback, the same process staying unseen for minutes); a
    fresh process is, so one that stays unseen is replaced.
    """
    for attempt in range(1, DISCOVERY_ATTEMPTS + 1):
        path = log_path if attempt == 1 else log_path.with_suffix(f".{attempt}.log")
        process = NodeProcess(env, path, *ros_args)
        process.wait_for_log("active:")
        if wait_until(lambda: ros.node.count_publishers(announces) > 0, DISCOVERY_TIMEOUT):
            return process
        process.stop()
        warnings.warn(f"{path.name}: active but not discovered in {DISCOVERY_TIMEOUT:.0f} s; started again")
    pytest.fail(f"{log_path}: a node publishing {announces} was never discovered, in {DISCOVERY_ATTEMPTS} starts")


@pytest.fixture(scope="module")
def node(ros, ros_env, tmp_path_factory):
    process = start_node(
        ros, ros_env, tmp_path_factory.mktemp("node") / "node.log",
        (
            "-p", "model.preset_or_config:=small",
            "-p", "device:=cpu",
            "-p", f"image_topics:=['{CAM_A}', '{CAM_B}']",
            "-p", "diagnostics_period:=0.5",
            "-p", "max_image_pixels:=1000000",
        ),
        announces=f"{prefix(CAM_A)}/semantic",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def first_outputs(ros, node):
    frame = rgb_frame(128, 256, "camera_a")
    return frame, outputs_for(ros, CAM_A, frame)


def test_every_output_keeps_the_input_header_and_size(first_outputs):
    frame, found = first_outputs
    for name, encoding in IMAGE_OUTPUTS.items():
        image = found[name]
        assert image.encoding == encoding, name
        assert (image.height, image.width) == (128, 256), name
        assert_same_header(image.header, frame.header)
    assert_same_header(found["detections"].header, frame.header)


def test_label_maps_are_consistent_with_each_other(first_outputs):
    _, found = first_outputs
    semantic = np.frombuffer(bytes(found["semantic"].data), np.uint8)
    instance = np.frombuffer(bytes(found["instance"].data), np.uint16)
    panoptic = np.frombuffer(bytes(found["panoptic"].data), np.int32)
    assert ((panoptic == 0) == (semantic == 255)).all()
    things = instance > 0
    assert (panoptic[things] % 1000 == instance[things]).all()


def test_detections_match_the_instance_image(first_outputs):
    _, found = first_outputs
    instance = np.frombuffer(bytes(found["instance"].data), np.uint16).reshape(128, 256)
    detections = found["detections"].detections
    ids = [int(d.id) for d in detections]
    assert ids, "no detections on a street scene"
    assert sorted(ids) == list(range(1, len(ids) + 1))
    assert set(np.unique(instance[instance > 0]).tolist()) == set(ids)
    things = {c.name for c in CITYSCAPES_CLASSES if c.is_thing}
    for detection in detections:
        ys, xs = np.nonzero(instance == int(detection.id))
        box = detection.bbox
        half_w, half_h = box.size_x / 2, box.size_y / 2
        assert box.center.position.x - half_w <= xs.min() and xs.max() + 1 <= box.center.position.x + half_w
        assert box.center.position.y - half_h <= ys.min() and ys.max() + 1 <= box.center.position.y + half_h
        assert detection.results[0].hypothesis.class_id in things
        assert 0.5 <= detection.results[0].hypothesis.score <= 1.0


def test_label_info_reaches_a_late_subscriber(ros, first_outputs):
    collector = ros.collect(f"{prefix(CAM_A)}/label_info", LabelInfo, LATCHED)
    info = wait_until(collector.latest, 20.0)
    assert info is not None, "no label_info for a subscriber that joined late"
    names = {c.class_id: c.class_name for c in info.class_map}
    assert names[0] == "road" and names[255] == "void"


def test_two_cameras_at_once(ros, node, first_outputs):
    frame_a = rgb_frame(128, 256, "camera_a", seed=1)
    frame_b = rgb_frame(96, 160, "camera_b", seed=2)
    collectors_a, collectors_b = output_collectors(ros, CAM_A), output_collectors(ros, CAM_B)

    def both_arrived():
        return all(c.with_stamp(frame_a.header.stamp) for c in collectors_a.values()) and all(
            c.with_stamp(frame_b.header.stamp) for c in collectors_b.values()
        )

    publisher_b = ros.publisher(CAM_B)
    wait_until(lambda: publisher_b.get_subscription_count() > 0, FRAME_TIMEOUT)
    end = time.monotonic() + FRAME_TIMEOUT
    while not both_arrived() and time.monotonic() < end:
        ros.publisher(CAM_A).publish(frame_a)
        publisher_b.publish(frame_b)
        wait_until(both_arrived, 3.0)
    assert both_arrived()
    semantic_b = collectors_b["semantic"].with_stamp(frame_b.header.stamp)
    assert (semantic_b.height, semantic_b.width) == (96, 160)
    assert semantic_b.header.frame_id == "camera_b"
    assert collectors_a["overlay"].with_stamp(frame_a.header.stamp).header.frame_id == "camera_a"


def bad_frames() -> dict[str, tuple[Image, str]]:
    good = rgb_frame(64, 96, "camera_b")
    raw = bytes(good.data)
    return {
        "bad encoding": (Image(header=new_header("b"), height=64, width=96, encoding="yuv9", step=288, data=raw),
                         "yuv9"),
        "truncated data": (Image(header=new_header("b"), height=64, width=96, encoding="rgb8", step=288,
                                 data=raw[:1000]), "truncated"),
        "step mismatch": (Image(header=new_header("b"), height=64, width=96, encoding="rgb8", step=100,
                                data=raw[: 100 * 64]), "step 100"),
        "empty image": (Image(header=new_header("b"), height=0, width=0, encoding="rgb8", step=0, data=b""),
                        "empty"),
        "huge image": (Image(header=new_header("b"), height=100_000, width=100_000, encoding="rgb8", step=300_000,
                             data=b"\0" * 16), "exceeds max_image_pixels"),
    }


@pytest.mark.parametrize("kind", list(bad_frames()))
def test_bad_input_is_reported_and_the_next_good_frame_processed(ros, node, first_outputs, kind):
    bad, fragment = bad_frames()[kind]
    logged = publish_until(ros, CAM_B, bad, lambda: fragment in node.text())
    assert logged, f"no error naming {fragment!r} in the node's output"
    line = next(line for line in node.text().splitlines() if fragment in line)
    assert CAM_B in line and "ERROR" in line
    status = camera_status(ros, CAM_B, lambda v: fragment in v["last_error"])
    assert int(status["frames_with_errors"]) >= 1
    good = rgb_frame(64, 96, "camera_b")
    found = outputs_for(ros, CAM_B, good)
    assert_same_header(found["semantic"].header, good.header)
    assert node.process.poll() is None


def test_the_same_problem_on_another_camera_is_still_logged(ros, node, first_outputs):
    """CAM_B's bad encoding was logged by the test above; CAM_A's is news of its own."""
    bad, fragment = bad_frames()["bad encoding"]
    assert publish_until(ros, CAM_A, bad, lambda: any(
        CAM_A in line and fragment in line for line in node.text().splitlines())), node.text()[-3000:]
    assert sum(CAM_A in line and fragment in line for line in node.text().splitlines()) == 1


def test_a_flood_drops_frames_and_keeps_memory_bounded(ros, node, first_outputs):
    publisher = ros.publisher(CAM_A)
    before_counts = camera_status(ros, CAM_A)
    frames = [rgb_frame(240, 320, "flood", seed=i % 4) for i in range(5)]
    outputs_for(ros, CAM_A, frames[0])  # the node has met this size before the baseline
    rss_before = node.rss_mb()
    sent = 300
    for index in range(sent):
        frame = frames[index % len(frames)]
        frame.header = new_header("flood")
        publisher.publish(frame)
        time.sleep(0.01)
    rss_after = node.rss_mb()
    slow = camera_status(ros, CAM_A, lambda v: "% of frames dropped" in v["_message"])
    assert slow["_level"] == DiagnosticStatus.WARN and "slower than the camera" in slow["_message"]
    status = camera_status(
        ros, CAM_A, lambda v: int(v["frames_received"]) >= int(before_counts["frames_received"]) + sent // 2
    )
    received = int(status["frames_received"]) - int(before_counts["frames_received"])
    dropped = int(status["frames_dropped"]) - int(before_counts["frames_dropped"])
    published = int(status["frames_published"]) - int(before_counts["frames_published"])
    assert dropped > 0
    assert published < received
    assert rss_after - rss_before < 200, f"RSS grew from {rss_before:.0f} MB to {rss_after:.0f} MB"
    assert outputs_for(ros, CAM_A, rgb_frame(128, 256, "after_flood"))["overlay"] is not None


def test_frames_lost_in_transport_raise_a_warning_that_says_so(ros, node, first_outputs):
    """36 MB frames over best effort: nearly all are lost on the way (see the README's measurements)."""
    best_effort = ros.node.create_publisher(Image, CAM_B, QoSProfile(depth=1,
                                            reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        huge = Image(header=new_header("huge"), height=3000, width=4000, encoding="rgb8", step=12000,
                     data=bytes(3000 * 4000 * 3))
        assert wait_until(lambda: best_effort.get_subscription_count() > 0, FRAME_TIMEOUT)
        for _ in range(20):
            best_effort.publish(huge)
            time.sleep(0.1)
        status = camera_status(ros, CAM_B, lambda v: "lost in transport" in v["_message"])
        assert status["_level"] >= DiagnosticStatus.WARN
        assert int(status["frames_lost_in_transport"]) > 0 and "reliable" in status["_message"]
    finally:
        ros.node.destroy_publisher(best_effort)


def test_invalid_parameters_are_refused_with_a_message_naming_them(ros, node):
    out_of_range = set_parameter(ros, "score_threshold", 1.5)
    assert not out_of_range.successful
    assert "score_threshold" in out_of_range.reason and "1.0" in out_of_range.reason
    bad_choice = set_parameter(ros, "precision", "fp8")
    assert not bad_choice.successful
    assert "precision" in bad_choice.reason and "fp32, fp16, bf16" in bad_choice.reason
    needs_cleanup = set_parameter(ros, "device", "cuda")
    assert not needs_cleanup.successful and "cleanup" in needs_cleanup.reason
    assert set_parameter(ros, "score_threshold", 0.6).successful
    # label_info carries the threshold, and late subscribers get the new one.
    label_info = ros.collect(f"{prefix(CAM_A)}/label_info", LabelInfo, LATCHED)
    assert wait_until(lambda: label_info.latest() is not None and abs(label_info.latest().threshold - 0.6) < 1e-6,
                      20.0), "label_info was not republished with the new score_threshold"
    assert set_parameter(ros, "use_sim_time", False).successful
    assert node.process.poll() is None


def test_lifecycle_deactivate_activate_and_cleanup(ros, node, first_outputs):
    assert node_state(ros) == "active"
    assert change_state(ros, Transition.TRANSITION_DEACTIVATE)
    assert node_state(ros) == "inactive"
    silent = rgb_frame(128, 256, "while_inactive")
    semantic = ros.collect(f"{prefix(CAM_A)}/semantic")
    for _ in range(3):
        ros.publisher(CAM_A).publish(silent)
        time.sleep(0.5)
    assert semantic.with_stamp(silent.header.stamp) is None
    assert change_state(ros, Transition.TRANSITION_ACTIVATE)
    assert outputs_for(ros, CAM_A, rgb_frame(128, 256, "reactivated"))["semantic"] is not None
    assert change_state(ros, Transition.TRANSITION_DEACTIVATE)
    assert change_state(ros, Transition.TRANSITION_CLEANUP)
    assert node_state(ros) == "unconfigured"
    assert set_parameter(ros, "inference_height", 64).successful
    assert set_parameter(ros, "inference_width", 128).successful
    assert change_state(ros, Transition.TRANSITION_CONFIGURE)
    assert change_state(ros, Transition.TRANSITION_ACTIVATE)
    found = outputs_for(ros, CAM_A, rgb_frame(128, 256, "reconfigured"))
    assert (found["panoptic"].height, found["panoptic"].width) == (128, 256)
    # A live limit below the fixed network input would refuse every frame from now on.
    too_small = set_parameter(ros, "max_image_pixels", 64 * 128 - 1)
    assert not too_small.successful
    assert "64x128" in too_small.reason and "max_image_pixels (8191)" in too_small.reason
    assert outputs_for(ros, CAM_A, rgb_frame(128, 256, "limit kept"))["semantic"] is not None


# The namespaced node: /car1/seg, its default relative topic remapped, an absolute one remapped too,
# reliable input, and use_sim_time with no /clock anywhere.
NS_NODE = "/car1/seg"
NS_CAMERA, NS_ABSOLUTE = "/car1/front/image", "/elsewhere/image"


@pytest.fixture(scope="module")
def namespaced_node(ros, ros_env, tmp_path_factory, node):
    process = start_node(
        ros, ros_env, tmp_path_factory.mktemp("namespaced") / "node.log",
        (
            "-r", "__ns:=/car1",
            "-r", "__node:=seg",
            "-r", "camera/image_raw:=front/image",
            "-r", f"/shared/image_raw:={NS_ABSOLUTE}",
            "-p", "image_topics:=['camera/image_raw', '/shared/image_raw']",
            "-p", "model.preset_or_config:=small",
            "-p", "device:=cpu",
            "-p", "input_qos.reliability:=reliable",
            "-p", "use_sim_time:=true",
            "-p", "diagnostics_period:=0.5",
        ),
        announces=f"{ns_prefix(NS_CAMERA)}/semantic",
    )
    try:
        yield process
    finally:
        process.stop()


def ns_prefix(camera: str) -> str:
    return camera.rsplit("/", 1)[0] + "/efficientps"


def test_outputs_follow_the_namespace_and_remaps_and_the_log_names_them(ros, namespaced_node):
    assert (f"active: {NS_CAMERA} -> /car1/front/efficientps/*, {NS_ABSOLUTE} -> /elsewhere/efficientps/*"
            in namespaced_node.text()), namespaced_node.text()[-2000:]
    for camera in (NS_CAMERA, NS_ABSOLUTE):
        frame = rgb_frame(96, 160, f"ns_{camera}")
        found = outputs_for(ros, camera, frame)
        assert_same_header(found["semantic"].header, frame.header)
    # Nothing is published where the defaults would have put it.
    assert not ros.node.count_publishers("/camera/efficientps/semantic")
    assert ros.node.count_publishers(f"{ns_prefix(NS_CAMERA)}/semantic") == 1
    assert node_state(ros, "car1/seg") == "active"


def test_diagnostics_run_on_steady_time_under_use_sim_time_without_a_clock(ros, namespaced_node):
    assert not ros.node.count_publishers("/clock")
    collector = ros.collect("/diagnostics", DiagnosticArray, QoSProfile(depth=10))

    def reports() -> int:
        with collector._lock:
            return sum(any(status.name == "seg: model" for status in array.status) for array in collector.messages)

    camera_status(ros, NS_CAMERA, node_name="seg")
    before = reports()
    assert wait_until(lambda: reports() >= before + 3, 10.0), "diagnostics stopped without /clock"


def test_a_publisher_with_incompatible_qos_raises_a_warning(ros, namespaced_node):
    best_effort = ros.node.create_publisher(Image, NS_ABSOLUTE, QoSProfile(depth=1,
                                            reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        status = camera_status(ros, NS_ABSOLUTE, lambda v: v["_level"] == DiagnosticStatus.WARN, node_name="seg")
        assert "incompatible" in status["_message"] and "RELIABILITY" in status["_message"]
        assert int(status["incompatible_qos_events"]) >= 1
        namespaced_node.wait_for_log("QoS is incompatible", 20.0)
    finally:
        ros.node.destroy_publisher(best_effort)


def test_deactivate_during_a_batch_drops_its_result(ros, namespaced_node):
    big = rgb_frame(1536, 3072, "in_flight")
    semantic = ros.collect(f"{ns_prefix(NS_CAMERA)}/semantic")
    outputs_for(ros, NS_CAMERA, rgb_frame(1536, 3072, "warm_up"))  # this size has run once
    model_ms = float(camera_status(ros, NS_CAMERA, node_name="seg")["model_time_median_ms"])
    received = int(camera_status(ros, NS_CAMERA, node_name="seg")["frames_received"])
    errors_before = len(error_lines(namespaced_node.text()))
    ros.publisher(NS_CAMERA).publish(big)
    camera_status(ros, NS_CAMERA, lambda v: int(v["frames_received"]) > received, node_name="seg")
    begun = time.monotonic()
    assert change_state(ros, Transition.TRANSITION_DEACTIVATE, "car1/seg")
    deactivate_ms = (time.monotonic() - begun) * 1000
    print(f"deactivate during a batch: {deactivate_ms:.0f} ms; the model takes {model_ms:.0f} ms on the frame "
          f"(x{model_ms / deactivate_ms:.1f})")
    assert change_state(ros, Transition.TRANSITION_ACTIVATE, "car1/seg")
    assert outputs_for(ros, NS_CAMERA, rgb_frame(96, 160, "after_in_flight"))["semantic"] is not None
    assert semantic.with_stamp(big.header.stamp) is None, "a deactivated batch's result was published"
    assert len(error_lines(namespaced_node.text())) == errors_before, namespaced_node.text()[-2000:]


@pytest.fixture(scope="module")
def compressed_node(ros, ros_env, tmp_path_factory, node):
    process = start_node(
        ros, ros_env, tmp_path_factory.mktemp("compressed") / "node.log",
        (
            "-r", "__node:=efficientps_compressed",
            "-p", "model.preset_or_config:=small",
            "-p", "device:=cpu",
            "-p", "transport:=compressed",
            "-p", f"image_topics:=['{CAM_C}']",
        ),
        announces=f"{prefix(CAM_C)}/semantic",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_input(ros, compressed_node, fmt):
    frame = jpeg_frame(96, 128, f"camera_c_{fmt}", fmt)
    collectors = output_collectors(ros, CAM_C)
    found = publish_until(
        ros, f"{CAM_C}/compressed", frame,
        lambda: all(c.with_stamp(frame.header.stamp) for c in collectors.values()),
    )
    assert found
    overlay = collectors["overlay"].with_stamp(frame.header.stamp)
    assert (overlay.height, overlay.width) == (96, 128)
    assert_same_header(overlay.header, frame.header)


def test_a_corrupt_jpeg_is_reported_and_the_next_frame_processed(ros, compressed_node):
    corrupt = CompressedImage(header=new_header("c"), format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg")
    assert publish_until(ros, f"{CAM_C}/compressed", corrupt, lambda: "corrupt jpeg" in compressed_node.text())
    good = jpeg_frame(96, 128, "camera_c_after")
    semantic = ros.collect(f"{prefix(CAM_C)}/semantic")
    assert publish_until(ros, f"{CAM_C}/compressed", good, lambda: semantic.with_stamp(good.header.stamp))


@pytest.mark.parametrize(
    "override, names",
    [("transport:=theora", ("transport", "raw, compressed")), ("score_threshold:=2.0", ("score_threshold", "1.0"))],
)
def test_an_invalid_parameter_at_start_is_refused_by_name(ros_processes, override, names):
    result = ros_processes.run(
        module="efficientps_ros.ros.node",
        args=["--ros-args", "-r", "__node:=efficientps_refused", "-p", override],
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert all(name in result.stderr for name in names), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "override, line",
    [
        ("device:=gpu", "parameter device: not a device (got 'gpu'); allowed: auto, cpu, cuda or cuda:N"),
        ("score_threshold:=high", "parameter score_threshold: expected a float (got 'high', a string); "
                                  "allowed: 0.0 to 1.0"),
        ("input_qos.depth:=0", "parameter input_qos.depth: out of range (got 0); allowed: 1 to 100"),
    ],
)
def test_a_bad_parameter_at_start_prints_exactly_one_line(ros_processes, override, line):
    result = ros_processes.run(
        module="efficientps_ros.ros.node", args=["--ros-args", "-r", "__node:=efficientps_one_line", "-p", override],
        timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"efficientps_node: {line}"
    assert result.stdout.strip() == ""


def test_an_unreadable_params_file_is_refused_in_one_line(ros_processes, tmp_path):
    params = tmp_path / "broken.yaml"
    params.write_text("efficientps:\n  ros__parameters:\n    device: [unclosed\n")
    result = ros_processes.run(
        module="efficientps_ros.ros.node", args=["--ros-args", "--params-file", str(params)], timeout=60, check=False
    )
    assert result.returncode == 2
    assert "efficientps_node: cannot start" in result.stderr and str(params) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_configure_with_autostart_logs_the_reason_once_and_exits_non_zero(ros_processes, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    result = ros_processes.run(
        module="efficientps_ros.ros.node",
        args=["--ros-args", "-r", "__node:=efficientps_no_checkpoint", "-p", f"model.checkpoint:={missing}"],
        timeout=START_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    reasons = [line for line in result.stderr.splitlines() if "configure failed" in line]
    assert len(reasons) == 1 and str(missing) in reasons[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_teardown_that_stalls_still_ends_the_process_in_time_with_its_status(ros_processes, tmp_path):
    # The middleware's teardown can block for good; a supervisor must still see the exit it waits for.
    # Here it stalls after freeing the DDS participant, so that no half-dead peer is left for later tests.
    missing = tmp_path / "nowhere" / "model.safetensors"
    stalled = f"""
import time
from efficientps_ros.ros import node
node.EXIT_DEADLINE_S = 5.0
tear_down = node._tear_down_ros
node._tear_down_ros = lambda: (tear_down(), time.sleep(3600))
node.main(["--ros-args", "-p", "model.checkpoint:={missing}"])
"""
    result = ros_processes.run(stalled, timeout=START_TIMEOUT, check=False)
    assert result.returncode == 1, result.stderr
    assert "shutdown took over 5 s" in result.stderr, result.stderr


def test_a_failed_configure_without_autostart_stays_up_and_reports_error_on_diagnostics(ros, ros_processes, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    name = "efficientps_retry"
    child = ros_processes.start(
        module="efficientps_ros.ros.node",
        args=["--ros-args", "-r", f"__node:={name}", "-p", "autostart:=false", "-p", f"model.checkpoint:={missing}",
              "-p", "diagnostics_period:=0.5"],
    )
    waiting = diagnostic_status(ros, f"{name}: model", timeout=START_TIMEOUT)
    assert waiting["_level"] == DiagnosticStatus.OK and waiting["_message"] == "unconfigured"
    assert not change_state(ros, Transition.TRANSITION_CONFIGURE, name)
    assert node_state(ros, name) == "unconfigured"
    failed = diagnostic_status(ros, f"{name}: model", lambda v: v["_level"] == DiagnosticStatus.ERROR)
    assert "configure failed" in failed["_message"] and str(missing) in failed["_message"]
    assert child.popen.poll() is None, child.describe()
    # The retry the node stayed up for.
    assert ros.call(SetParameters, f"/{name}/set_parameters", SetParameters.Request(
        parameters=[Parameter("model.checkpoint", value="").to_parameter_msg()])).results[0].successful
    assert change_state(ros, Transition.TRANSITION_CONFIGURE, name)
    configured = diagnostic_status(ros, f"{name}: model", lambda v: v["_message"] == "inactive")
    assert configured["_level"] != DiagnosticStatus.ERROR
    assert child.stop().returncode == 0


def start_answering_child(ros: Ros, ros_processes, camera: str, frame, args: Sequence[str]):
    """The node as a child of `ros_processes`, once it has answered `frame` on `camera` with an overlay.

    As in `start_node`: a process that joins a running graph is, rarely, never
    discovered, and a fresh one is; so one that never answers is replaced.
    """
    overlay = output_collectors(ros, camera)["overlay"]
    for attempt in range(1, DISCOVERY_ATTEMPTS + 1):
        child = ros_processes.start(module="efficientps_ros.ros.node", args=args)
        assert wait_until(lambda: "active:" in child.stderr or child.popen.poll() is not None, START_TIMEOUT)
        assert child.popen.poll() is None, child.describe()
        if publish_until(ros, camera, frame, overlay.latest):
            return child
        child.stop()
        warnings.warn(f"{child.name}: active but no output in {FRAME_TIMEOUT:.0f} s; started again")
    pytest.fail(f"the node on {camera} never answered a frame, in {DISCOVERY_ATTEMPTS} starts\n{child.describe()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_frames_arrive_shuts_down_cleanly(ros, ros_processes, signum):
    camera = f"/stop_{signum}/image_raw"
    frame = rgb_frame(240, 320, "stopping")
    child = start_answering_child(
        ros, ros_processes, camera, frame,
        ["--ros-args", "-r", f"__node:=efficientps_stop_{signum}", "-p", "device:=cpu",
         "-p", "model.preset_or_config:=small", "-p", f"image_topics:=['{camera}']"],
    )
    publisher = ros.publisher(camera)
    # Frames keep coming, so the worker is busy with one when the signal arrives.
    for index in range(40):
        frame.header = new_header("stopping")
        publisher.publish(frame)
        time.sleep(0.05)
        if index == 20:
            os.kill(child.popen.pid, signum)
    result = child.wait(30)
    assert result.returncode == 0, child.describe()
    assert error_lines(result.stdout + result.stderr) == [], child.describe()


def test_a_failed_activate_leaves_no_subscription_or_publisher_behind(monkeypatch):
    from rclpy.lifecycle import TransitionCallbackReturn

    from efficientps_ros.ros.camera import CameraOutputs
    from efficientps_ros.ros.node import EfficientPSNode

    def broken(*args, **kwargs):
        raise RuntimeError("label_info could not be published")

    monkeypatch.setattr(CameraOutputs, "publish_label_info", broken)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = EfficientPSNode(context=context, parameter_overrides=[
        Parameter("device", value="cpu"), Parameter("image_topics", value=[CAM_A, CAM_B])])
    try:
        before_subscriptions = len(list(node.subscriptions))
        before_publishers = len(list(node.publishers))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert len(list(node.subscriptions)) == before_subscriptions
        assert len(list(node.publishers)) == before_publishers
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
