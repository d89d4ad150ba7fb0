"""sensor_msgs/Image and vision_msgs/Detection2DArray as serialised CDR bytes.

rclpy's `Publisher.publish` sends `bytes` as an already serialised message,
and a rosbag2 stores the same bytes. Building them here skips what the usual
path does with a large image: `tobytes()`, the conversion of `msg.data` to
an array.array, its copy into the C message and the serialisation. An Image
is built from the pixels in one copy. A detection array is packed straight
from the boxes, without the five Python message objects per detection that
rclpy would build and then serialise.

The layout is what rmw_fastrtps writes (plain CDR, little endian): a 4-byte
encapsulation header, then each field aligned to its own size counted from
the end of that header. Alignment padding is written as zeros.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

from std_msgs.msg import Header

# CDR_LE with no options: the representation identifier rmw_fastrtps writes.
ENCAPSULATION = b"\x00\x01\x00\x00"
_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iI")
_SIZE = struct.Struct("<II")
_F64 = struct.Struct("<d")
# Detection2D.bbox: center.position.x, center.position.y, center.theta, size_x, size_y.
_BOX = struct.Struct("<5d")
# ObjectHypothesisWithPose.pose, always the default: position 0, orientation the
# identity quaternion (w = 1), covariance 36 zeros. All float64, so no padding inside.
_DEFAULT_POSE = struct.pack("<7d", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0) + bytes(36 * 8)


class _Writer:
    """Fields appended one by one, each aligned as CDR wants it."""

    def __init__(self):
        self._parts: list[bytes] = []
        # Bytes written since the encapsulation header: alignment counts from there.
        self._offset = 0

    def raw(self, data: bytes) -> None:
        self._parts.append(data)
        self._offset += len(data)

    def align(self, size: int) -> None:
        self.raw(bytes(-self._offset % size))

    def u32s(self, packer: struct.Struct, *values: int) -> None:
        self.align(4)
        self.raw(packer.pack(*values))

    def f64s(self, packer: struct.Struct, *values: float) -> None:
        self.align(8)
        self.raw(packer.pack(*values))

    def header(self, header: Header) -> None:
        self.u32s(_STAMP, header.stamp.sec, header.stamp.nanosec)
        self.string(header.frame_id)

    def string(self, text: str) -> None:
        # A CDR string counts its terminating NUL.
        data = text.encode()
        self.u32s(_U32, len(data) + 1)
        self.raw(data + b"\x00")

    def joined(self) -> bytes:
        return b"".join(self._parts)


def image_prefix(
    header: Header, height: int, width: int, encoding: str, is_bigendian: int, step: int, data_size: int
) -> bytes:
    """Everything of a serialised Image before its pixel bytes, their length included."""
    writer = _Writer()
    writer.header(header)
    writer.u32s(_SIZE, height, width)
    writer.string(encoding)
    writer.raw(bytes((is_bigendian,)))
    writer.u32s(_SIZE, step, data_size)
    return ENCAPSULATION + writer.joined()


def serialized_image(
    header: Header, height: int, width: int, encoding: str, is_bigendian: int, step: int, data: memoryview
) -> bytes:
    """The CDR bytes of the Image with these fields; `data` (a flat byte buffer) is copied once."""
    prefix = image_prefix(header, height, width, encoding, is_bigendian, step, data.nbytes)
    return b"".join((prefix, data))


class Detection(NamedTuple):
    """One Detection2D as the node fills it: one hypothesis, a box in pixels, an id."""

    class_id: str
    score: float
    center_x: float
    center_y: float
    size_x: float
    size_y: float
    id: str


def serialized_detections(header: Header, detections: Sequence[Detection]) -> bytes:
    """The CDR bytes of a Detection2DArray whose detections all carry `header`, with theta 0."""
    writer = _Writer()
    writer.header(header)
    writer.u32s(_U32, len(detections))
    for detection in detections:
        writer.header(header)
        writer.u32s(_U32, 1)  # results
        writer.string(detection.class_id)
        writer.f64s(_F64, detection.score)
        writer.raw(_DEFAULT_POSE)
        writer.f64s(_BOX, detection.center_x, detection.center_y, 0.0, detection.size_x, detection.size_y)
        writer.string(detection.id)
    return ENCAPSULATION + writer.joined()
