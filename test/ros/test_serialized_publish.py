"""Serialised messages published from their own buffer through rcl, as rclpy would publish them."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image

from efficientps_ros.ros import serialized_publish
from efficientps_ros.ros.camera import OUTPUT_QOS
from efficientps_ros.ros.image_codec import array_to_serialized_image, image_to_array
from efficientps_ros.ros.serialized_publish import direct_publishing, loaded_library, publish_serialized

from .conftest import wait_until


class Loopback:
    """A publisher and a raw subscription on one topic, in a context of their own."""

    def __init__(self, topic: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("serialized_publish_test", context=self.context)
        self.received: list[bytes] = []
        self.node.create_subscription(Image, topic, self.received.append, OUTPUT_QOS, raw=True)
        self.publisher = self.node.create_publisher(Image, topic, OUTPUT_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        assert wait_until(lambda: self.publisher.get_subscription_count() > 0, 20.0), "no subscription matched"

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def loopback():
    pair = Loopback("/serialized_publish/image")
    yield pair
    pair.close()


def a_frame(seed: int) -> tuple[np.ndarray, bytes]:
    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return pixels, array_to_serialized_image(pixels, "rgb8")


def test_rcl_is_found_where_rclpy_loaded_it():
    assert direct_publishing()
    path = loaded_library("librcl.so")
    assert path is not None and "librcl.so" in path


def test_the_bytes_arrive_as_they_were_sent(loopback):
    pixels, data = a_frame(0)
    publish_serialized(loopback.publisher, data)
    assert wait_until(lambda: loopback.received, 20.0), "nothing arrived"
    assert loopback.received[0] == data
    assert np.array_equal(image_to_array(deserialize_message(data, Image)), pixels)


def test_without_rcl_rclpy_publishes_them(loopback, monkeypatch):
    monkeypatch.setattr(serialized_publish, "_rcl", lambda: None)
    _, data = a_frame(1)
    publish_serialized(loopback.publisher, data)
    assert wait_until(lambda: loopback.received, 20.0), "nothing arrived"
    assert loopback.received[0] == data


def test_after_shutdown_it_fails_as_rclpy_fails(loopback):
    _, data = a_frame(2)
    loopback.executor.shutdown()
    rclpy.shutdown(context=loopback.context)
    with pytest.raises(Exception) as theirs:
        loopback.publisher.publish(data)
    with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
        publish_serialized(loopback.publisher, data)


class RefusingRcl:
    """rcl's two calls as a refusing rcl would answer them."""

    def __init__(self):
        self.resets = 0

    def publish(self, handle, message, allocation):
        return 1  # RCL_RET_ERROR

    def error(self):
        return serialized_publish._ErrorString(b"the middleware said no")

    def reset(self):
        self.resets += 1


def test_a_refusal_by_rcl_names_the_topic_and_rcl_s_message(loopback, monkeypatch):
    refusing = RefusingRcl()
    monkeypatch.setattr(serialized_publish, "_rcl", lambda: refusing)
    _, data = a_frame(3)
    for count in (1, 2):
        with pytest.raises(RuntimeError, match=r"publishing on /serialized_publish/image failed: "
                                               r"the middleware said no \(rcl returned 1\)"):
            publish_serialized(loopback.publisher, data)
        # Reset, so that the next error is not reported as overwriting this one.
        assert refusing.resets == count


def test_a_mapped_library_is_found_by_its_file_name(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f10 r--p 00000000 08:01 42   /opt/ros/lib/librcl_action.so\n"
        "7f10-7f20 r-xp 00000000 08:01 43   /opt/ros/lib/librcl.so.5\n"
        "7f20-7f30 rw-p 00000000 00:00 0 \n"
    )
    assert loaded_library("librcl.so", str(maps)) == "/opt/ros/lib/librcl.so.5"
    assert loaded_library("libnothing.so", str(maps)) is None
    assert loaded_library("librcl.so", str(tmp_path / "missing")) is None
