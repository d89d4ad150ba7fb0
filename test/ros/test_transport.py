"""Two processes exchange a 1024x2048 rgb8 image through the venv's rclpy and Fast DDS."""
from __future__ import annotations

import hashlib
import json

import numpy as np

TOPIC = "/transport_test/image_raw"
HEIGHT, WIDTH, SEED = 1024, 2048, 20240611
STAMP_SEC, STAMP_NANOSEC, FRAME_ID = 1_700_000_000, 123_456_789, "camera_optical_frame"


def expected_pixels() -> np.ndarray:
    """The image the publisher sends, rebuilt here from the same seed."""
    return np.random.default_rng(SEED).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)

# Publishes one frame once a subscriber is matched, and again every second until
# the subscriber leaves (it exits after its first frame) or time runs out.
PUBLISHER = f"""
import sys, time
import numpy as np
import rclpy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from efficientps_ros.ros.image_codec import array_to_image

rclpy.init()
node = rclpy.create_node("transport_publisher")
publisher = node.create_publisher(Image, {TOPIC!r}, 1)
header = Header(frame_id={FRAME_ID!r})
header.stamp.sec, header.stamp.nanosec = {STAMP_SEC}, {STAMP_NANOSEC}
pixels = np.random.default_rng({SEED}).integers(0, 256, ({HEIGHT}, {WIDTH}, 3), np.uint8)
msg = array_to_image(pixels, "rgb8", header)

deadline = time.monotonic() + float(sys.argv[1])
while publisher.get_subscription_count() == 0:
    if time.monotonic() > deadline:
        sys.exit("no subscriber appeared")
    time.sleep(0.05)
sent = 0
while publisher.get_subscription_count() > 0 and time.monotonic() < deadline:
    publisher.publish(msg)
    sent += 1
    time.sleep(1.0)
print("sent", sent)
node.destroy_node()
rclpy.shutdown()
"""

# Prints what arrived in the first frame as one JSON line, then exits.
SUBSCRIBER = f"""
import hashlib, json, sys, time
import rclpy
from sensor_msgs.msg import Image

rclpy.init()
node = rclpy.create_node("transport_subscriber")
frames = []
node.create_subscription(Image, {TOPIC!r}, frames.append, 1)
deadline = time.monotonic() + float(sys.argv[1])
while not frames and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
if not frames:
    sys.exit("no image arrived")
msg = frames[0]
print(json.dumps({{
    "sha256": hashlib.sha256(msg.data).hexdigest(),
    "size": [msg.height, msg.width, msg.step, len(msg.data)],
    "encoding": msg.encoding,
    "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
    "frame_id": msg.header.frame_id,
}}))
node.destroy_node()
rclpy.shutdown()
"""


def test_large_rgb8_image_crosses_processes_intact(ros_processes) -> None:
    subscriber = ros_processes.start(SUBSCRIBER, args=["60"], name="subscriber")
    publisher = ros_processes.start(PUBLISHER, args=["60"], name="publisher")

    received = subscriber.wait(timeout=90)
    assert received.returncode == 0, subscriber.describe()
    sent = publisher.wait(timeout=30)
    assert sent.returncode == 0, publisher.describe()

    report = json.loads(received.stdout.strip().splitlines()[-1])
    assert report["sha256"] == hashlib.sha256(expected_pixels().tobytes()).hexdigest()
    assert report["size"] == [HEIGHT, WIDTH, WIDTH * 3, HEIGHT * WIDTH * 3]
    assert report["encoding"] == "rgb8"
    assert report["stamp"] == [STAMP_SEC, STAMP_NANOSEC]
    assert report["frame_id"] == FRAME_ID
