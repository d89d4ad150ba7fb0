"""One camera's topics: where its outputs go, and the publishers that send them."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from ..model.config import ClassInfo
from ..result import PanopticResult
from ..visualize import PanopticPainter
from . import messages
from .params import NodeSettings, output_prefix

# Reliable keep-last-1 reaches rviz2's default subscriptions and never queues old frames.
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Late subscribers still get the class table, which is published once.
LABEL_INFO_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)
IMAGE_OUTPUTS = ("semantic", "instance", "panoptic", "overlay")


def input_topic(image_topic: str, transport: str) -> str:
    return f"{image_topic}/compressed" if transport == "compressed" else image_topic


def input_qos(settings: NodeSettings) -> QoSProfile:
    reliability = {
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
    }[settings.input_qos_reliability]
    return QoSProfile(depth=settings.input_qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)


class CameraOutputs:
    """The output publishers of one camera; builds only the outputs someone listens to."""

    def __init__(self, node: Node, image_topic: str, settings: NodeSettings):
        self.prefix = output_prefix(image_topic, settings.output_namespace)
        self._node = node
        self._publishers = {
            name: node.create_publisher(Image, f"{self.prefix}/{name}", OUTPUT_QOS) for name in IMAGE_OUTPUTS
        }
        self._publishers["detections"] = node.create_publisher(
            Detection2DArray, f"{self.prefix}/detections", OUTPUT_QOS
        )
        self._label_info = node.create_publisher(LabelInfo, f"{self.prefix}/label_info", LABEL_INFO_QOS)

    def publish_label_info(self, classes: tuple[ClassInfo, ...], threshold: float, header: Header) -> None:
        self._label_info.publish(messages.label_info(classes, threshold, header))

    def wanted(self, settings: NodeSettings) -> list[str]:
        """Outputs that are switched on and have at least one subscriber."""
        return [
            name
            for name, publisher in self._publishers.items()
            if settings.publishes(name) and publisher.get_subscription_count() > 0
        ]

    def build(
        self,
        outputs: list[str],
        result: PanopticResult,
        rgb: np.ndarray,
        header: Header,
        settings: NodeSettings,
        painter: PanopticPainter,
    ) -> dict[str, Any]:
        builders: dict[str, Callable[[], Any]] = {
            "semantic": lambda: messages.semantic_image(result, header),
            "instance": lambda: messages.instance_image(result, header),
            "panoptic": lambda: messages.panoptic_image(result, header),
            "overlay": lambda: messages.overlay_image(rgb, result, painter, settings.overlay_alpha, header),
            "detections": lambda: messages.detection_array(result, header),
        }
        return {name: builders[name]() for name in outputs}

    def send(self, built: dict[str, Any]) -> None:
        for name, message in built.items():
            self._publishers[name].publish(message)

    def destroy(self) -> None:
        for publisher in (*self._publishers.values(), self._label_info):
            self._node.destroy_publisher(publisher)


def subscribe(
    node: Node,
    image_topic: str,
    settings: NodeSettings,
    on_message: Callable[[Any], None],
    on_lost: Callable[[int], None],
):
    """The camera's input subscription: Image, or CompressedImage on <topic>/compressed.

    `on_lost` hears how many messages the middleware lost on the way, where
    it reports that; elsewhere the subscription works without it.
    """
    message_type = CompressedImage if settings.transport == "compressed" else Image
    topic, qos = input_topic(image_topic, settings.transport), input_qos(settings)
    events = SubscriptionEventCallbacks(message_lost=lambda info: on_lost(info.total_count_change))
    try:
        return node.create_subscription(message_type, topic, on_message, qos, event_callbacks=events)
    except UnsupportedEventTypeError:
        return node.create_subscription(message_type, topic, on_message, qos)
