"""Serialised Images and detection arrays: the same message, the same bytes, as the usual path gives."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from efficientps_ros.ros.bag.message_types import IMAGE, definition, ros2_typestore
from efficientps_ros.ros.cdr import Detection, serialized_detections
from efficientps_ros.ros.image_codec import array_to_image, array_to_serialized_image

# What the node publishes, a generic type with 8-byte samples, and big-endian samples.
ARRAYS = {
    "mono8": np.uint8, "mono16": np.uint16, "32SC1": np.int32, "rgb8": np.uint8,
    "64FC2": np.float64, "16UC3": ">u2", "32FC1": ">f4",
}
CHANNELS = {"mono8": 1, "mono16": 1, "32SC1": 1, "rgb8": 3, "64FC2": 2, "16UC3": 3, "32FC1": 1}


def pixels(encoding: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    channels = CHANNELS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * np.dtype(ARRAYS[encoding]).itemsize,
                                               dtype=np.uint8)
    return raw.view(ARRAYS[encoding]).reshape(shape)


def header(frame_id: str) -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = -7, 999_999_999
    return header


def padding(frame_id: bytes, encoding: str) -> set[int]:
    """Where CDR puts alignment bytes in a serialised Image: after frame_id and after is_bigendian.

    Offsets count from the start of the bytes; alignment counts from the end of the 4-byte encapsulation.
    """
    gaps = set()
    end_of_frame_id = 4 + 8 + 4 + len(frame_id) + 1
    gaps |= set(range(end_of_frame_id, end_of_frame_id + (-(end_of_frame_id - 4)) % 4))
    height_at = end_of_frame_id + (-(end_of_frame_id - 4)) % 4
    end_of_flag = height_at + 8 + 4 + len(encoding) + 1 + 1
    gaps |= set(range(end_of_flag, end_of_flag + (-(end_of_flag - 4)) % 4))
    return gaps


def rosbags_cdr(message: Image) -> bytes:
    """The same message serialised by rosbags' own CDR writer, which zeroes its padding."""
    store = ros2_typestore()
    types = store.types
    stamp = types["builtin_interfaces/msg/Time"](sec=message.header.stamp.sec, nanosec=message.header.stamp.nanosec)
    theirs = types[IMAGE](
        header=types["std_msgs/msg/Header"](stamp=stamp, frame_id=message.header.frame_id),
        height=message.height, width=message.width, encoding=message.encoding,
        is_bigendian=message.is_bigendian, step=message.step, data=np.frombuffer(bytes(message.data), np.uint8),
    )
    return bytes(store.serialize_cdr(theirs, IMAGE))


def assert_same_image(a: Image, b: Image) -> None:
    assert (a.header.stamp.sec, a.header.stamp.nanosec, a.header.frame_id) == (
        b.header.stamp.sec, b.header.stamp.nanosec, b.header.frame_id)
    assert (a.height, a.width, a.encoding, a.is_bigendian, a.step) == (b.height, b.width, b.encoding,
                                                                       b.is_bigendian, b.step)
    assert bytes(a.data) == bytes(b.data)


@pytest.mark.parametrize("encoding", sorted(ARRAYS))
@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg"])
@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (2, 7)])
def test_the_bytes_are_the_usual_message(encoding: str, frame_id: str, height: int, width: int) -> None:
    array = pixels(encoding, height, width, seed=len(frame_id))
    usual = array_to_image(array, encoding, header(frame_id))
    ours = array_to_serialized_image(array, encoding, header(frame_id))

    assert_same_image(deserialize_message(ours, Image), usual)
    assert ours == rosbags_cdr(usual)
    # rmw leaves its alignment bytes uninitialised: only those may differ, and ours are zero.
    theirs = serialize_message(usual)
    assert len(ours) == len(theirs)
    differ = {i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y}
    assert differ <= padding(frame_id.encode(), encoding)
    assert all(ours[i] == 0 for i in padding(frame_id.encode(), encoding))


def test_big_endian_samples_set_the_flag() -> None:
    array = pixels("16UC3", 2, 3)
    message = deserialize_message(array_to_serialized_image(array, "16UC3", header("cam")), Image)
    assert message.is_bigendian == 1
    assert bytes(message.data) == array.tobytes()
    little = deserialize_message(array_to_serialized_image(array.astype("<u2"), "16UC3"), Image)
    assert little.is_bigendian == 0
    assert bytes(little.data) == array.astype("<u2").tobytes()


def test_a_strided_array_is_packed() -> None:
    array = pixels("rgb8", 6, 9)[1::2, ::3]
    ours = deserialize_message(array_to_serialized_image(array, "rgb8", header("cam")), Image)
    assert_same_image(ours, array_to_image(array, "rgb8", header("cam")))
    assert ours.step == 3 * 3


def test_a_missing_header_is_the_empty_one() -> None:
    ours = deserialize_message(array_to_serialized_image(pixels("mono8", 2, 2), "mono8"), Image)
    assert (ours.header.frame_id, ours.header.stamp.sec, ours.header.stamp.nanosec) == ("", 0, 0)


def test_a_non_ascii_frame_id_counts_its_bytes() -> None:
    ours = array_to_serialized_image(pixels("mono8", 1, 3), "mono8", header("kaméra"))
    assert deserialize_message(ours, Image).header.frame_id == "kaméra"


@pytest.mark.parametrize("array, encoding, problem", [
    (np.zeros((2, 2, 3), np.uint16), "rgb8", "rgb8 needs dtype uint8"),
    (np.zeros((2, 2), np.uint8), "rgb8", "rgb8 needs an HxWx3 array"),
    (np.zeros((2, 2), np.uint8), "bogus", "unsupported image encoding 'bogus'"),
])
def test_bad_arrays_are_refused_as_for_an_image(array: np.ndarray, encoding: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        array_to_serialized_image(array, encoding)


DETECTIONS = "vision_msgs/msg/Detection2DArray"
# Names of every length modulo 8 put the float64 fields after them at every offset.
NAMES = ["", "a", "car", "bus", "rider", "person", "bicycle", "motorcycle"]


def detections(count: int, seed: int) -> list[Detection]:
    rng = np.random.default_rng(seed)
    return [
        Detection(NAMES[(seed + k) % len(NAMES)], float(rng.random()), *map(float, rng.random(4) * 2000),
                  str(k + 1) * (1 + (seed + k) % 3))
        for k in range(count)
    ]


def usual_detections(frame: Header, found: list[Detection]) -> Detection2DArray:
    """The message built field by field through rclpy's classes."""
    array = Detection2DArray(header=frame)
    for d in found:
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = d.class_id, d.score
        detection = Detection2D(header=frame, results=[hypothesis], id=d.id)
        detection.bbox.center.position.x, detection.bbox.center.position.y = d.center_x, d.center_y
        detection.bbox.size_x, detection.bbox.size_y = d.size_x, d.size_y
        array.detections.append(detection)
    return array


@pytest.mark.parametrize("frame_id", ["", "a", "abc", "abcdefg", "kaméra"])
@pytest.mark.parametrize("count", [0, 1, 3, 8])
def test_detection_bytes_are_the_usual_message(frame_id: str, count: int) -> None:
    found = detections(count, seed=len(frame_id) + count)
    usual = usual_detections(header(frame_id), found)
    ours = serialized_detections(header(frame_id), found)

    assert deserialize_message(ours, Detection2DArray) == usual
    # Padding, the only bytes rmw may leave uninitialised, is zero in ours: the
    # rosbags writer, which zeroes its padding, writes back exactly these bytes.
    definition(DETECTIONS)  # registers vision_msgs with rosbags
    store = ros2_typestore()
    assert bytes(store.serialize_cdr(store.deserialize_cdr(ours, DETECTIONS), DETECTIONS)) == ours
    theirs = serialize_message(usual)
    assert len(ours) == len(theirs)
    assert all(ours[i] == 0 for i, (x, y) in enumerate(zip(ours, theirs)) if x != y)
