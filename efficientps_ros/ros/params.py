"""The node's ROS parameters: names, defaults, descriptions, allowed values.

Each parameter is one `ParamSpec`. Live parameters (thresholds, output
switches) apply to the next frame. The others shape the model or the topics:
they are read at configure, and change only while the node is unconfigured
(after `cleanup`), so that a running node never silently ignores a change.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidTopicNameException, ParameterException
from rclpy.node import Node
from rclpy.validate_topic_name import validate_topic_name

from ..input_limits import network_size
from ..model.config import BACKBONE_STRIDE

OUTPUTS = ("semantic", "instance", "panoptic", "overlay", "detections")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_NAME_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")
# How rclpy words its own refusals of a start-up value, by type and by descriptor range.
_TYPE_REFUSAL = re.compile(r"to '(?P<value>.*)' of type '(?P<type>\w+)'")
_VALUE_REFUSAL = re.compile(r"Invalid parameter value \((?P<value>.*)\) for parameter")


def output_prefix(image_topic: str, output_namespace: str) -> str:
    """'/camera/image_raw' -> '/camera/efficientps': the outputs sit beside the input."""
    parent, slash, _ = image_topic.rpartition("/")
    if not slash:
        return output_namespace
    return f"{parent}/{output_namespace}"


def shared_prefix_problem(image_topics: Iterable[str], output_namespace: str) -> str | None:
    """Why these cameras cannot all publish, when two would use the same output topics; else None."""
    seen: dict[str, str] = {}
    for topic in image_topics:
        prefix = output_prefix(topic, output_namespace)
        if prefix in seen:
            return (
                f"parameter image_topics: {seen[prefix]} and {topic} would both publish under {prefix}/; "
                "allowed: topics in different namespaces (e.g. front/image_raw, rear/image_raw)"
            )
        seen[prefix] = topic
    return None


class ParameterError(ValueError):
    """A parameter value that the node refuses; the message names it and what is allowed."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    live: bool = False
    # Allowed values in words, where neither choices nor bounds say it.
    rule: str = ""

    @property
    def field(self) -> str:
        """The NodeSettings field holding this parameter."""
        return self.name.replace(".", "_")

    def allowed(self) -> str:
        """The allowed values, in words."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.bounds is not None:
            return f"{self.bounds[0]} to {self.bounds[1]}"
        return self.rule or f"any {type(self.default).__name__}"


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, "Configure and activate the node at start, so a plain run works."),
    ParamSpec("image_topics", ["camera/image_raw"], "Camera image topics, all served by one model; relative "
              "names resolve in the node's namespace, and remaps apply.",
              rule="a non-empty list of distinct topic names"),
    ParamSpec("transport", "raw", "raw: sensor_msgs/Image on each topic; compressed: "
              "sensor_msgs/CompressedImage (jpeg/png) on <topic>/compressed.", choices=("raw", "compressed")),
    ParamSpec("input_qos.reliability", "best_effort", "Reliability of the image subscriptions; best_effort "
              "receives from both reliable and best-effort publishers.", choices=("best_effort", "reliable")),
    ParamSpec("input_qos.depth", 1, "History depth of the image subscriptions.", bounds=(1, 100)),
    ParamSpec("output_namespace", "efficientps", "Outputs of input P/<leaf> go to P/<output_namespace>/...",
              rule="a relative name such as efficientps"),
    ParamSpec("model.preset_or_config", "", "Model preset (small, b5_cityscapes) or config YAML path; empty: "
              "the checkpoint's own config, or the small preset without a checkpoint."),
    ParamSpec("model.checkpoint", "", "safetensors checkpoint; empty: the package's model trained on "
              "synthetic scenes (not a real-street model)."),
    ParamSpec("device", "auto", "Inference device: auto picks the first GPU if there is one.",
              rule="auto, cpu, cuda or cuda:N"),
    ParamSpec("precision", "fp32", "Inference precision; fp16 needs a GPU.", choices=("fp32", "fp16", "bf16")),
    ParamSpec("compile", False, "Compile the network's dense part with torch.compile, for static shapes: "
              "configure compiles it at inference_height/width when they are set, else the first frame of "
              "each image size pays for it. Pays on a GPU; on the CPU it did not."),
    ParamSpec("inference_height", 0, "Network input height; 0 with inference_width 0 keeps the native size.",
              bounds=(0, 8192)),
    ParamSpec("inference_width", 0, "Network input width; 0 with inference_height 0 keeps the native size.",
              bounds=(0, 8192)),
    ParamSpec("score_threshold", 0.5, "Minimum detection score of a thing instance.", bounds=(0.0, 1.0), live=True),
    ParamSpec("overlap_threshold", 0.5, "An instance is dropped when more than this fraction of its mask "
              "is covered by higher-scoring instances.", bounds=(0.0, 1.0), live=True),
    ParamSpec("min_stuff_area", 2048, "Stuff regions smaller than this many pixels become void.",
              bounds=(0, 1 << 24), live=True),
    *(ParamSpec(f"publish.{name}", True, f"Publish the {name} output.", live=True) for name in OUTPUTS),
    ParamSpec("overlay_alpha", 0.5, "Weight of the panoptic colours in the overlay.", bounds=(0.0, 1.0), live=True),
    ParamSpec("max_image_pixels", 8192 * 4096, "Larger input images are refused as bad input.",
              bounds=(1, 1 << 30), live=True),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics reports.", bounds=(0.1, 60.0)),
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    when = "Applies at once." if spec.live else "Read at configure; change it while unconfigured (after cleanup)."
    desc = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        additional_constraints=f"Allowed: {spec.allowed()}. {when}",
    )
    if spec.bounds is not None and isinstance(spec.default, int):
        desc.integer_range = [IntegerRange(from_value=int(spec.bounds[0]), to_value=int(spec.bounds[1]), step=0)]
    elif spec.bounds is not None:
        desc.floating_point_range = [
            FloatingPointRange(from_value=float(spec.bounds[0]), to_value=float(spec.bounds[1]), step=0.0)
        ]
    return desc


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why `value` is not allowed for `spec`, naming both; None when it is fine."""
    problem = _problem(spec, value)
    if problem is None:
        return None
    return f"parameter {spec.name}: {problem} (got {value!r}); allowed: {spec.allowed()}"


def _problem(spec: ParamSpec, value: Any) -> str | None:
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        if not -2**1023 < value < 2**1023:
            return "out of range"  # a YAML integer past any float
        value = float(value)
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return "expected a list of strings"
        return _topics_problem(list(value))
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"expected a {expected.__name__}"
    if spec.choices and value not in spec.choices:
        return "not an allowed value"
    if spec.bounds is not None and not spec.bounds[0] <= value <= spec.bounds[1]:
        return "out of range"
    if spec.name == "device" and not _DEVICE.fullmatch(value):
        return "not a device"
    if spec.name == "output_namespace" and not _NAME_TOKEN.fullmatch(value):
        return "not a valid relative name"
    return None


def _topics_problem(topics: list[str]) -> str | None:
    if not topics:
        return "the list is empty"
    for topic in topics:
        try:
            validate_topic_name(topic)
        except InvalidTopicNameException:
            return f"{topic!r} is not a valid topic name"
        if "//" in topic:
            return f"{topic!r} is not a valid topic name"
    if len(set(topics)) != len(topics):
        return "a topic is listed twice"
    return None


@dataclass(frozen=True)
class NodeSettings:
    """Every parameter's value, checked; field names are the parameter names with '.' -> '_'."""

    autostart: bool
    image_topics: tuple[str, ...]
    transport: str
    input_qos_reliability: str
    input_qos_depth: int
    output_namespace: str
    model_preset_or_config: str
    model_checkpoint: str
    device: str
    precision: str
    compile: bool
    inference_height: int
    inference_width: int
    score_threshold: float
    overlap_threshold: float
    min_stuff_area: int
    publish_semantic: bool
    publish_instance: bool
    publish_panoptic: bool
    publish_overlay: bool
    publish_detections: bool
    overlay_alpha: float
    max_image_pixels: int
    diagnostics_period: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "NodeSettings":
        """Check every value and the pairs that go together; ParameterError names the first bad one."""
        fields = {}
        for spec in SPECS:
            value = values.get(spec.name, spec.default)
            problem = check_value(spec, value)
            if problem:
                raise ParameterError(problem)
            fields[spec.field] = _converted(spec, value)
        settings = cls(**fields)
        settings._check_inference_size()
        settings._check_output_prefixes()
        return settings

    def _check_inference_size(self) -> None:
        size = (self.inference_height, self.inference_width)
        if size != (0, 0) and min(size) < 32:
            raise ParameterError(
                f"parameters inference_height/inference_width: got {size[0]}x{size[1]}; "
                "allowed: both 0 (native size) or both at least 32"
            )
        # Any model pads to a multiple of at least the backbone's stride; the
        # node checks again with its model's own divisor.
        self.check_network_size(BACKBONE_STRIDE)

    def check_network_size(self, size_divisor: int) -> None:
        """Refuse a fixed inference size whose padded area exceeds max_image_pixels.

        The network's input counts against the limit too, so every frame would
        be refused after a warm-up at that size.
        """
        if self.inference_size is None:
            return
        height, width = self.inference_size
        padded = network_size(height, width, size_divisor)
        if padded[0] * padded[1] > self.max_image_pixels:
            raise ParameterError(
                f"parameters inference_height/inference_width: {height}x{width}, padded to a multiple of "
                f"{size_divisor} ({padded[0]}x{padded[1]}), is {padded[0] * padded[1]} pixels, above "
                f"max_image_pixels ({self.max_image_pixels}); allowed: at most that many"
            )

    def _check_output_prefixes(self) -> None:
        """Two cameras beside each other would publish onto the same output topics.

        The node checks again once remaps and its namespace have resolved the names.
        """
        problem = shared_prefix_problem(self.image_topics, self.output_namespace)
        if problem:
            raise ParameterError(problem)

    def with_values(self, values: Mapping[str, Any]) -> "NodeSettings":
        """A copy with some parameters changed; values must already be checked."""
        return dataclasses.replace(
            self, **{SPECS_BY_NAME[name].field: _converted(SPECS_BY_NAME[name], v) for name, v in values.items()}
        )

    @property
    def inference_size(self) -> tuple[int, int] | None:
        """(height, width) for the network, or None for each image's native size."""
        size = (self.inference_height, self.inference_width)
        return None if size == (0, 0) else size

    def publishes(self, output: str) -> bool:
        return getattr(self, f"publish_{output}")

    @property
    def fusion(self) -> dict[str, Any]:
        """The fusion thresholds, as the predictor takes them."""
        return {
            "score_threshold": self.score_threshold,
            "overlap_threshold": self.overlap_threshold,
            "min_stuff_area": self.min_stuff_area,
        }


def _converted(spec: ParamSpec, value: Any) -> Any:
    if isinstance(spec.default, list):
        return tuple(value)
    if isinstance(spec.default, float):
        return float(value)
    return value


def check_change(name: str, value: Any, configured: bool) -> str | None:
    """Why a runtime change of `name` to `value` is refused; None when it is accepted."""
    spec = SPECS_BY_NAME.get(name)
    if spec is None:
        return None  # a parameter every node has, such as use_sim_time
    problem = check_value(spec, value)
    if problem:
        return problem
    if configured and not spec.live:
        return f"parameter {name}: changes only while the node is unconfigured; run cleanup, set it, then configure"
    return None


def declare(node: Node, last_refusal: Callable[[], str | None] = lambda: None) -> None:
    """Declare every parameter on `node`; ParameterError names the first bad override.

    `last_refusal` gives the message of the node's own check, when that is
    what refused the override, so that the error is the check's one line.
    """
    for spec in SPECS:
        try:
            node.declare_parameter(spec.name, spec.default, descriptor(spec))
        except InvalidParameterTypeException as exc:
            raise ParameterError(_type_refusal(spec, str(exc))) from None
        except ParameterException as exc:
            raise ParameterError(last_refusal() or _value_refusal(spec, str(exc))) from None


def _value_refusal(spec: ParamSpec, rclpy_message: str) -> str:
    """rclpy refused the value by the descriptor's range: say it as our own check does."""
    match = _VALUE_REFUSAL.search(rclpy_message)
    try:
        value = yaml.safe_load(match["value"]) if match else None
    except yaml.YAMLError:
        value = None
    problem = None if value is None else check_value(spec, value)
    return problem or f"parameter {spec.name}: refused ({rclpy_message}); allowed: {spec.allowed()}"


def _type_refusal(spec: ParamSpec, rclpy_message: str) -> str:
    expected = "a list of strings" if isinstance(spec.default, list) else f"a {type(spec.default).__name__}"
    match = _TYPE_REFUSAL.search(rclpy_message)
    given = f" (got {match['value']!r}, a {match['type'].lower()})" if match else ""
    return f"parameter {spec.name}: expected {expected}{given}; allowed: {spec.allowed()}"


def current_values(node: Node) -> dict[str, Any]:
    return {spec.name: node.get_parameter(spec.name).value for spec in SPECS}
