"""`efficientps bag synth OUT`: a synthetic drive as a rosbag2.

Each camera sees consecutive frames of one drive (the camera and the things
in view move between frames), stamped at the given rate with its own
frame_id, next to a CameraInfo per frame. Raw rgb8 Images, or JPEG
CompressedImages on <topic>/compressed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from ...data.synthetic import street_drive
from ..image_codec import array_to_image, rgb8_to_compressed
from .message_types import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE
from .play import check_number
from .sink import BagSink

# Bag time of the first frame: a fixed epoch, so that a drive is the same bag every time.
FIRST_STAMP_NS = 1_700_000_000 * 10**9
# A day of driving: the last stamp stays well inside the 32-bit seconds of a ROS time.
MAX_SECONDS = 86_400.0
# Frames a millisecond apart at the most; faster, the nanosecond stamps would bunch up.
MAX_RATE = 1000.0
# Frames per camera: about an hour at 30 Hz, gigabytes of raw images already.
MAX_FRAMES = 100_000


@dataclass(frozen=True)
class DriveOptions:
    seconds: float = 6.0
    rate: float = 5.0
    height: int = 256
    width: int = 512
    compressed: bool = False
    cameras: int = 1
    storage: str = "mcap"
    seed: int = 0


def camera_names(cameras: int) -> list[str]:
    return ["camera"] if cameras == 1 else [f"cam{i}" for i in range(cameras)]


def image_topic(camera: str, compressed: bool) -> str:
    return f"/{camera}/image_raw/compressed" if compressed else f"/{camera}/image_raw"


def drive_frames(seed: int, height: int, width: int, count: int) -> Iterator[np.ndarray]:
    """`count` consecutive HxWx3 uint8 RGB frames of the synthetic drive `seed`."""
    for scene in street_drive(seed, height, width, frames=count):
        yield scene.image


def camera_info(header: Header, height: int, width: int) -> CameraInfo:
    """A distortion-free pinhole with a 90 degree horizontal field of view."""
    focal, cx, cy = width / 2.0, (width - 1) / 2.0, (height - 1) / 2.0
    return CameraInfo(
        header=header, height=height, width=width, distortion_model="plumb_bob", d=[0.0] * 5,
        k=[focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


def check_drive(options: DriveOptions) -> int:
    """The number of frames per camera of the drive; ValueError naming the option out of range.

    Checked before anything is written: infinity would overflow the frame count.
    """
    check_number("--seconds", options.seconds, above=0)
    check_number("--rate", options.rate, above=0)
    if options.seconds > MAX_SECONDS:
        raise ValueError(f"--seconds {options.seconds:g}: allowed: at most {MAX_SECONDS:g}")
    if options.rate > MAX_RATE:
        raise ValueError(f"--rate {options.rate:g}: allowed: at most {MAX_RATE:g} frames per second")
    if options.cameras < 1:
        raise ValueError(f"--cameras must be at least 1 (got {options.cameras})")
    if min(options.height, options.width) < 32:
        raise ValueError(f"--size must be at least 32x32 (got {options.height}x{options.width})")
    count = max(1, round(options.seconds * options.rate))
    if count > MAX_FRAMES:
        raise ValueError(f"--seconds {options.seconds:g} at --rate {options.rate:g} make {count:,} frames; "
                         f"allowed: at most {MAX_FRAMES:,} per camera")
    return count


def synth_bag(out: str | Path, options: DriveOptions = DriveOptions()) -> int:
    """Write the drive; returns the number of frames per camera."""
    count = check_drive(options)
    period = round(1e9 / options.rate)
    with BagSink(out, options.storage) as sink:
        cameras = camera_names(options.cameras)
        for camera in cameras:
            sink.add_topic(image_topic(camera, options.compressed), COMPRESSED_IMAGE if options.compressed else IMAGE)
            sink.add_topic(f"/{camera}/camera_info", CAMERA_INFO)
        streams = [drive_frames(options.seed + i, options.height, options.width, count) for i in range(len(cameras))]
        for index, frames in enumerate(zip(*streams)):
            stamp = FIRST_STAMP_NS + index * period
            for camera, rgb in zip(cameras, frames):
                header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=camera)
                image = rgb8_to_compressed(rgb, "jpeg", header) if options.compressed else array_to_image(
                    np.ascontiguousarray(rgb), "rgb8", header)
                sink.write(image_topic(camera, options.compressed), stamp, serialize_message(image))
                sink.write(f"/{camera}/camera_info", stamp, serialize_message(camera_info(header, *rgb.shape[:2])))
    return count
