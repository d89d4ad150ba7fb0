"""One camera's topics: where its outputs go, its subscription, and the publishers that send them.

Output names derive from the subscription's resolved name, so the node's
namespace and remaps move a camera's outputs with its input.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from ..model.config import ClassInfo
from ..result import PanopticResult
from ..visualize import PanopticPainter
from . import messages
from .params import OUTPUTS, NodeSettings, output_prefix
from .serialized_publish import publish_serialized

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
COMPRESSED_SUFFIX = "/compressed"


def input_topic(image_topic: str, transport: str) -> str:
    return f"{image_topic}{COMPRESSED_SUFFIX}" if transport == "compressed" else image_topic


def camera_topic(subscribed_topic: str, transport: str) -> str:
    """The camera's image topic behind a subscription: '/cam/image_raw/compressed' -> '/cam/image_raw'."""
    if transport == "compressed" and subscribed_topic.endswith(COMPRESSED_SUFFIX):
        return subscribed_topic[: -len(COMPRESSED_SUFFIX)]
    return subscribed_topic


def output_topics(resolved_input: str, output_namespace: str, transport: str = "raw") -> dict[str, str]:
    """Every output topic of the camera read from `resolved_input`, by output name.

    '/car1/camera/image_raw' -> {'semantic': '/car1/camera/efficientps/semantic', ...,
    'label_info': '/car1/camera/efficientps/label_info'}. `resolved_input` is
    the topic actually subscribed (after namespace and remaps), so the offline
    runner names its topics as the live node does.
    """
    prefix = output_prefix(camera_topic(resolved_input, transport), output_namespace)
    return {name: f"{prefix}/{name}" for name in (*OUTPUTS, "label_info")}


def input_qos(settings: NodeSettings) -> QoSProfile:
    reliability = {
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
    }[settings.input_qos_reliability]
    return QoSProfile(depth=settings.input_qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)


class CameraOutputs:
    """The output publishers of one camera; builds only the outputs someone listens to."""

    def __init__(self, node: Node, image_topic: str, settings: NodeSettings):
        """`image_topic` is the camera's resolved image topic (see `camera_topic`)."""
        topics = output_topics(image_topic, settings.output_namespace)
        self.prefix = output_prefix(image_topic, settings.output_namespace)
        self._node = node
        self._publishers = {name: node.create_publisher(Image, topics[name], OUTPUT_QOS) for name in IMAGE_OUTPUTS}
        self._publishers["detections"] = node.create_publisher(Detection2DArray, topics["detections"], OUTPUT_QOS)
        self._label_info = node.create_publisher(LabelInfo, topics["label_info"], LABEL_INFO_QOS)

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
            if isinstance(message, bytes):
                publish_serialized(self._publishers[name], message)
            else:
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
    on_incompatible: Callable[[str], None] = lambda policy: None,
):
    """The camera's input subscription: Image, or CompressedImage on <topic>/compressed.

    `on_lost` hears how many messages the middleware lost on the way, and
    `on_incompatible` the name of the QoS policy a publisher could not match,
    where the middleware reports them; elsewhere the subscription works without.
    """
    message_type = CompressedImage if settings.transport == "compressed" else Image
    topic, qos = input_topic(image_topic, settings.transport), input_qos(settings)
    events = SubscriptionEventCallbacks(
        message_lost=lambda info: on_lost(info.total_count_change),
        incompatible_qos=lambda info: on_incompatible(qos_policy_name_from_kind(info.last_policy_kind)),
    )
    try:
        return node.create_subscription(message_type, topic, on_message, qos, event_callbacks=events)
    except UnsupportedEventTypeError:
        return node.create_subscription(message_type, topic, on_message, qos)


class CameraInput:
    """One camera's subscription, named by the image topic it resolved to.

    The callbacks get that name first: (camera, message), (camera, lost
    count), (camera, QoS policy name).
    """

    def __init__(
        self,
        node: Node,
        image_topic: str,
        settings: NodeSettings,
        on_message: Callable[[str, Any], None],
        on_lost: Callable[[str, int], None],
        on_incompatible: Callable[[str, str], None],
    ):
        self._node = node
        # The node's executor runs these callbacks only after the transition creating this returns.
        self.subscription = subscribe(
            node,
            image_topic,
            settings,
            lambda message: on_message(self.name, message),
            lambda count: on_lost(self.name, count),
            lambda policy: on_incompatible(self.name, policy),
        )
        self.name = camera_topic(self.subscription.topic_name, settings.transport)

    def destroy(self) -> None:
        self._node.destroy_subscription(self.subscription)
