"""Parameter specs, descriptors and the checks behind every refusal message."""
import pytest
import yaml
from pathlib import Path

from efficientps_ros.ros.params import (
    SPECS,
    SPECS_BY_NAME,
    NodeSettings,
    ParameterError,
    check_change,
    check_value,
    declare,
    descriptor,
    output_prefix,
    shared_prefix_problem,
)

PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "efficientps.yaml"


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_parameter_has_a_description_and_says_what_is_allowed():
    for spec in SPECS:
        desc = descriptor(spec)
        assert desc.description, spec.name
        assert desc.additional_constraints.startswith("Allowed: "), spec.name


def test_numeric_parameters_carry_ros_ranges():
    depth = descriptor(SPECS_BY_NAME["input_qos.depth"])
    assert (depth.integer_range[0].from_value, depth.integer_range[0].to_value) == (1, 100)
    score = descriptor(SPECS_BY_NAME["score_threshold"])
    assert (score.floating_point_range[0].from_value, score.floating_point_range[0].to_value) == (0.0, 1.0)
    assert not descriptor(SPECS_BY_NAME["transport"]).integer_range


def test_the_params_file_holds_every_parameter_with_its_default():
    tree = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(tree) == ["/**"], "the params file must apply under any node name and namespace"
    values = flatten(tree["/**"]["ros__parameters"])
    assert set(values) == set(SPECS_BY_NAME)
    for name, value in values.items():
        assert value == SPECS_BY_NAME[name].default, name


def test_defaults_make_valid_settings():
    settings = NodeSettings.from_values({})
    assert settings.image_topics == ("camera/image_raw",), "relative, so that namespaces and remaps apply"
    assert settings.inference_size is None
    assert settings.fusion == {"score_threshold": 0.5, "overlap_threshold": 0.5, "min_stuff_area": 2048}
    assert all(settings.publishes(name) for name in ("semantic", "instance", "panoptic", "overlay", "detections"))


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("transport", "theora", "one of raw, compressed"),
        ("input_qos.reliability", "sometimes", "one of best_effort, reliable"),
        ("precision", "fp8", "one of fp32, fp16, bf16"),
        ("device", "tpu", "auto, cpu, cuda or cuda:N"),
        ("score_threshold", 1.5, "0.0 to 1.0"),
        ("score_threshold", 10**400, "0.0 to 1.0"),
        ("min_stuff_area", -1, "0 to"),
        ("image_topics", [], "non-empty list"),
        ("image_topics", ["/a", "/a"], "distinct"),
        ("image_topics", ["/bad topic"], "topic names"),
        ("output_namespace", "/abs", "relative name"),
        ("publish.overlay", "yes", "any bool"),
        ("input_qos.depth", True, "1 to 100"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter_and_the_allowed_values(name, value, allowed):
    message = check_value(SPECS_BY_NAME[name], value)
    assert message is not None
    assert message.startswith(f"parameter {name}:")
    assert allowed in message
    with pytest.raises(ParameterError, match=name.replace(".", r"\.")):
        NodeSettings.from_values({name: value})


@pytest.mark.parametrize(
    "name, value",
    [("device", "cuda:1"), ("device", "cpu"), ("score_threshold", 0), ("image_topics", ["/a", "b/c"])],
)
def test_good_values_pass(name, value):
    assert check_value(SPECS_BY_NAME[name], value) is None


def test_half_set_inference_size_is_refused():
    with pytest.raises(ParameterError, match="inference_height/inference_width"):
        NodeSettings.from_values({"inference_height": 512})
    assert NodeSettings.from_values({"inference_height": 512, "inference_width": 1024}).inference_size == (512, 1024)


def test_an_inference_size_above_max_image_pixels_is_refused():
    with pytest.raises(ParameterError, match=r"8192x8192, padded to a multiple of 32 \(8192x8192\), is 67108864 pixels, above max_image_pixels \(33554432\)"):
        NodeSettings.from_values({"inference_height": 8192, "inference_width": 8192})
    limit = {"inference_height": 512, "inference_width": 1024, "max_image_pixels": 512 * 1024}
    assert NodeSettings.from_values(limit).inference_size == (512, 1024)
    with pytest.raises(ParameterError, match="above max_image_pixels"):
        NodeSettings.from_values({**limit, "max_image_pixels": 512 * 1024 - 1})


def test_the_inference_size_counts_as_padded_against_max_image_pixels():
    # 500x1000 is 500000 pixels, but the network sees at least 512x1024.
    settings = {"inference_height": 500, "inference_width": 1000}
    with pytest.raises(ParameterError, match=r"padded to a multiple of 32 \(512x1024\), is 524288 pixels"):
        NodeSettings.from_values({**settings, "max_image_pixels": 500_000})
    assert NodeSettings.from_values({**settings, "max_image_pixels": 512 * 1024}).inference_size == (500, 1000)


def test_the_node_checks_the_inference_size_with_its_models_divisor():
    # 320x1024 at the smallest divisor, 512x1024 at a model's divisor of 256.
    settings = NodeSettings.from_values({"inference_height": 300, "inference_width": 1000, "max_image_pixels": 320 * 1024})
    settings.check_network_size(32)
    with pytest.raises(ParameterError, match=r"multiple of 256 \(512x1024\), is 524288 pixels"):
        settings.check_network_size(256)
    NodeSettings.from_values({}).check_network_size(256)  # native size: each frame is checked as it comes


def test_structural_parameters_change_only_while_unconfigured():
    assert check_change("device", "cpu", configured=False) is None
    refusal = check_change("device", "cpu", configured=True)
    assert refusal and "device" in refusal and "cleanup" in refusal
    assert check_change("score_threshold", 0.7, configured=True) is None
    assert check_change("publish.overlay", False, configured=True) is None


def test_parameters_of_every_node_are_left_alone():
    assert check_change("use_sim_time", True, configured=True) is None


def test_with_values_applies_live_changes():
    settings = NodeSettings.from_values({})
    changed = settings.with_values({"score_threshold": 0.9, "publish.overlay": False})
    assert changed.score_threshold == 0.9 and not changed.publishes("overlay")
    assert settings.score_threshold == 0.5


def test_cameras_that_would_share_output_topics_are_refused():
    topics = ["/cam/image_raw", "/cam/image_rect"]
    with pytest.raises(ParameterError, match="parameter image_topics: /cam/image_raw and /cam/image_rect would both "
                                             "publish under /cam/efficientps/"):
        NodeSettings.from_values({"image_topics": topics})
    settings = NodeSettings.from_values({"image_topics": ["/front/image_raw", "/rear/image_raw"]})
    assert [output_prefix(t, settings.output_namespace) for t in settings.image_topics] == [
        "/front/efficientps", "/rear/efficientps"]


def test_shared_prefixes_are_found_among_resolved_names():
    assert shared_prefix_problem(["/car1/camera/image_raw", "/car2/camera/image_raw"], "efficientps") is None
    problem = shared_prefix_problem(["/car1/camera/image_raw", "/car1/camera/image_rect"], "seg")
    assert problem and "/car1/camera/seg/" in problem


class _DeclaringNode:
    """Stands in for a node whose start-up overrides rclpy refuses with `error`."""

    def __init__(self, error):
        self._error = error

    def declare_parameter(self, name, default, descriptor):
        if name == "score_threshold":
            raise self._error


def test_a_type_refusal_at_start_is_one_line_naming_the_value():
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.parameter import Parameter

    error = InvalidParameterTypeException(Parameter("score_threshold", value="abc"), "DOUBLE")
    with pytest.raises(ParameterError) as refused:
        declare(_DeclaringNode(error))
    assert str(refused.value) == (
        "parameter score_threshold: expected a float (got 'abc', a string); allowed: 0.0 to 1.0")


def test_a_range_refusal_at_start_says_it_as_our_check_does():
    from rclpy.exceptions import InvalidParameterValueException

    error = InvalidParameterValueException("score_threshold", 2.0, "Parameter score_threshold out of range")
    with pytest.raises(ParameterError) as refused:
        declare(_DeclaringNode(error))
    assert str(refused.value) == "parameter score_threshold: out of range (got 2.0); allowed: 0.0 to 1.0"


def test_the_node_s_own_refusal_is_the_message_when_it_refused():
    from rclpy.exceptions import InvalidParameterValueException

    error = InvalidParameterValueException("score_threshold", 0.7, "refused by the node")
    with pytest.raises(ParameterError) as refused:
        declare(_DeclaringNode(error), lambda: "parameter score_threshold: the node's reason")
    assert str(refused.value) == "parameter score_threshold: the node's reason"
