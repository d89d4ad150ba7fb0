"""PanopticResult -> ROS messages. Every message carries the input's header.

Images keep the input's size; detections use the same ids as the instance
image, with the predictor's box around each instance's pixels. The images and
the detections come serialised (CDR bytes), which `Publisher.publish` sends
and a rosbag2 stores as they are: at 1024x2048 building and sending the four
images through Image messages cost tens of milliseconds a frame, and 20
detections through message objects half a millisecond.
`rclpy.serialization.deserialize_message(data, Image)` reads one back.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import LabelInfo, VisionClass

from ..model.config import VOID_TRAIN_ID, ClassInfo
from ..result import Instance, PanopticResult
from ..visualize import PanopticPainter
from .cdr import Detection, serialized_detections
from .image_codec import array_to_serialized_image


def semantic_image(result: PanopticResult, header: Header) -> bytes:
    """mono8 train ids, 255 = void."""
    return array_to_serialized_image(result.semantic, "mono8", header)


def instance_image(result: PanopticResult, header: Header) -> bytes:
    """mono16: 0 = no instance, k = the k-th instance (Detection2D.id == str(k))."""
    return array_to_serialized_image(result.instance, "mono16", header)


def panoptic_image(result: PanopticResult, header: Header) -> bytes:
    """32SC1 Cityscapes panoptic ids: label id, or label id * 1000 + k; void 0."""
    return array_to_serialized_image(result.panoptic, "32SC1", header)


def overlay_image(
    rgb: np.ndarray, result: PanopticResult, painter: PanopticPainter, alpha: float, header: Header
) -> bytes:
    """rgb8: the panoptic colouring blended over the input image; the predictor's, where it painted one."""
    painted = result.overlay if result.overlay_alpha == alpha else painter.overlay(rgb, result, alpha)
    return array_to_serialized_image(painted, "rgb8", header)


def detection_array(result: PanopticResult, header: Header) -> bytes:
    """Serialised Detection2DArray: one Detection2D per thing instance.

    id = str(k), as in the instance image; class_id = the class name; bbox in pixels.
    """
    return serialized_detections(header, [_detection(inst) for inst in result.instances])


def _detection(inst: Instance) -> Detection:
    x0, y0, x1, y1 = (float(v) for v in inst.box)
    return Detection(inst.class_name, float(inst.score), (x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0,
                     str(inst.id))


def label_info(classes: Sequence[ClassInfo], threshold: float, header: Header) -> LabelInfo:
    """The class table: class_id = the value in the semantic image, including 255 = void."""
    class_map = [VisionClass(class_id=info.train_id, class_name=info.name) for info in classes]
    class_map.append(VisionClass(class_id=VOID_TRAIN_ID, class_name="void"))
    return LabelInfo(header=header, class_map=class_map, threshold=float(threshold))
