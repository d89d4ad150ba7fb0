"""`efficientps bag run IN OUT`: the node's pipeline over every image of a bag, offline.

Frames go through the node's own PerceptionPipeline one at a time, and its
outputs are written where the node would publish them, with the same types,
encodings and headers, at the input's bag time. Nothing is dropped: every
image gets its outputs, as fast as the device allows.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from tqdm import tqdm

from ..camera import CameraOutputs, camera_topic, output_topics
from ..diagnostics import CameraStats
from ..frame_slots import Frame
from ..messages import label_info
from ..node import load_model
from ..params import OUTPUTS, SPECS_BY_NAME, NodeSettings, output_prefix
from ..pipeline import PerceptionPipeline
from .message_types import COMPRESSED_IMAGE, IMAGE, message_class
from .sink import BagSink, check_new_folder, offered_qos
from .source import BagError, BagSource, CorruptMessage

OUTPUT_TYPES = {
    **dict.fromkeys(("semantic", "instance", "panoptic", "overlay"), IMAGE),
    "detections": "vision_msgs/msg/Detection2DArray",
    "label_info": "vision_msgs/msg/LabelInfo",
}
TRANSPORTS = {IMAGE: "raw", COMPRESSED_IMAGE: "compressed"}


@dataclass(frozen=True)
class ImageTopic:
    """An image topic of the bag, and the transport the node would read it with."""

    topic: str
    transport: str

    @property
    def message_class(self) -> type:
        return message_class(IMAGE if self.transport == "raw" else COMPRESSED_IMAGE)

    @property
    def camera(self) -> str:
        """The camera's image topic: '/cam/image_raw' for '/cam/image_raw/compressed' too."""
        return camera_topic(self.topic, self.transport)


def image_topics(source: BagSource, wanted: list[str] | None) -> list[ImageTopic]:
    """The bag's Image and CompressedImage topics, or the `wanted` ones; BagError names what is missing,
    or a topic whose messages cannot be read."""
    found = {topic: TRANSPORTS[msgtype] for topic, msgtype in source.topics.items() if msgtype in TRANSPORTS}
    for topic in wanted or ():
        if topic not in source.topics:
            raise BagError(f"bag {source.path}, topic {topic}: not in the bag (topics: {_listing(source)})")
        if topic not in found:
            raise BagError(f"bag {source.path}, topic {topic}: type {source.topics[topic]} is not an image "
                           f"type ({IMAGE} or {COMPRESSED_IMAGE})")
    if not found:
        raise BagError(f"bag {source.path}: no image topic (topics: {_listing(source)})")
    chosen = wanted or sorted(found)
    for topic in chosen:
        # Its frames would all be lost: better said now than after the model has loaded.
        if topic in source.unreadable:
            raise BagError(f"bag {source.path}, topic {topic}: {source.unreadable[topic]}")
    return [ImageTopic(topic, found[topic]) for topic in chosen]


def choose_cameras(source: BagSource, wanted: list[str] | None, output_namespace: str,
                   report: Callable[[str], None]) -> list[ImageTopic]:
    """The image topics to run, each camera once; BagError when two would write the same outputs.

    Recordings through image_transport often hold a camera both raw and
    compressed. Unless `wanted` names topics, the raw one is run and the
    compressed copy reported and left out.
    """
    cameras = image_topics(source, wanted)
    if not wanted:
        raw = {c.topic for c in cameras if c.transport == "raw"}
        copies = [c for c in cameras if c.transport == "compressed" and c.camera in raw]
        for copy in copies:
            report(f"bag {source.path}, topic {copy.topic}: {copy.camera} recorded compressed; "
                   f"running {copy.camera} only (choose with --topics)")
        cameras = [c for c in cameras if c not in copies]
    writers: dict[str, str] = {}
    for camera in cameras:
        prefix = output_prefix(camera.camera, output_namespace)
        if prefix in writers:
            raise BagError(f"bag {source.path}: topics {writers[prefix]} and {camera.topic} would both write "
                           f"their outputs under {prefix}/; choose one with --topics")
        writers[prefix] = camera.topic
    return cameras


def _listing(source: BagSource) -> str:
    return ", ".join(f"{topic} [{msgtype}]" for topic, msgtype in sorted(source.topics.items())) or "none"


class BagOutputs:
    """What the pipeline needs of CameraOutputs (`wanted`, `build`, `send`), writing to a bag.

    Every switched-on output is wanted: a bag listens to all of them.
    """

    # The node's own message building, so that the outputs are the node's.
    build = CameraOutputs.build

    def __init__(self, sink: BagSink, input_topic: str, settings: NodeSettings):
        self.topics = output_topics(input_topic, settings.output_namespace, settings.transport)
        self._sink = sink
        # Bag time of the frame being processed: outputs are written at their input's time.
        self.timestamp = 0
        for name, topic in self.topics.items():
            # As the node publishes it: the class table latched for late subscribers.
            sink.add_topic(topic, OUTPUT_TYPES[name], offered_qos(latched=name == "label_info"))

    def wanted(self, settings: NodeSettings) -> list[str]:
        return [name for name in OUTPUTS if settings.publishes(name)]

    def send(self, built: dict[str, Any]) -> None:
        for name, message in built.items():
            # The images and detections come serialised already (see messages), as the node publishes them.
            data = message if isinstance(message, bytes) else serialize_message(message)
            self._sink.write(self.topics[name], self.timestamp, data)

    def write_label_info(self, classes, threshold: float, timestamp: int) -> None:
        header = Header()
        header.stamp.sec, header.stamp.nanosec = divmod(timestamp, 10**9)
        message = label_info(classes, threshold, header)
        self._sink.write(self.topics["label_info"], timestamp, serialize_message(message))


@dataclass
class RunReport:
    frames: int = 0
    skipped: int = 0
    failure: str = ""


def run_bag(in_path: str | Path, out_path: str | Path, topics: list[str] | None = None,
            parameters: dict[str, Any] | None = None, storage: str = "mcap",
            report: Callable[[str], None] = lambda line: tqdm.write(line, file=sys.stderr)) -> RunReport:
    """Every image of `in_path` through the pipeline, outputs to a new rosbag2 at `out_path`.

    `parameters` are node parameters by name (device, precision, model.checkpoint,
    thresholds...). Bad messages are reported and skipped; a bag that breaks
    off ends the run with what was written so far closed and readable.
    BagError (a ValueError) for a bag that cannot be run at all. A topic of
    which fewer messages were read than the bag lists is a failure too.
    """
    # Checked before anything is loaded: a run must not end at its first output.
    check_new_folder(out_path)
    unknown = sorted(set(parameters or {}) - set(SPECS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown node parameter(s) {', '.join(unknown)}; known: {', '.join(SPECS_BY_NAME)}")
    with BagSource(in_path) as source:
        output_namespace = NodeSettings.from_values(parameters or {}).output_namespace
        cameras = choose_cameras(source, topics, output_namespace, report)
        settings = {t: _settings(cameras, t, parameters or {}) for t in {c.transport for c in cameras}}
        predictor = load_model(next(iter(settings.values())))
        try:
            with BagSink(out_path, storage) as sink:
                return _run(source, sink, cameras, settings, predictor, report)
        finally:
            predictor.close()


def _settings(cameras: list[ImageTopic], transport: str, parameters: dict[str, Any]) -> NodeSettings:
    # The node subscribes to <image_topic>/compressed; its image_topics name the cameras.
    topics = [c.camera for c in cameras if c.transport == transport]
    return NodeSettings.from_values({**parameters, "image_topics": topics, "transport": transport})


class _Skips:
    """Counts skipped frames and reports each one, with the bag position of the frame in hand."""

    def __init__(self, report: Callable[[str], None]):
        self.report = report
        self.count = 0
        self.where = ""

    def pipeline_error(self, problem: str) -> None:
        """The pipeline's log_error: its problems name the camera, this adds where in the bag."""
        self.count += 1
        self.report(f"{self.where}: {problem}")

    def corrupt(self, exc: CorruptMessage) -> None:
        self.count += 1
        self.report(str(exc))


def _run(source: BagSource, sink: BagSink, cameras: list[ImageTopic], settings: dict[str, NodeSettings],
         predictor, report: Callable[[str], None]) -> RunReport:
    outputs = {c.topic: BagOutputs(sink, c.topic, settings[c.transport]) for c in cameras}
    for camera in cameras:
        outputs[camera.topic].write_label_info(
            predictor.config.classes, settings[camera.transport].score_threshold, source.start_time)
    skips = _Skips(report)
    # Every error is reported: a bag run is read afterwards, not watched scrolling by.
    stats = {c.topic: CameraStats(throttle_s=0.0) for c in cameras}
    pipelines = {t: PerceptionPipeline(predictor, s, outputs, stats, skips.pipeline_error) for t, s in settings.items()}
    by_topic = {c.topic: c for c in cameras}
    read = dict.fromkeys(by_topic, 0)
    result = RunReport()
    progress = tqdm(total=sum(source.counts[c.topic] for c in cameras), unit="frame",
                    desc=f"bag run {source.path.name}", file=sys.stderr)
    try:
        for message in source.messages(set(by_topic)):
            camera = by_topic[message.topic]
            skips.where = source.where(message.topic, message.index, message.timestamp)
            try:
                decoded = source.decode(message, camera.message_class)
            except CorruptMessage as exc:
                skips.corrupt(exc)
            else:
                outputs[camera.topic].timestamp = message.timestamp
                pipelines[camera.transport].process([Frame(camera.topic, decoded, time.monotonic())])
            result.frames += 1
            read[message.topic] += 1
            progress.update()
    except BagError as exc:
        result.failure = str(exc)
        report(result.failure)
    finally:
        progress.close()
    if not result.failure:
        shortfalls = [_shortfall(source, topic, count) for topic, count in read.items()
                      if count < source.counts[topic]]
        for line in shortfalls:
            report(line)
        result.failure = "; ".join(shortfalls)
    result.skipped = skips.count
    return result


def _shortfall(source: BagSource, topic: str, count: int) -> str:
    # rosbags passes over what it cannot match to the bag's own listing without a word.
    return (f"bag {source.path}, topic {topic}: the bag lists {source.counts[topic]} messages, {count} were read; "
            "its index or metadata.yaml does not match its messages (damaged, or edited by hand?)")
