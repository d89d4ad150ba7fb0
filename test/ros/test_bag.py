"""Recorded drives: bags written here with rosbags itself, played into the node, recorded, and run offline.

The input bags are written with rosbags' own writers and type stores, not
with this package's tools, so that a bug in those cannot hide in both sides.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer, storage_mcap
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from efficientps_ros.cli import main
from efficientps_ros.ros.bag import BagError, CorruptMessage
from efficientps_ros.ros.bag import source as source_module
from efficientps_ros.ros.bag.message_types import definition
from efficientps_ros.ros.bag.offline import choose_cameras, run_bag
from efficientps_ros.ros.bag.play import PlayOptions, due_after, playable_topics, time_window
from efficientps_ros.ros.bag.record import RecordOptions, checked_options, is_output_topic
from efficientps_ros.ros.bag.sink import BagSink, check_new_folder
from efficientps_ros.ros.bag.source import BagSource, zstd

from .conftest import wait_until

ROS2 = get_typestore(Stores.ROS2_KILTED)
ROS1 = get_typestore(Stores.ROS1_NOETIC)
HEIGHT, WIDTH = 64, 128
FIRST_NS = 1_000_000_000_000


def frame_time(index: int) -> int:
    """Bag time of frame `index`: far enough apart that the node finishes each before the next,
    the first one's gap the longest, as the first forward pass is the slowest."""
    return FIRST_NS + (0 if index == 0 else 1_500_000_000 + index * 1_500_000_000)

OUTPUT_TYPES = {
    "semantic": ("sensor_msgs/msg/Image", "mono8"),
    "instance": ("sensor_msgs/msg/Image", "mono16"),
    "panoptic": ("sensor_msgs/msg/Image", "32SC1"),
    "overlay": ("sensor_msgs/msg/Image", "rgb8"),
    "detections": ("vision_msgs/msg/Detection2DArray", None),
}
START_TIMEOUT = 180.0
DISCOVERY_TIMEOUT = 45.0
DISCOVERY_ATTEMPTS = 3


def picture(index: int, camera: int) -> np.ndarray:
    """A street-like frame: sky, road, and a dark box that moves with `index`."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[: HEIGHT // 2] = (70, 130, 180)
    image[HEIGHT // 2 :] = (128, 64, 128)
    left = 10 + 12 * index + 30 * camera
    image[HEIGHT // 2 - 10 : HEIGHT // 2 + 14, left : left + 30] = (0, 0, 142)
    return image


def _stamp(store, ns: int):
    return store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _raw_image(store, ns: int, frame_id: str, rgb: np.ndarray, ros1: bool = False):
    header_type = store.types["std_msgs/msg/Header"]
    header = header_type(seq=0, stamp=_stamp(store, ns), frame_id=frame_id) if ros1 else header_type(
        stamp=_stamp(store, ns), frame_id=frame_id)
    return store.types["sensor_msgs/msg/Image"](
        header=header, height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0, step=3 * WIDTH,
        data=rgb.reshape(-1))


def _jpeg(ns: int, frame_id: str, rgb: np.ndarray):
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, "JPEG", quality=90)
    header = ROS2.types["std_msgs/msg/Header"](stamp=_stamp(ROS2, ns), frame_id=frame_id)
    return ROS2.types["sensor_msgs/msg/CompressedImage"](
        header=header, format="rgb8; jpeg compressed bgr8", data=np.frombuffer(buffer.getvalue(), np.uint8))


@dataclass(frozen=True)
class RecordedDrive:
    path: Path
    cameras: tuple[str, ...]  # the node's image_topics
    transport: str
    stamps: dict[str, list[int]]  # camera -> header stamps (ns) of its frames


def write_ros2_drive(path: Path, storage: str, compressed: bool, cameras=("/cam_a/image_raw", "/cam_b/image_raw"),
                     frames: int = 3) -> RecordedDrive:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    stamps = {camera: [] for camera in cameras}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        topic_of = {camera: camera + ("/compressed" if compressed else "") for camera in cameras}
        connections = {c: writer.add_connection(topic_of[c], msgtype, typestore=ROS2) for c in cameras}
        for index in range(frames):
            for k, camera in enumerate(cameras):
                ns = frame_time(index) + k * 10_000_000
                rgb = picture(index, k)
                message = _jpeg(ns, f"frame_{k}", rgb) if compressed else _raw_image(ROS2, ns, f"frame_{k}", rgb)
                writer.write(connections[camera], ns, ROS2.serialize_cdr(message, msgtype))
                stamps[camera].append(ns)
    return RecordedDrive(path, tuple(cameras), "compressed" if compressed else "raw", stamps)


def write_ros1_drive(path: Path, camera: str = "/cam_a/image_raw", frames: int = 3) -> RecordedDrive:
    stamps = []
    with Ros1Writer(path) as writer:
        connection = writer.add_connection(camera, "sensor_msgs/msg/Image", typestore=ROS1)
        for index in range(frames):
            ns = frame_time(index)
            message = _raw_image(ROS1, ns, "frame_0", picture(index, 0), ros1=True)
            writer.write(connection, ns, ROS1.serialize_ros1(message, "sensor_msgs/msg/Image"))
            stamps.append(ns)
    return RecordedDrive(path, (camera,), "raw", {camera: stamps})


def read_bag(path: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    """topic -> [(bag time, message, canonical CDR)], read with rosbags.

    The CDR is the message serialized again by rosbags: bytes as they came
    over DDS may carry trailing alignment padding that says nothing of the content.
    """
    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for connection, timestamp, raw in reader.messages():
            message = reader.deserialize(raw, connection.msgtype)
            canonical = bytes(reader.typestore.serialize_cdr(message, connection.msgtype))
            out.setdefault(connection.topic, []).append((timestamp, message, canonical))
    return out


def output_topic(camera: str, name: str) -> str:
    return f"{camera.rsplit('/', 1)[0]}/efficientps/{name}"


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


# --- live replay ------------------------------------------------------------

def _start_discovered(ros_processes, drive: RecordedDrive, tmp_path: Path):
    """A node on `drive`'s cameras and a recorder that has subscribed to all its outputs.

    Two participants over loopback now and then never discover each other
    (the same pair stays blind for minutes, as in test_node's `start_node`);
    a fresh pair does, so a pair still blind after DISCOVERY_TIMEOUT is replaced.
    """
    topics = "[" + ", ".join(f"'{c}'" for c in drive.cameras) + "]"
    expected = {output_topic(c, name) for c in drive.cameras for name in (*OUTPUT_TYPES, "label_info")}
    for attempt in range(1, DISCOVERY_ATTEMPTS + 1):
        node = ros_processes.start(module="efficientps_ros.ros.node", name=f"node-{attempt}", args=[
            "--ros-args", "-p", f"image_topics:={topics}", "-p", f"transport:={drive.transport}", "-p", "device:=cpu"])
        out = tmp_path / f"recorded-{attempt}"
        recorder = ros_processes.start(module="efficientps_ros.cli", name=f"record-{attempt}", args=[
            "bag", "record", str(out), "--all-outputs", "--topics", "/clock"])
        active = wait_until(lambda: "active:" in node.stderr or node.popen.poll() is not None, START_TIMEOUT)
        assert active and node.popen.poll() is None, f"the node never became active\n{node.describe()}"
        if wait_until(lambda: all(f"recording {topic} " in recorder.stderr for topic in expected), DISCOVERY_TIMEOUT):
            return node, recorder, out
        recorder.stop()
        node.stop()
        warnings.warn(f"attempt {attempt}: the recorder saw no outputs in {DISCOVERY_TIMEOUT:.0f} s; started both again")
    pytest.fail(f"the recorder never saw the node's outputs, in {DISCOVERY_ATTEMPTS} starts\n"
                f"{recorder.describe()}\n{node.describe()}")


def _replay(ros_processes, drive: RecordedDrive, tmp_path: Path) -> Path:
    """Play `drive` into a node with `bag play --clock`, record its outputs with `bag record`."""
    node, recorder, out = _start_discovered(ros_processes, drive, tmp_path)
    # The node's publishers learn of the recorder's subscriptions a moment after it subscribes.
    time.sleep(1.0)
    played = ros_processes.run(module="efficientps_ros.cli", name="play", timeout=60, args=[
        "bag", "play", str(drive.path), "--clock", "--wait-for-subscribers", "30"])
    assert "played" in played.stderr and "playing anyway" not in played.stderr, played.stderr + node.describe()
    frames = sum(len(s) for s in drive.stamps.values())
    _wait_for_outputs(node, frames)
    time.sleep(1.0)
    stopped = recorder.stop(timeout=20)
    assert stopped.returncode == 0, recorder.describe()
    return out


def _wait_for_outputs(node, frames: int) -> None:
    """The last frame's outputs are out once the node has been idle a moment; give it a few seconds."""
    time.sleep(min(2.0 + 0.3 * frames, 6.0))
    assert node.popen.poll() is None, node.describe()


def _check_one_output_per_frame(recorded: dict, drive: RecordedDrive) -> None:
    for k, camera in enumerate(drive.cameras):
        for name, (msgtype, encoding) in OUTPUT_TYPES.items():
            messages = [m for _, m, _ in recorded.get(output_topic(camera, name), [])]
            stamps = [_ns(m.header.stamp) for m in messages]
            assert stamps == drive.stamps[camera], f"{camera} {name}: got {stamps}, sent {drive.stamps[camera]}"
            assert {m.header.frame_id for m in messages} == {f"frame_{k}"}
            if encoding:
                assert {(m.encoding, m.height, m.width) for m in messages} == {(encoding, HEIGHT, WIDTH)}
        assert len(recorded[output_topic(camera, "label_info")]) == 1


DRIVES = {
    "mcap-rgb8-two-cameras": lambda path: write_ros2_drive(path / "in", "mcap", compressed=False),
    "sqlite3-jpeg-two-cameras": lambda path: write_ros2_drive(path / "in", "sqlite3", compressed=True),
    "ros1-rgb8": lambda path: write_ros1_drive(path / "in.bag"),
}


@pytest.mark.parametrize("kind", DRIVES)
def test_a_replayed_drive_gets_one_output_per_frame_and_bag_run_gives_the_same(kind, ros_processes, tmp_path):
    drive = DRIVES[kind](tmp_path)
    recorded = read_bag(_replay(ros_processes, drive, tmp_path))
    _check_one_output_per_frame(recorded, drive)
    clock = [_ns(m.clock) for _, m, _ in recorded["/clock"]]
    first, last = min(min(s) for s in drive.stamps.values()), max(max(s) for s in drive.stamps.values())
    # /clock runs on bag time, from the first frame's to the last one's.
    assert len(clock) > len(drive.stamps) and min(clock) >= first and max(clock) == last

    report = run_bag(drive.path, tmp_path / "offline", parameters={"device": "cpu"})
    assert (report.frames, report.skipped, report.failure) == (sum(map(len, drive.stamps.values())), 0, "")
    offline = read_bag(tmp_path / "offline")
    for camera in drive.cameras:
        for name in OUTPUT_TYPES:
            topic = output_topic(camera, name)
            live = {_ns(m.header.stamp): raw for _, m, raw in recorded[topic]}
            run = {_ns(m.header.stamp): raw for _, m, raw in offline[topic]}
            assert run == live, f"{topic}: bag run differs from the live node"
        # Written at each input's bag time, so a replay of the outputs keeps the drive's timing.
        assert [t for t, _, _ in offline[output_topic(camera, "semantic")]] == drive.stamps[camera]


# --- bad bags ---------------------------------------------------------------

def _run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["bag", *map(str, args)])
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("efficientps bag:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_bag_without_image_topics_is_refused_naming_the_bag_and_its_topics(tmp_path, capsys):
    bag = tmp_path / "chatter"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ROS2)
        writer.write(connection, FIRST_NS, ROS2.serialize_cdr(ROS2.types["std_msgs/msg/String"](data="hi"),
                                                              "std_msgs/msg/String"))
    code, err = _run_cli(capsys, "run", bag, tmp_path / "out", "--device", "cpu")
    line = _one_line_error(err)
    assert code == 2 and str(bag) in line and "no image topic" in line and "/chatter [std_msgs/msg/String]" in line
    assert not (tmp_path / "out").exists()


def _bag_with_unknown_type(path: Path) -> Path:
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("uint8[] payload", "acme_msgs/msg/Blob"))
    drive = write_ros2_drive(path, "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=1)
    extra = path.parent / "with_blob"
    with AnyReader([drive.path]) as reader, Writer(extra, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2)
        for _, timestamp, raw in reader.messages():
            writer.write(image, timestamp, raw)
        blob = writer.add_connection("/blob", "acme_msgs/msg/Blob", typestore=store)
        message = store.types["acme_msgs/msg/Blob"](payload=np.arange(4, dtype=np.uint8))
        writer.write(blob, FIRST_NS, store.serialize_cdr(message, "acme_msgs/msg/Blob"))
    return extra


def test_an_unknown_type_is_named_once_and_left_out_of_play_and_refused_by_run(tmp_path, capsys):
    bag = _bag_with_unknown_type(tmp_path / "in")
    lines = []
    with BagSource(bag) as source:
        topics = playable_topics(source, (), lines.append)
    assert list(topics) == ["/cam_a/image_raw"]
    assert lines == [f"bag {bag}, topic /blob: type acme_msgs/msg/Blob is not installed here; not played"]

    code, err = _run_cli(capsys, "run", bag, tmp_path / "out", "--topics", "/blob")
    line = _one_line_error(err)
    assert code == 2 and f"bag {bag}, topic /blob: type acme_msgs/msg/Blob is not an image type" in line


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_truncated_bag_is_refused_naming_the_bag_and_its_file(storage, tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", storage, compressed=False, frames=2)
    data_file = next(f for f in drive.path.iterdir() if f.name != "metadata.yaml")
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    code, err = _run_cli(capsys, "run", drive.path, tmp_path / "out")
    line = _one_line_error(err)
    size = data_file.stat().st_size
    assert code == 2 and f"bag {drive.path}: cannot be opened ({data_file.name}: {size} bytes)" in line
    assert "truncated or damaged" in line
    code, err = _run_cli(capsys, "play", drive.path)
    assert code == 2 and "cannot be opened" in _one_line_error(err)


@pytest.mark.parametrize("spoil, message", [
    # A kilobyte of aliases of aliases would stand for 9^9 nodes, and take minutes to walk.
    (lambda path: path.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]\n" for k in range(8))),
     r"metadata.yaml: a YAML alias \(\*a\); aliases are not allowed"),
    # Sparse: no disk used, and refused before a byte is read.
    (lambda path: os.truncate(path, 3 * 2**30), r"metadata.yaml: larger than 16,777,216 bytes, the most read"),
])
def test_a_metadata_yaml_too_large_or_full_of_aliases_is_refused_before_it_is_read(tmp_path, capsys, spoil, message):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, frames=1)
    spoil(drive.path / "metadata.yaml")
    tracemalloc.start()
    try:
        code, err = _run_cli(capsys, "run", drive.path, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and re.search(rf"^efficientps bag: bag {re.escape(str(drive.path))}: {message}",
                                   _one_line_error(err))
    assert peak < 64 * 2**20


def test_a_folder_without_its_metadata_is_refused_naming_the_file_that_still_opens(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, frames=2)
    (drive.path / "metadata.yaml").unlink()
    data_file = next(drive.path.glob("*.mcap"))
    code, err = _run_cli(capsys, "run", drive.path, tmp_path / "out")
    assert code == 2 and _one_line_error(err) == (
        f"efficientps bag: bag {drive.path}: a rosbag2 folder, but its metadata.yaml is missing; "
        f"an .mcap file opens on its own: bag {data_file}")
    with BagSource(data_file) as source:
        assert set(source.topics) == {"/cam_a/image_raw", "/cam_b/image_raw"}
    code, err = _run_cli(capsys, "play", tmp_path)
    assert code == 2 and _one_line_error(err) == (
        f"efficientps bag: bag {tmp_path}: a folder with no metadata.yaml and no .mcap or .db3 file, so no rosbag2 bag")


def test_a_corrupt_message_is_named_and_skipped_and_the_others_get_their_outputs(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=3)
    broken = tmp_path / "broken"
    with AnyReader([drive.path]) as reader, Writer(broken, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2)
        for index, (_, timestamp, raw) in enumerate(reader.messages()):
            # The second frame loses the end of its pixel data.
            writer.write(connection, timestamp, raw[: len(raw) // 2] if index == 1 else raw)
    code, err = _run_cli(capsys, "run", broken, tmp_path / "out", "--device", "cpu")
    seconds = (frame_time(1) - frame_time(0)) / 1e9
    # The progress bar shares stderr, on lines of its own ending in carriage returns.
    corrupt = [line for line in re.split(r"[\r\n]", err) if "corrupt message" in line]
    assert code == 1 and len(corrupt) == 1, err
    assert corrupt[0].startswith(f"bag {broken}, topic /cam_a/image_raw, message 1 at {seconds:.3f} s: corrupt message")
    outputs = read_bag(tmp_path / "out")
    stamps = [_ns(m.header.stamp) for _, m, _ in outputs["/cam_a/efficientps/semantic"]]
    assert stamps == [drive.stamps["/cam_a/image_raw"][i] for i in (0, 2)]


def test_an_image_the_node_would_refuse_is_named_with_its_bag_position_and_skipped(tmp_path):
    bag = tmp_path / "odd"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2)
        for index in range(2):
            message = _raw_image(ROS2, frame_time(index), "frame_0", picture(index, 0))
            if index == 0:
                message.encoding = "yuv9000"
            writer.write(connection, frame_time(index), ROS2.serialize_cdr(message, "sensor_msgs/msg/Image"))
    lines = []
    report = run_bag(bag, tmp_path / "out", parameters={"device": "cpu"}, report=lines.append)
    assert (report.frames, report.skipped) == (2, 1)
    assert len(lines) == 1 and lines[0].startswith(
        f"bag {bag}, topic /cam_a/image_raw, message 0 at 0.000 s: camera /cam_a/image_raw: frame skipped, bad input:")
    assert "yuv9000" in lines[0]
    assert [_ns(m.header.stamp) for _, m, _ in read_bag(tmp_path / "out")["/cam_a/efficientps/overlay"]] == [
        frame_time(1)]
    # Stored as the node offers them, so that players publish label_info latched again.
    with BagSource(tmp_path / "out") as outputs:
        assert outputs.latched("/cam_a/efficientps/label_info")
        assert not outputs.latched("/cam_a/efficientps/overlay")


def test_a_latched_ros1_topic_is_played_latched(tmp_path):
    path = tmp_path / "latched.bag"
    with Ros1Writer(path) as writer:
        latched = writer.add_connection("/map_name", "std_msgs/msg/String", typestore=ROS1, latching=1)
        plain = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ROS1)
        for connection in (latched, plain):
            message = ROS1.types["std_msgs/msg/String"](data="x")
            writer.write(connection, FIRST_NS, ROS1.serialize_ros1(message, "std_msgs/msg/String"))
    with BagSource(path) as source:
        assert source.latched("/map_name") and not source.latched("/chatter")


def test_a_bag_that_breaks_off_mid_way_leaves_a_closed_readable_output_with_what_came_before(tmp_path, monkeypatch):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=3)
    original = AnyReader.messages

    def breaking(self, *args, **kwargs):
        for count, item in enumerate(original(self, *args, **kwargs)):
            if count == 2:
                raise OSError("unexpected end of file")
            yield item

    monkeypatch.setattr(AnyReader, "messages", breaking)
    lines = []
    report = run_bag(drive.path, tmp_path / "out", parameters={"device": "cpu"}, report=lines.append)
    seconds = (frame_time(1) - frame_time(0)) / 1e9
    assert report.failure == lines[-1] == (
        f"after bag {drive.path}, topic /cam_a/image_raw, message 1 at {seconds:.3f} s: "
        "the bag is truncated or damaged (OSError: unexpected end of file)")
    monkeypatch.undo()
    outputs = read_bag(tmp_path / "out")
    assert [_ns(m.header.stamp) for _, m, _ in outputs["/cam_a/efficientps/overlay"]] == \
        drive.stamps["/cam_a/image_raw"][:2]


def _raw_and_compressed(path: Path, frames: int = 2) -> tuple[Path, list[int]]:
    """One camera recorded through image_transport: raw and compressed, frame for frame."""
    stamps = [frame_time(i) for i in range(frames)]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        raw = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2)
        jpeg = writer.add_connection("/cam_a/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=ROS2)
        for index, ns in enumerate(stamps):
            rgb = picture(index, 0)
            writer.write(raw, ns, ROS2.serialize_cdr(_raw_image(ROS2, ns, "frame_0", rgb), "sensor_msgs/msg/Image"))
            writer.write(jpeg, ns, ROS2.serialize_cdr(_jpeg(ns, "frame_0", rgb), "sensor_msgs/msg/CompressedImage"))
    return path, stamps


def test_a_camera_recorded_raw_and_compressed_is_run_once_from_the_raw_topic(tmp_path):
    bag, stamps = _raw_and_compressed(tmp_path / "in")
    lines = []
    report = run_bag(bag, tmp_path / "out", parameters={"device": "cpu"}, report=lines.append)
    assert (report.frames, report.skipped, report.failure) == (len(stamps), 0, "")
    assert lines == [f"bag {bag}, topic /cam_a/image_raw/compressed: /cam_a/image_raw recorded compressed; "
                     "running /cam_a/image_raw only (choose with --topics)"]
    out = read_bag(tmp_path / "out")
    for name in OUTPUT_TYPES:
        assert [t for t, _, _ in out[output_topic("/cam_a/image_raw", name)]] == stamps, name
    assert len(out[output_topic("/cam_a/image_raw", "label_info")]) == 1


def test_the_compressed_copy_is_run_when_chosen_and_both_at_once_are_refused(tmp_path):
    bag, _ = _raw_and_compressed(tmp_path / "in")
    with BagSource(bag) as source:
        chosen = choose_cameras(source, ["/cam_a/image_raw/compressed"], "efficientps", print)
        assert [(c.topic, c.transport) for c in chosen] == [("/cam_a/image_raw/compressed", "compressed")]
        with pytest.raises(BagError, match="/cam_a/image_raw and /cam_a/image_raw/compressed would both write "
                                           "their outputs under /cam_a/efficientps/; choose one with --topics"):
            choose_cameras(source, ["/cam_a/image_raw", "/cam_a/image_raw/compressed"], "efficientps", print)


def test_two_cameras_of_one_namespace_are_refused_with_the_way_out(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam/image_raw", "/cam/image_rect"),
                             frames=1)
    code, err = _run_cli(capsys, "run", drive.path, tmp_path / "out")
    line = _one_line_error(err)
    assert code == 2 and "/cam/image_raw and /cam/image_rect would both write" in line and "--topics" in line
    assert not (tmp_path / "out").exists()


def test_play_refuses_a_start_past_the_end_of_the_bag(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=2)
    length = (frame_time(1) - frame_time(0)) / 1e9
    code, err = _run_cli(capsys, "play", drive.path, "--loop", "--start", length + 1)
    line = _one_line_error(err)
    assert code == 2 and f"--start {length + 1:g} s is past its end ({length:.3f} s long)" in line


def test_play_does_not_loop_over_a_window_without_messages(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=2)
    # Between the two frames: a pass would play nothing, every time.
    code, err = _run_cli(capsys, "play", drive.path, "--loop", "--start", "0.5", "--duration", "0.2")
    line = _one_line_error(err)
    assert code == 2 and "no message of /cam_a/image_raw in the window played; not looping" in line


def test_a_param_that_is_not_yaml_is_refused_naming_it(tmp_path, capsys):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=1)
    code, err = _run_cli(capsys, "run", drive.path, tmp_path / "out", "--param", "score_threshold=[")
    line = _one_line_error(err)
    assert code == 2 and "--param 'score_threshold=[': the value is not valid YAML" in line
    assert not (tmp_path / "out").exists()


RELIABLE = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.VOLATILE, QosTime(0, 0),
               QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


def _camera_bag(path: Path, frames: int = 2, compression: CompressionMode = CompressionMode.NONE) -> Path:
    """One raw camera offered reliable, and a /chatter message, as a recorder stores them;
    compressed as `compression` says."""
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compression != CompressionMode.NONE:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        camera = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2,
                                       offered_qos_profiles=[RELIABLE])
        for index in range(frames):
            image = _raw_image(ROS2, frame_time(index), "frame_0", picture(index, 0))
            writer.write(camera, frame_time(index), ROS2.serialize_cdr(image, "sensor_msgs/msg/Image"))
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ROS2)
        words = ROS2.types["std_msgs/msg/String"](data="hi")
        writer.write(chatter, FIRST_NS, ROS2.serialize_cdr(words, "std_msgs/msg/String"))
    return path


def _edit_metadata(bag: Path, old: str, new: str) -> None:
    """Change the first `old` in the bag's metadata.yaml to `new`, as a hand edit would."""
    metadata = bag / "metadata.yaml"
    text = metadata.read_text()
    assert old in text, text
    metadata.write_text(text.replace(old, new, 1))


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


@pytest.mark.parametrize("old, new, why", [
    ("type: sensor_msgs/msg/Image", "type: sensor_msgs/msg/CompressedImage",
     "its type is sensor_msgs/msg/CompressedImage in metadata.yaml, sensor_msgs/msg/Image in the storage"),
    ("reliability: reliable", "reliability: best_effort",
     "its offered QoS reliability is best_effort in metadata.yaml, reliable in the storage"),
], ids=["type", "qos"])
def test_a_metadata_yaml_that_does_not_match_the_storage_is_named_before_the_model_loads(
        old, new, why, tmp_path, capsys, monkeypatch):
    bag = _camera_bag(tmp_path / "in")
    # rosbags passes over storage connections that differ from the metadata: the topic would read as empty.
    _edit_metadata(bag, old, new)
    monkeypatch.setattr("efficientps_ros.ros.bag.offline.load_model", _no_model)
    code, err = _run_cli(capsys, "run", bag, tmp_path / "out")
    assert code == 2 and _one_line_error(err) == (
        f"efficientps bag: bag {bag}, topic /cam_a/image_raw: metadata.yaml lists 2 messages, none of which can be "
        f"read: {why}; `ros2 bag reindex` writes metadata.yaml anew from the storage")
    assert not (tmp_path / "out").exists()
    lines = []
    with BagSource(bag) as source:
        assert list(playable_topics(source, (), lines.append)) == ["/chatter"]
    assert lines == [f"bag {bag}, topic /cam_a/image_raw: metadata.yaml lists 2 messages, none of which can be "
                     f"read: {why}; `ros2 bag reindex` writes metadata.yaml anew from the storage; not played"]


def test_a_run_that_reads_fewer_frames_than_the_bag_lists_fails_naming_the_topic(tmp_path, capsys):
    bag = _camera_bag(tmp_path / "in")
    _edit_metadata(bag, "message_count: 2", "message_count: 5")
    code, err = _run_cli(capsys, "run", bag, tmp_path / "out", "--device", "cpu")
    shortfall = [line for line in re.split(r"[\r\n]", err) if "were read" in line]
    assert code == 1 and shortfall == [
        f"bag {bag}, topic /cam_a/image_raw: the bag lists 5 messages, 2 were read; its index or metadata.yaml "
        "does not match its messages (damaged, or edited by hand?)"], err


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    bag = _camera_bag(tmp_path / "in", frames=1)
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setattr("efficientps_ros.ros.bag.offline.load_model", _no_model)
    code, err = _run_cli(capsys, "run", bag, afile / "out")
    assert code == 2 and _one_line_error(err) == (
        f"efficientps bag: bag {afile / 'out'}: cannot be made: {afile} is a file, not a folder")
    with pytest.raises(BagError, match=f"bag {afile / 'deeper' / 'out'}: cannot be made"):
        BagSink(afile / "deeper" / "out")
    # The check makes the folders it needs and takes them away again.
    check_new_folder(tmp_path / "a" / "b" / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"]


def test_a_bag_compressed_file_by_file_is_refused_before_anything_is_expanded(tmp_path, capsys):
    bag = _camera_bag(tmp_path / "in", frames=1, compression=CompressionMode.FILE)
    for command in ("run", "play"):
        args = (bag, tmp_path / "out") if command == "run" else (bag,)
        code, err = _run_cli(capsys, command, *args)
        assert code == 2 and _one_line_error(err) == (
            f"efficientps bag: bag {bag}: compressed file by file (compression_mode: file), which is not read "
            f"here; decompress it into a new bag first: rosbags-convert --src {bag} --dst NEW_BAG")


def test_a_bag_compressed_message_by_message_is_read_and_a_message_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    bag = _camera_bag(tmp_path / "in", compression=CompressionMode.MESSAGE)
    with BagSource(bag) as source:
        read = [source.cdr(message) for message in source.messages({"/cam_a/image_raw"})]
    expected = [ROS2.serialize_cdr(_raw_image(ROS2, frame_time(i), "frame_0", picture(i, 0)), "sensor_msgs/msg/Image")
                for i in range(2)]
    assert read == [bytes(data) for data in expected]

    # 8 MiB of zeros compressed, in a bag that says its messages are compressed.
    bomb = tmp_path / "bomb"
    with Writer(bomb, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS2)
        writer.write(connection, FIRST_NS, zstd.compress(bytes(8 * 2**20)))
    _edit_metadata(bomb, "compression_format: ''", "compression_format: zstd")
    _edit_metadata(bomb, "compression_mode: ''", "compression_mode: message")
    monkeypatch.setattr(source_module, "MAX_UNPACKED_BYTES", 2**20)
    with BagSource(bomb) as source:
        (message,) = source.messages()
        tracemalloc.start()
        try:
            with pytest.raises(CorruptMessage) as refused:
                source.cdr(message)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert str(refused.value) == (f"bag {bomb}, topic /cam_a/image_raw, message 0 at 0.000 s: corrupt message (its "
                                  f"zstd data expands beyond {2**20} bytes, the most a message may take here)")
    # Refused having expanded a piece at a time, never the whole message.
    assert peak < 4 * 2**20


def test_an_mcap_chunk_is_refused_beyond_the_limit_or_the_size_it_declares(tmp_path, monkeypatch):
    bag = _camera_bag(tmp_path / "in", frames=1, compression=CompressionMode.STORAGE)
    monkeypatch.setattr(source_module, "MAX_UNPACKED_BYTES", 16384)
    with pytest.raises(BagError, match=rf"^bag {re.escape(str(bag))}: in\.mcap: a chunk declares \d+ bytes "
                                       r"uncompressed, more than the 16384 a chunk may take here"):
        BagSource(bag)
    # A chunk that declares a small size and expands to a large one stops at what it declares.
    bomb = zstd.compress(bytes(8 * 2**20))
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="a chunk compressed with zstd expands beyond the 1000 bytes it declares"):
            storage_mcap.decompress(bomb, "zstd", 1000, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def _ros1_bz2_bag(path: Path) -> Path:
    writer = Ros1Writer(path)
    writer.set_compression(Ros1Writer.CompressionFormat.BZ2)
    with writer:
        connection = writer.add_connection("/cam_a/image_raw", "sensor_msgs/msg/Image", typestore=ROS1)
        message = _raw_image(ROS1, FIRST_NS, "frame_0", picture(0, 0), ros1=True)
        writer.write(connection, FIRST_NS, ROS1.serialize_ros1(message, "sensor_msgs/msg/Image"))
    return path


def test_a_ros1_chunk_is_refused_beyond_the_limit_or_the_size_it_declares(tmp_path, monkeypatch):
    bag = _ros1_bz2_bag(tmp_path / "in.bag")
    with monkeypatch.context() as patch:
        patch.setattr(source_module, "MAX_UNPACKED_BYTES", 16384)
        with pytest.raises(BagError, match=rf"^bag {re.escape(str(bag))}: a chunk declares \d+ bytes uncompressed, "
                                           "more than the 16384 a chunk may take here"):
            BagSource(bag)
    # The chunk header's size field, 4 bytes after its name, now declares 100 bytes.
    data = bytearray(bag.read_bytes())
    field = data.index(b"\x09\x00\x00\x00size=") + 9
    data[field:field + 4] = (100).to_bytes(4, "little")
    bag.write_bytes(bytes(data))
    with BagSource(bag) as source, pytest.raises(BagError, match=(
            rf"^bag {re.escape(str(bag))}, before its first message: a chunk compressed with bz2 expands beyond "
            "the 100 bytes it declares")):
        list(source.messages())


@pytest.mark.parametrize("args, complaint", [
    (["play", "BAG", "--duration", "inf"], "--duration must be a finite number above 0 (got inf)"),
    (["play", "BAG", "--duration", "nan"], "--duration must be a finite number above 0 (got nan)"),
    (["play", "BAG", "--start", "nan"], "--start must be a finite number, 0 or more (got nan)"),
    (["play", "BAG", "--rate", "inf"], "--rate must be a finite number above 0 (got inf)"),
    (["play", "BAG", "--wait-for-subscribers", "nan"],
     "--wait-for-subscribers must be a finite number, 0 or more (got nan)"),
    (["play", "BAG", "--wait-for-subscribers", "-1"],
     "--wait-for-subscribers must be a finite number, 0 or more (got -1.0)"),
    (["play", "BAG", "--subscribers", "0"], "--subscribers must be 1 or more (got 0)"),
    (["record", "OUT", "--topics", "/x", "--duration", "nan"], "--duration must be a finite number above 0 (got nan)"),
    (["record", "OUT", "--topics", "/x", "--duration", "-1"], "--duration must be a finite number above 0 (got -1.0)"),
    (["record", "OUT", "--topics", "/x", "topic!!"], "--topics: 'topic!!' is not a valid topic name"),
    (["record", "OUT", "--topics", "a//b"], "--topics: 'a//b' is not a valid topic name"),
    (["record", "OUT", "--all-outputs", "--output-namespace", "!!bad"],
     "--output-namespace: not a valid relative name (got '!!bad'); allowed: a relative name such as efficientps"),
])
def test_play_and_record_refuse_options_out_of_range_naming_them(args, complaint, tmp_path, capsys):
    # Checked before the bag is opened or anything of ROS is started.
    bag, out = tmp_path / "missing", tmp_path / "out"
    code, err = _run_cli(capsys, *[{"BAG": bag, "OUT": out}.get(arg, arg) for arg in args])
    assert code == 2 and _one_line_error(err) == f"efficientps bag: {complaint}"
    assert not out.exists()


# --- pieces -----------------------------------------------------------------

def test_record_takes_relative_topic_names_as_the_graph_names_them():
    # The graph lists '/camera/image_raw': compared as given, 'camera/image_raw' would never match.
    options = checked_options(RecordOptions(topics=("camera/image_raw", "/front/image_raw")))
    assert options.topics == ("/camera/image_raw", "/front/image_raw")


def test_the_play_window_and_timing_follow_start_duration_and_rate():
    assert time_window(10**12, 1.5, None) == (10**12 + 1_500_000_000, None)
    assert time_window(10**12, 0.0, 2.0) == (10**12, 10**12 + 2_000_000_000)
    assert due_after(10**12 + 3_000_000_000, 10**12, 2.0) == pytest.approx(1.5)
    assert due_after(10**12 + 3_000_000_000, 10**12, 0.5) == pytest.approx(6.0)
    # A duration beyond every bag time (int64 nanoseconds) plays to the end.
    assert time_window(10**12, 0.0, 1e300) == (10**12, None)


def test_start_and_duration_select_the_messages_played(tmp_path):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",), frames=3)
    with BagSource(drive.path) as source:
        # From just after the first frame, for as long as reaches the second but not the third.
        begin, stop = time_window(source.start_time, 0.1, (frame_time(2) - frame_time(0)) / 1e9 - 0.2)
        played = [m.timestamp for m in source.messages(start=begin, stop=stop)]
    assert played == [frame_time(1)]


def test_a_topic_whose_definition_is_missing_is_reported_and_the_others_still_recorded(tmp_path, monkeypatch):
    import rclpy
    from std_msgs.msg import Int32, String

    from efficientps_ros.ros.bag import sink as sink_module
    from efficientps_ros.ros.bag.record import Recorder
    from efficientps_ros.ros.bag.sink import BagSink

    real = sink_module.definition

    def without_int32(msgtype):
        if msgtype == "std_msgs/msg/Int32":
            raise KeyError("no definition of std_msgs/msg/Int32 here")
        return real(msgtype)

    monkeypatch.setattr(sink_module, "definition", without_int32)
    context = rclpy.Context()
    rclpy.init(context=context)
    lines = []
    try:
        node = rclpy.create_node("record_check", context=context)
        node.create_publisher(String, "/words", 1)
        node.create_publisher(Int32, "/numbers", 1)
        with BagSink(tmp_path / "out", "mcap") as sink:
            recorder = Recorder(node, sink, RecordOptions(topics=("/words", "/numbers")), lines.append)

            def both_seen() -> bool:
                recorder.discover()
                return len(lines) == 2

            wait_until(both_seen, 10.0)
            recorder.discover()  # once refused, a topic is not reported again
            assert set(sink.counts) == {"/words"}
    finally:
        rclpy.shutdown(context=context)
    assert "recording /words [std_msgs/msg/String]" in lines
    assert f"bag {tmp_path / 'out'}, topic /numbers: cannot record type std_msgs/msg/Int32: " \
           "no definition of std_msgs/msg/Int32 here; not recorded" in lines
    assert len(lines) == 2


def test_all_outputs_means_the_node_output_topics_only():
    assert is_output_topic("/cam/efficientps/semantic", "efficientps")
    assert is_output_topic("/car1/front/efficientps/label_info", "efficientps")
    assert is_output_topic("/efficientps/detections", "efficientps")
    assert not is_output_topic("/cam/image_raw", "efficientps")
    assert not is_output_topic("/cam/other/semantic", "efficientps")
    assert not is_output_topic("/cam/efficientps/semantic", "perception")


def test_output_types_are_written_with_the_upstream_type_hashes():
    _, digest = definition("vision_msgs/msg/Detection2DArray")
    assert digest == "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"
    assert definition("sensor_msgs/msg/Image")[1] == ROS2.hash_rihs01("sensor_msgs/msg/Image")
    with pytest.raises(KeyError, match="acme_msgs/msg/Blob"):
        definition("acme_msgs/msg/Blob")


def test_synth_writes_consecutive_stamped_frames_of_one_drive_per_camera(tmp_path, capsys):
    bag = tmp_path / "drive"
    code, _ = _run_cli(capsys, "synth", bag, "--seconds", "0.6", "--rate", "5", "--size", "64x96", "--cameras", "2",
                       "--storage", "sqlite3")
    assert code == 0
    recorded = read_bag(bag)
    assert set(recorded) == {"/cam0/image_raw", "/cam1/image_raw", "/cam0/camera_info", "/cam1/camera_info"}
    for camera in ("cam0", "cam1"):
        images = [m for _, m, _ in recorded[f"/{camera}/image_raw"]]
        stamps = [_ns(m.header.stamp) for m in images]
        assert len(images) == 3 and np.diff(stamps).tolist() == [200_000_000] * 2
        assert [t for t, _, _ in recorded[f"/{camera}/image_raw"]] == stamps
        assert {(m.header.frame_id, m.encoding, m.height, m.width) for m in images} == {(camera, "rgb8", 64, 96)}
        infos = [m for _, m, _ in recorded[f"/{camera}/camera_info"]]
        assert [_ns(m.header.stamp) for m in infos] == stamps and infos[0].k[0] == pytest.approx(48.0)
        frames = [np.asarray(m.data, np.int16).reshape(64, 96, 3) for m in images]
        # Consecutive frames of a moving camera: changed, yet far closer to each other than to the other camera's.
        step = np.abs(frames[1] - frames[0]).mean()
        assert step > 0
    other = np.asarray(recorded["/cam1/image_raw"][0][1].data, np.int16).reshape(64, 96, 3)
    assert np.abs(other - np.asarray(recorded["/cam0/image_raw"][0][1].data, np.int16).reshape(64, 96, 3)).mean() > step


def test_synth_compressed_writes_jpeg_on_the_compressed_topic(tmp_path, capsys):
    bag = tmp_path / "drive"
    assert _run_cli(capsys, "synth", bag, "--seconds", "0.2", "--rate", "5", "--size", "64x96", "--compressed")[0] == 0
    (_, message, _), = read_bag(bag)["/camera/image_raw/compressed"]
    assert message.format.endswith("jpeg compressed bgr8") and message.header.frame_id == "camera"
    assert PILImage.open(io.BytesIO(bytes(message.data))).size == (96, 64)


@pytest.mark.parametrize("args, complaint", [
    (["--rate", "inf"], "--rate must be a finite number above 0 (got inf)"),
    (["--seconds", "inf"], "--seconds must be a finite number above 0 (got inf)"),
    (["--seconds", "nan"], "--seconds must be a finite number above 0 (got nan)"),
    (["--rate", "0"], "--rate must be a finite number above 0 (got 0.0)"),
    (["--seconds", "1e9", "--rate", "1e-9"], "--seconds 1e+09: allowed: at most 86400"),
    (["--rate", "1e12", "--seconds", "1e-9"], "--rate 1e+12: allowed: at most 1000 frames per second"),
    (["--seconds", "80000", "--rate", "100"],
     "--seconds 80000 at --rate 100 make 8,000,000 frames; allowed: at most 100,000 per camera"),
    (["--cameras", "0"], "--cameras must be at least 1 (got 0)"),
])
def test_synth_refuses_a_drive_out_of_range_naming_the_option_before_writing(args, complaint, tmp_path, capsys):
    bag = tmp_path / "drive"
    code, err = _run_cli(capsys, "synth", bag, "--size", "64x128", *args)
    assert code == 2 and _one_line_error(err) == f"efficientps bag: {complaint}" and "Traceback" not in err
    assert not bag.exists()


def test_record_for_a_duration_closes_a_readable_bag(ros_processes, tmp_path):
    out = tmp_path / "quiet"
    result = ros_processes.run(module="efficientps_ros.cli", args=["bag", "record", str(out), "--topics", "/nothing",
                                                                    "--storage", "sqlite3", "--duration", "1"])
    assert f"wrote 0 messages on 0 topics to {out}" in result.stderr
    with AnyReader([out]) as reader:
        assert reader.message_count == 0


def test_record_without_topics_is_refused(ros_processes, tmp_path):
    result = ros_processes.run(module="efficientps_ros.cli", args=["bag", "record", str(tmp_path / "x")], check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "efficientps bag: give --topics or --all-outputs"
    assert not (tmp_path / "x").exists()


def _recorder(ros_processes, out: Path, *topics: str):
    recorder = ros_processes.start(module="efficientps_ros.cli", name="record",
                                   args=["bag", "record", str(out), "--topics", *topics])
    return recorder


def test_play_sends_the_chosen_topics_from_the_start_offset_on(ros_processes, tmp_path):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False)
    recorder = _recorder(ros_processes, tmp_path / "got", "/cam_a/image_raw", "/cam_b/image_raw")
    played = ros_processes.run(module="efficientps_ros.cli", name="play", timeout=90, args=[
        "bag", "play", str(drive.path), "--topics", "/cam_a/image_raw", "--start", "1.0", "--rate", "2",
        "--wait-for-subscribers", "30"])
    assert "played 2 messages on 1 topics" in played.stderr, played.stderr
    time.sleep(1.0)
    assert recorder.stop().returncode == 0, recorder.describe()
    got = read_bag(tmp_path / "got")
    assert list(got) == ["/cam_a/image_raw"]
    assert [_ns(m.header.stamp) for _, m, _ in got["/cam_a/image_raw"]] == drive.stamps["/cam_a/image_raw"][1:]


# The command line as a shell script's background job starts it: with SIGINT ignored.
SIGINT_IGNORED = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
os.execv(sys.executable, [sys.executable, "-m", "efficientps_ros.cli", *sys.argv[1:]])
"""


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_play_loops_until_interrupted_and_then_exits_cleanly(ros_processes, tmp_path, sigint):
    drive = write_ros2_drive(tmp_path / "in", "mcap", compressed=False, cameras=("/cam_a/image_raw",))
    recorder = _recorder(ros_processes, tmp_path / "got", "/cam_a/image_raw")
    # Only the first frame lies within the duration, so each pass sends it once.
    args = ["bag", "play", str(drive.path), "--loop", "--duration", "0.5", "--wait-for-subscribers", "30"]
    if sigint == "ignored":
        player = ros_processes.start(SIGINT_IGNORED, name="play", args=args)
    else:
        player = ros_processes.start(module="efficientps_ros.cli", name="play", args=args)
    deadline = time.monotonic() + 60
    while "recording /cam_a/image_raw" not in recorder.stderr and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)
    stopped = player.stop()
    assert stopped.returncode == 0 and "Traceback" not in stopped.stderr, player.describe()
    assert recorder.stop().returncode == 0, recorder.describe()
    stamps = [_ns(m.header.stamp) for _, m, _ in read_bag(tmp_path / "got")["/cam_a/image_raw"]]
    # Each pass lasts its half second of bag time: a few passes in 3 s, not thousands.
    assert 2 <= len(stamps) <= 10 and set(stamps) == {frame_time(0)}


def _tf_message(ns: int, parent: str, child: str, x: float):
    types = ROS2.types
    transform = types["geometry_msgs/msg/Transform"](
        translation=types["geometry_msgs/msg/Vector3"](x=x, y=0.0, z=1.5),
        rotation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    stamped = types["geometry_msgs/msg/TransformStamped"](
        header=types["std_msgs/msg/Header"](stamp=_stamp(ROS2, ns), frame_id=parent), child_frame_id=child,
        transform=transform)
    return types["tf2_msgs/msg/TFMessage"](transforms=[stamped])


def test_the_transforms_of_a_drive_are_played(ros_processes, tmp_path):
    # tf2_msgs has no Kilted pip wheel: the venv gets it from interfaces/, wire-compatible with upstream.
    assert definition("tf2_msgs/msg/TFMessage")[1] == ROS2.hash_rihs01("tf2_msgs/msg/TFMessage")
    bag, msgtype = tmp_path / "in", "tf2_msgs/msg/TFMessage"
    sent = [(frame_time(k), "odom", "base_link", 0.5 * k) for k in range(3)]
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/tf", msgtype, typestore=ROS2)
        for ns, parent, child, x in sent:
            writer.write(connection, ns, ROS2.serialize_cdr(_tf_message(ns, parent, child, x), msgtype))
    recorder = _recorder(ros_processes, tmp_path / "got", "/tf")
    played = ros_processes.run(module="efficientps_ros.cli", name="play", timeout=90, args=[
        "bag", "play", str(bag), "--rate", "4", "--wait-for-subscribers", "30"])
    assert "played 3 messages on 1 topics" in played.stderr, played.stderr
    time.sleep(1.0)
    assert recorder.stop().returncode == 0, recorder.describe()
    got = [m.transforms[0] for _, m, _ in read_bag(tmp_path / "got")["/tf"]]
    assert [(_ns(t.header.stamp), t.header.frame_id, t.child_frame_id, t.transform.translation.x) for t in got] == sent
