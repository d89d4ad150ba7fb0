"""The launch file compiles and passes only parameters the node declares; the rviz config shows our topics."""
import ast
import re
from pathlib import Path

import yaml

from efficientps_ros.ros.params import SPECS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "perception.launch.py"
PARAMS = ROOT / "config" / "efficientps.yaml"
RVIZ = ROOT / "config" / "efficientps.rviz"


def flat_keys(tree: dict, prefix: str = "") -> set:
    keys = set()
    for key, value in tree.items():
        keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def launch_tree() -> ast.Module:
    source = LAUNCH.read_text()
    compile(source, str(LAUNCH), "exec")
    return ast.parse(source)


def string_calls(tree: ast.Module, function: str) -> list[str]:
    """First string arguments of every call to `function`."""
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == function
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def test_every_parameter_the_launch_file_passes_is_in_the_params_file():
    params = flat_keys(yaml.safe_load(PARAMS.read_text())["efficientps"]["ros__parameters"])
    passed = {
        key.value
        for node in ast.walk(launch_tree())
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant)
    }
    assert passed, "the launch file passes no parameter overrides"
    assert passed <= params
    assert passed <= set(SPECS_BY_NAME)


def test_every_launch_configuration_is_declared():
    tree = launch_tree()
    declared = set(string_calls(tree, "DeclareLaunchArgument"))
    used = set(string_calls(tree, "LaunchConfiguration"))
    assert {"params_file", "image_topics", "device"} <= declared
    assert used == declared


def test_the_launch_file_starts_the_node_under_its_params_file_name():
    tree = launch_tree()
    keywords = {
        kw.arg: kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LifecycleNode"
        for kw in node.keywords
        if isinstance(kw.value, ast.Constant)
    }
    assert keywords["name"] in yaml.safe_load(PARAMS.read_text())
    assert keywords["executable"] == "efficientps_node"
    assert re.search(r"efficientps_node = \S*ros\.node:main", (ROOT / "setup.py").read_text())


def test_rviz_config_shows_overlay_and_semantic_with_reliable_qos():
    config = yaml.safe_load(RVIZ.read_text())
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"]: d["Topic"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert set(topics) == {"/camera/efficientps/overlay", "/camera/efficientps/semantic"}
    assert all(t["Reliability Policy"] == "Reliable" for t in topics.values())
