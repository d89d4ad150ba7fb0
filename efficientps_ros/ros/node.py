"""The `efficientps` lifecycle node: cameras in; semantic, instance, panoptic, overlay, detections out.

configure loads the model and checks the parameters, activate creates the
topics and starts the inference thread, deactivate stops them, cleanup frees
the model. With `autostart` (the default) the node walks to active by itself.
"""
from __future__ import annotations

import sys
import time
from functools import partial
import traceback
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from ..predictor import Predictor
from .camera import CameraOutputs, subscribe
from .diagnostics import CameraStats, DiagnosticsReporter
from .frame_slots import FrameSlots
from .memory import keep_freed_memory
from .params import SPECS_BY_NAME, NodeSettings, ParameterError, check_change, current_values, declare
from .pipeline import PerceptionPipeline
from .worker import InferenceWorker

NODE_NAME = "efficientps"
# Seconds between two identical error logs of one camera.
ERROR_THROTTLE_S = 5.0


@dataclass
class Configured:
    """What configure builds and cleanup frees."""

    settings: NodeSettings
    predictor: Predictor
    weights: str
    weights_level: bytes
    reporter: DiagnosticsReporter
    diagnostics_publisher: Any
    diagnostics_timer: Any

    def model_values(self) -> dict[str, str]:
        """The model's side of /diagnostics."""
        size = self.settings.inference_size
        return {
            "model": self.predictor.config.name,
            "weights": self.weights,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
            "inference_size": "native" if size is None else f"{size[0]}x{size[1]}",
        }


@dataclass
class Active:
    """What activate builds and deactivate tears down."""

    outputs: dict[str, CameraOutputs]
    stats: dict[str, CameraStats]
    slots: FrameSlots
    subscriptions: list[Any]
    pipeline: PerceptionPipeline
    worker: InferenceWorker


def load_model(settings: NodeSettings) -> Predictor:
    """The predictor the settings ask for; ValueError (CheckpointError) names a bad file or value."""
    checkpoint = settings.model_checkpoint or None
    config = settings.model_preset_or_config or (None if checkpoint else "small")
    predictor = Predictor(config, checkpoint, settings.device, settings.precision, settings.inference_size)
    predictor.set_fusion(**settings.fusion)
    return predictor


def describe_weights(settings: NodeSettings, predictor: Predictor) -> tuple[str, bytes]:
    """Where the weights came from, and the diagnostics level that deserves."""
    if settings.model_checkpoint:
        return settings.model_checkpoint, DiagnosticStatus.OK
    if predictor.weights_source:
        return "the package's model trained on synthetic scenes, not a real-street model", DiagnosticStatus.OK
    return (
        f"RANDOM weights: no trained model ships for {predictor.config.name!r}, outputs are meaningless",
        DiagnosticStatus.WARN,
    )


class EfficientPSNode(LifecycleNode):
    """Owns the parameters, topics and timers; the work is done by the objects it holds."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self._configured: Configured | None = None
        self._active: Active | None = None
        self.add_on_set_parameters_callback(self._check_parameters)
        declare(self)
        self.add_post_set_parameters_callback(self._apply_live_parameters)

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    # Lifecycle transitions -------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = NodeSettings.from_values(current_values(self))
            predictor = load_model(settings)
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self._log_failure("configure", exc)
            return TransitionCallbackReturn.FAILURE
        weights, level = describe_weights(settings, predictor)
        # Without a checkpoint of their own, users must hear that this is not a real-street model.
        log = self.get_logger().info if settings.model_checkpoint else self.get_logger().warning
        log(f"model {predictor.config.name} on {predictor.device} ({predictor.precision}); weights: {weights}")
        self._configured = Configured(
            settings,
            predictor,
            weights,
            level,
            DiagnosticsReporter(NODE_NAME, str(predictor.device)),
            self.create_publisher(DiagnosticArray, "/diagnostics", 10),
            self.create_timer(settings.diagnostics_period, self._publish_diagnostics),
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._active = self._start_cameras(self._configured)
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self._log_failure("activate", exc)
            return TransitionCallbackReturn.FAILURE
        topics = ", ".join(f"{topic} -> {out.prefix}" for topic, out in self._active.outputs.items())
        self.get_logger().info(f"active: {topics}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def _log_failure(self, transition: str, exc: Exception) -> None:
        """Bad settings or files get their message alone; anything else is a bug and gets its traceback."""
        if isinstance(exc, ValueError):
            self.get_logger().error(f"{transition} failed: {exc}")
        else:
            self.get_logger().error(f"{transition} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    # The objects behind the transitions ------------------------------------

    def _start_cameras(self, configured: Configured) -> Active:
        settings = configured.settings
        topics = settings.image_topics
        outputs = {topic: CameraOutputs(self, topic, settings) for topic in topics}
        stats = {topic: CameraStats(ERROR_THROTTLE_S) for topic in topics}
        self._publish_label_info(configured, outputs)
        slots = FrameSlots(topics)
        pipeline = PerceptionPipeline(configured.predictor, settings, outputs, stats, self.get_logger().error)
        worker = InferenceWorker(slots, pipeline.process, self._on_worker_failure)
        subscriptions = [
            subscribe(self, topic, settings, self._receiver(slots, topic), partial(slots.record_lost, topic))
            for topic in topics
        ]
        worker.start()
        return Active(outputs, stats, slots, subscriptions, pipeline, worker)

    def _publish_label_info(self, configured: Configured, outputs: dict[str, CameraOutputs]) -> None:
        """The class table and the score threshold, latched for late subscribers."""
        header = Header(stamp=self.get_clock().now().to_msg())
        for out in outputs.values():
            out.publish_label_info(configured.predictor.config.classes, configured.settings.score_threshold, header)

    @staticmethod
    def _receiver(slots: FrameSlots, topic: str):
        def receive(message: Any) -> None:
            slots.put(topic, message)

        return receive

    def _stop_cameras(self) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        for subscription in active.subscriptions:
            self.destroy_subscription(subscription)
        # The worker stops before the publishers it uses go away.
        active.worker.stop()
        for out in active.outputs.values():
            out.destroy()

    def _free_model(self) -> None:
        configured, self._configured = self._configured, None
        if configured is None:
            return
        self.destroy_timer(configured.diagnostics_timer)
        self.destroy_publisher(configured.diagnostics_publisher)
        configured.predictor.close()

    def _on_worker_failure(self, exc: Exception) -> None:
        self.get_logger().error(f"inference batch failed: {type(exc).__name__}: {exc}")

    # Parameters -------------------------------------------------------------

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            problem = check_change(parameter.name, parameter.value, configured=self._configured is not None)
            if problem:
                self.get_logger().warning(f"refused: {problem}")
                return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _apply_live_parameters(self, parameters: list[Parameter]) -> None:
        configured = self._configured
        if configured is None:
            return  # read at the next configure
        ours = {p.name: p.value for p in parameters if p.name in SPECS_BY_NAME}
        configured.settings = configured.settings.with_values(ours)
        configured.predictor.set_fusion(**configured.settings.fusion)
        if self._active is not None:
            self._active.pipeline.settings = configured.settings
            if "score_threshold" in ours:
                self._publish_label_info(configured, self._active.outputs)

    # Diagnostics ------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        configured, active = self._configured, self._active
        if configured is None:
            return
        reporter = configured.reporter
        state = "active" if active else "inactive"
        statuses = [reporter.model_status(configured.weights_level, state, configured.model_values())]
        if active is not None:
            now = time.monotonic()
            for topic, stats in active.stats.items():
                statuses.append(reporter.camera_status(topic, active.slots.counts(topic), stats.snapshot(), now))
        configured.diagnostics_publisher.publish(reporter.report(statuses, self.get_clock().now().to_msg()))


def _run(node: EfficientPSNode) -> None:
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if node.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def main(args: list[str] | None = None) -> int:
    """Entry point of `efficientps_node`."""
    keep_freed_memory()
    try:
        rclpy.init(args=args)
    except RuntimeError as exc:  # rcl's own error for bad --ros-args, e.g. an unreadable params file
        print(f"efficientps_node: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        node = EfficientPSNode()
    except ParameterError as exc:
        print(f"efficientps_node: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        _run(node)
    finally:
        node.on_shutdown(None)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
