"""`efficientps bag record OUT`: topics into a new rosbag2 until SIGINT or a duration.

Topics are subscribed as they appear in the ROS graph, each with a QoS that
matches its publishers, and written as the serialized bytes that arrive,
at their arrival time. SIGINT or SIGTERM closes the bag cleanly.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.exceptions import InvalidTopicNameException
from rclpy.expand_topic_name import expand_topic_name
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.validate_full_topic_name import validate_full_topic_name

from ..params import OUTPUTS, SPECS_BY_NAME, check_value
from .message_types import message_class
from .play import check_number
from .sink import BagSink, offered_qos
from .source import BagError

# Enough history that a burst of outputs is not lost while the bag is written.
RECORD_DEPTH = 100
DISCOVERY_PERIOD_S = 0.2
OUTPUT_LEAVES = (*OUTPUTS, "label_info")
RECORDER_NODE = "efficientps_bag_record"


@dataclass(frozen=True)
class RecordOptions:
    topics: tuple[str, ...] = ()
    all_outputs: bool = False
    output_namespace: str = "efficientps"
    storage: str = "mcap"
    duration: float | None = None  # seconds; None: until SIGINT


def checked_options(options: RecordOptions) -> RecordOptions:
    """The options with every topic name made absolute, as the graph names them; ValueError names a bad one."""
    if not options.topics and not options.all_outputs:
        raise ValueError("give --topics or --all-outputs")
    if options.duration is not None:
        # NaN or a negative duration would end the recording before it began.
        check_number("--duration", options.duration, above=0)
    problem = check_value(SPECS_BY_NAME["output_namespace"], options.output_namespace)
    if problem:
        raise ValueError(f"--output-namespace: {problem.split(': ', 1)[1]}")
    return replace(options, topics=tuple(_absolute(topic) for topic in options.topics))


def _absolute(topic: str) -> str:
    """'camera/image_raw' -> '/camera/image_raw': the recorder's node sits in the root namespace."""
    try:
        name = expand_topic_name(topic, RECORDER_NODE, "/")
        validate_full_topic_name(name)
    except (InvalidTopicNameException, ValueError):
        raise ValueError(f"--topics: {topic!r} is not a valid topic name") from None
    return name


def is_output_topic(topic: str, output_namespace: str) -> bool:
    """True for the node's outputs: '<anything>/<output_namespace>/<output name>'."""
    parent, _, leaf = topic.rpartition("/")
    return leaf in OUTPUT_LEAVES and (parent == f"/{output_namespace}" or parent.endswith(f"/{output_namespace}"))


def matching_qos(publishers: list) -> QoSProfile:
    """Reliable and transient-local only where every publisher offers it, as ros2 bag does."""
    reliable = publishers and all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
    latched = publishers and all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers)
    return QoSProfile(
        depth=RECORD_DEPTH,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class Recorder:
    """Subscribes to the wanted topics as they appear and writes what arrives to the sink."""

    def __init__(self, node, sink: BagSink, options: RecordOptions, report: Callable[[str], None]):
        self._node = node
        self._sink = sink
        self._options = options
        self._report = report
        self._subscriptions = {}
        self._refused: set[str] = set()

    def wants(self, topic: str) -> bool:
        if topic in self._options.topics:
            return True
        return self._options.all_outputs and is_output_topic(topic, self._options.output_namespace)

    def discover(self) -> None:
        for topic, types in self._node.get_topic_names_and_types():
            if topic in self._subscriptions or topic in self._refused or not self.wants(topic):
                continue
            publishers = self._node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            self._subscribe(topic, types[0], publishers)

    def _subscribe(self, topic: str, msgtype: str, publishers: list) -> None:
        cls = message_class(msgtype)
        if cls is None:
            self._refused.add(topic)
            self._report(f"topic {topic}: type {msgtype} is not installed here; not recorded")
            return
        qos = matching_qos(publishers)
        try:
            self._sink.add_topic(topic, msgtype, offered_qos(qos.reliability == ReliabilityPolicy.RELIABLE,
                                                             qos.durability == DurabilityPolicy.TRANSIENT_LOCAL))
        except BagError as exc:
            # One topic without a definition must not end the recording of the others.
            self._refused.add(topic)
            self._report(f"{exc}; not recorded")
            return
        self._subscriptions[topic] = self._node.create_subscription(cls, topic, self._writer(topic), qos, raw=True)
        self._report(f"recording {topic} [{msgtype}]")

    def _writer(self, topic: str):
        def write(data: bytes) -> None:
            self._sink.write(topic, time.time_ns(), data)

        return write


def record_bag(out: str | Path, options: RecordOptions,
               report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, int]:
    """Record until SIGINT, SIGTERM or `options.duration`; returns the message count per topic."""
    options = checked_options(options)
    sink = BagSink(out, options.storage)
    stop = []
    # The signal only ends the loop, never interrupts a write half done.
    previous = {sig: signal.signal(sig, lambda *_: stop.append(sig)) for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node(RECORDER_NODE)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        recorder = Recorder(node, sink, options, report)
        node.create_timer(DISCOVERY_PERIOD_S, recorder.discover)
        recorder.discover()
        deadline = None if options.duration is None else time.monotonic() + options.duration
        while not stop and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.05)
    finally:
        sink.close()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total = sum(sink.counts.values())
    report(f"wrote {total} messages on {len(sink.counts)} topics to {sink.path}")
    return dict(sink.counts)
