"""The benchmark's ROS stages: what the node does around the predictor.

Imported only where rclpy is, and run, like every ROS process here, inside
a network namespace with only loopback. The frames are the node's: the
camera messages become arrays as the node decodes them, every output is
built by the node's own CameraOutputs, and published to a listener in
another process (the node benchmark's).
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

from ..result import PanopticResult

# Long enough for any run; the listener is stopped when the benchmark ends.
_LISTEN_SECONDS = 24 * 3600


class RosStages:
    """Camera messages of `images`, a node with every output and a listener subscribed to all of them."""

    def __init__(self, images: Sequence[np.ndarray], classes, listener_timeout: float = 30.0):
        import rclpy
        from std_msgs.msg import Header

        from .benchmark import _wait_for_subscribers
        from .camera import CameraOutputs
        from .image_codec import array_to_image
        from .params import NodeSettings
        from ..visualize import PanopticPainter

        self._settings = NodeSettings.from_values({})
        rclpy.init()
        self._node = rclpy.create_node("efficientps_bench")
        # The topics the node benchmark's listener subscribes to.
        self._outputs = CameraOutputs(self._node, "/benchmark/image_raw", self._settings)
        self._painter = PanopticPainter(classes)
        self._messages = [array_to_image(image, "rgb8", Header(frame_id=f"camera{i}")) for i, image in enumerate(images)]
        self._built: list[dict] = []
        command = [sys.executable, "-m", "efficientps_ros.ros.benchmark", "--listen", str(_LISTEN_SECONDS)]
        self._listener = subprocess.Popen(command)
        try:
            _wait_for_subscribers(self._outputs, self._settings, listener_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def overlay_alpha(self) -> float:
        return self._settings.overlay_alpha

    def to_arrays(self) -> list[np.ndarray]:
        """Message to array: each camera message as the RGB array the predictor takes."""
        from .image_codec import to_rgb8

        return [to_rgb8(message) for message in self._messages]

    def build(self, results: Sequence[PanopticResult], arrays: Sequence[np.ndarray]) -> None:
        """Arrays to messages: every output of every camera, for the subscribers there are."""
        settings = self._settings
        wanted = self._outputs.wanted(settings)
        self._built = [
            self._outputs.build(wanted, result, rgb, message.header, settings, self._painter)
            for result, rgb, message in zip(results, arrays, self._messages)
        ]

    def publish(self) -> None:
        for built in self._built:
            self._outputs.send(built)

    def close(self) -> None:
        import rclpy

        # SIGINT is the listener's clean stop; SIGTERM would end it with a traceback.
        self._listener.send_signal(signal.SIGINT)
        self._listener.wait(10)
        self._node.destroy_node()
        rclpy.try_shutdown()


def ros_available() -> str:
    """'' when the ROS stages can run here, else why they cannot."""
    try:
        import rclpy  # noqa: F401
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        return f"no ROS here ({exc})"
    return ""
