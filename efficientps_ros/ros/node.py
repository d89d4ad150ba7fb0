"""The `efficientps` lifecycle node: cameras in; semantic, instance, panoptic, overlay, detections out.

configure loads the model and checks the parameters, activate creates the
topics and starts the inference thread, deactivate stops them, cleanup frees
the model. With `autostart` (the default) the node walks to active by itself,
and exits with status 1 when it cannot. SIGINT and SIGTERM stop the worker
before the ROS context goes, and the process exits 0.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Header

from .camera import CameraInput, CameraOutputs
from .diagnostics import CameraStats, DiagnosticsReporter, lifecycle_status
from .frame_slots import FrameSlots
from .memory import keep_freed_memory
from .params import (
    SPECS_BY_NAME,
    NodeSettings,
    ParameterError,
    check_change,
    current_values,
    declare,
    shared_prefix_problem,
)
from .worker import InferenceWorker

if TYPE_CHECKING:  # torch comes with them, and takes seconds to import: see load_model
    from ..predictor import Predictor
    from .pipeline import PerceptionPipeline

NODE_NAME = "efficientps"
# Seconds between two identical error logs of one camera.
ERROR_THROTTLE_S = 5.0
# How long a shutdown waits for a batch still in the model before the process exits anyway.
SHUTDOWN_WAIT_S = 5.0
# How often the main loop looks for a stop signal between executor callbacks.
SPIN_PERIOD_S = 0.1
# Once the node stops, for whatever reason, the process ends within this, even if
# tearing down the middleware stalls (Fast DDS can block joining its TCP threads).
EXIT_DEADLINE_S = 15.0


@dataclass
class Configured:
    """What configure builds and cleanup frees."""

    settings: NodeSettings
    predictor: Predictor
    weights: str
    weights_level: bytes
    reporter: DiagnosticsReporter

    def model_values(self) -> dict[str, str]:
        """The model's side of /diagnostics."""
        size = self.settings.inference_size
        return {
            "model": self.predictor.config.name,
            "weights": self.weights,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
            "compiled": str(self.predictor.compiled).lower(),
            "inference_size": "native" if size is None else f"{size[0]}x{size[1]}",
        }


@dataclass
class Active:
    """What activate builds and deactivate tears down."""

    outputs: dict[str, CameraOutputs]
    stats: dict[str, CameraStats]
    slots: FrameSlots
    inputs: list[CameraInput]
    pipeline: PerceptionPipeline
    worker: InferenceWorker


def load_model(settings: NodeSettings) -> Predictor:
    """The predictor the settings ask for; ValueError (CheckpointError) names a bad file or value."""
    # Imported at configure, so that a refused start-up parameter is answered without waiting for torch.
    from ..predictor import Predictor

    checkpoint = settings.model_checkpoint or None
    config = settings.model_preset_or_config or (None if checkpoint else "small")
    predictor = Predictor(
        config, checkpoint, settings.device, settings.precision, settings.inference_size, compile=settings.compile
    )
    try:
        settings.check_network_size(predictor.config.size_divisor)
    except ValueError:
        predictor.close()
        raise
    predictor.set_fusion(**settings.fusion)
    if settings.inference_size is not None:
        # Every frame reaches the network at this size, so the first real one need not pay for
        # allocation, cuDNN's search or compilation.
        predictor.warm_up([settings.inference_size], batch=len(settings.image_topics))
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
        # A deactivated worker whose batch is still in the model; joined before the model is used again.
        self._retired: InferenceWorker | None = None
        self._configure_failure = ""
        self._declared = False
        self._refusal: str | None = None
        self.add_on_set_parameters_callback(self._check_parameters)
        try:
            declare(self, lambda: self._refusal)
        except ParameterError:
            # Its middleware entities go before the context does, or the process may hang at exit.
            self.destroy_node()
            raise
        self._declared = True
        self.add_post_set_parameters_callback(self._apply_live_parameters)
        # /diagnostics from the start, so that a failed configure is seen; on a steady
        # clock, so that use_sim_time without /clock does not stop it.
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(
            self.get_parameter("diagnostics_period").value,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    # Lifecycle transitions -------------------------------------------------

    def start(self) -> bool:
        """configure, then activate; False when either failed (the reason is logged)."""
        return (
            self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        )

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = NodeSettings.from_values(current_values(self))
            predictor = load_model(settings)
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self._configure_failure = self._log_failure("configure", exc)
            return TransitionCallbackReturn.FAILURE
        self._configure_failure = ""
        weights, level = describe_weights(settings, predictor)
        # Without a checkpoint of their own, users must hear that this is not a real-street model.
        log = self.get_logger().info if settings.model_checkpoint else self.get_logger().warning
        mode = f"{predictor.precision}, compiled" if predictor.compiled else predictor.precision
        log(f"model {predictor.config.name} on {predictor.device} ({mode}); weights: {weights}")
        reporter = DiagnosticsReporter(self.get_name(), str(predictor.device))
        self._configured = Configured(settings, predictor, weights, level, reporter)
        self._diagnostics_timer.timer_period_ns = round(settings.diagnostics_period * 1e9)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._join_retired_worker(None)
        try:
            self._active = self._start_cameras(self._configured)
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self._log_failure("activate", exc)
            return TransitionCallbackReturn.FAILURE
        topics = ", ".join(f"{topic} -> {out.prefix}/*" for topic, out in self._active.outputs.items())
        self.get_logger().info(f"active: {topics}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._join_retired_worker(None)
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        # A batch still in the model after this is abandoned with the daemon thread.
        if self._join_retired_worker(SHUTDOWN_WAIT_S):
            self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_cameras()
        self._join_retired_worker(None)
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def _log_failure(self, transition: str, exc: Exception) -> str:
        """Log why `transition` failed and return it in one line.

        Bad settings or files get their message alone; anything else is a bug and gets its traceback.
        """
        if isinstance(exc, ValueError):
            reason, detail = f"{transition} failed: {exc}", ""
        else:
            reason, detail = f"{transition} failed: {type(exc).__name__}: {exc}", f"\n{traceback.format_exc()}"
        self.get_logger().error(reason + detail)
        return reason

    # The objects behind the transitions ------------------------------------

    def _start_cameras(self, configured: Configured) -> Active:
        """Subscribe first: each camera's outputs are named after the topic its subscription resolved to."""
        settings = configured.settings
        inputs = [
            CameraInput(self, topic, settings, self._on_frame, self._on_lost, self._on_incompatible_qos)
            for topic in settings.image_topics
        ]
        cameras = [camera.name for camera in inputs]
        outputs: dict[str, CameraOutputs] = {}
        try:
            # Names that were distinct as parameters may meet once resolved; one topic twice shares its prefix too.
            problem = shared_prefix_problem(cameras, settings.output_namespace)
            if problem:
                raise ValueError(f"{problem} (resolved: {', '.join(cameras)})")
            for camera in cameras:
                outputs[camera] = CameraOutputs(self, camera, settings)
            self._publish_label_info(configured, outputs)
        except Exception:
            # A failed activate leaves nothing subscribed or advertised behind it.
            for entity in (*inputs, *outputs.values()):
                entity.destroy()
            raise
        stats = {camera: CameraStats(ERROR_THROTTLE_S) for camera in cameras}
        slots = FrameSlots(cameras)
        from .pipeline import PerceptionPipeline  # torch, imported by now with the predictor

        pipeline = PerceptionPipeline(
            configured.predictor, settings, outputs, stats, self.get_logger().error, overlap_outputs=True
        )
        worker = InferenceWorker(slots, pipeline.process, self._on_worker_failure)
        configured.reporter.start_cameras(cameras, time.monotonic())
        worker.start()
        return Active(outputs, stats, slots, inputs, pipeline, worker)

    def _publish_label_info(self, configured: Configured, outputs: dict[str, CameraOutputs]) -> None:
        """The class table and the score threshold, latched for late subscribers."""
        header = Header(stamp=self.get_clock().now().to_msg())
        for out in outputs.values():
            out.publish_label_info(configured.predictor.config.classes, configured.settings.score_threshold, header)

    # Subscription callbacks: they run on the executor, as do the transitions.

    def _on_frame(self, camera: str, message: Any) -> None:
        if self._active is not None:
            self._active.slots.put(camera, message)

    def _on_lost(self, camera: str, count: int) -> None:
        if self._active is not None:
            self._active.slots.record_lost(camera, count)

    def _on_incompatible_qos(self, camera: str, policy: str) -> None:
        if self._active is not None and self._active.stats[camera].record_incompatible_qos(policy):
            self.get_logger().warning(
                f"camera {camera}: a publisher's QoS is incompatible with this subscription ({policy}); "
                "its frames never arrive, see input_qos.*"
            )

    def _stop_cameras(self) -> None:
        """Returns at once: a batch still in the model finishes in the background and is dropped."""
        active, self._active = self._active, None
        if active is None:
            return
        for camera in active.inputs:
            camera.destroy()
        # Closed before the publishers it uses go away; the batch's result goes nowhere.
        active.pipeline.close()
        active.worker.stop(wait=False)
        self._retired = active.worker
        for out in active.outputs.values():
            out.destroy()

    def _join_retired_worker(self, timeout: float | None) -> bool:
        """Wait for a deactivated worker's last batch; True once no worker is left running."""
        retired = self._retired
        if retired is None:
            return True
        if not retired.join(timeout):
            return False
        self._retired = None
        return True

    def _free_model(self) -> None:
        configured, self._configured = self._configured, None
        if configured is not None:
            configured.predictor.close()

    def _on_worker_failure(self, exc: Exception) -> None:
        self.get_logger().error(f"inference batch failed: {type(exc).__name__}: {exc}")

    # Parameters -------------------------------------------------------------

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        problem = None
        for parameter in parameters:
            problem = problem or check_change(parameter.name, parameter.value, configured=self._configured is not None)
        problem = problem or self._check_live_combination(parameters)
        if problem:
            # A refused start-up value ends the process with this message alone.
            self._refusal = problem
            if self._declared:
                self.get_logger().warning(f"refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _check_live_combination(self, parameters: list[Parameter]) -> str | None:
        """Why the configured settings with these live changes would not hold together; None when they do."""
        configured = self._configured
        ours = {p.name: p.value for p in parameters if p.name in SPECS_BY_NAME}
        if configured is None or not ours:
            return None
        try:
            configured.settings.with_values(ours).check_network_size(configured.predictor.config.size_divisor)
        except ValueError as exc:
            return str(exc)
        return None

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
        stamp = self.get_clock().now().to_msg()
        if configured is None:
            status = lifecycle_status(self.get_name(), "unconfigured", self._configure_failure)
            self._diagnostics_publisher.publish(DiagnosticArray(header=Header(stamp=stamp), status=[status]))
            return
        reporter = configured.reporter
        state = "active" if active else "inactive"
        statuses = [reporter.model_status(configured.weights_level, state, configured.model_values())]
        if active is not None:
            now = time.monotonic()
            for topic, stats in active.stats.items():
                statuses.append(reporter.camera_status(topic, active.slots.counts(topic), stats.snapshot(), now))
        self._diagnostics_publisher.publish(reporter.report(statuses, stamp))


def _spin_until_signal(executor: SingleThreadedExecutor) -> None:
    """Spin until SIGINT or SIGTERM; the context stays valid until the caller has stopped the node."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set() and rclpy.ok():
        executor.spin_once(timeout_sec=SPIN_PERIOD_S)


def _exit_after_deadline(status: int) -> None:
    """A process supervisor (launch, systemd, a test) must see the exit, and its status, in time."""
    time.sleep(EXIT_DEADLINE_S)
    print(f"efficientps_node: shutdown took over {EXIT_DEADLINE_S:.0f} s; exiting without finishing it",
          file=sys.stderr, flush=True)
    os._exit(status)


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of `efficientps_node`: 0 after a signal, 1 when autostart fails, 2 on bad arguments.

    The process ends here rather than in the interpreter's own exit, where the
    middleware's destructors would run with no deadline over them.
    """
    status = _run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _run(args: list[str] | None) -> int:
    keep_freed_memory()
    try:
        # rclpy's own handlers would invalidate the context under a running worker.
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as exc:  # rcl's own error for bad --ros-args, e.g. an unreadable params file
        print(f"efficientps_node: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        node = EfficientPSNode()
    except ParameterError as exc:
        print(f"efficientps_node: {exc}", file=sys.stderr)
        _arm_exit_deadline(2)
        _tear_down_ros()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    status = 1  # also if an exception escapes: it is a bug, and its traceback is printed
    try:
        if not node.autostart or node.start():
            _spin_until_signal(executor)
            status = 0
        # else the reason is logged; launch's required-node handling sees the exit
    finally:
        _arm_exit_deadline(status)
        node.on_shutdown(None)
        executor.shutdown()
        node.destroy_node()
        _tear_down_ros()
    return status


def _tear_down_ros() -> None:
    """Shut rclpy down and free its DDS participant now, while the exit deadline is armed."""
    rclpy.try_shutdown()
    rclpy.get_default_context().destroy()


def _arm_exit_deadline(status: int) -> None:
    threading.Thread(target=_exit_after_deadline, args=(status,), daemon=True).start()


if __name__ == "__main__":
    main()
