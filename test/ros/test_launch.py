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


class _Recorder:
    """Stands in for a launch class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Configuration(_Recorder):
    def perform(self, context):
        return context[self.args[0]]


def load_launch_file(monkeypatch):
    """The launch file as a module, over stand-ins for launch and launch_ros (not installable here)."""
    import importlib.util
    import sys
    import types

    stand_ins = {
        "launch": {"LaunchDescription": _Recorder},
        "launch.actions": {"DeclareLaunchArgument": _Recorder, "OpaqueFunction": _Recorder},
        "launch.conditions": {"IfCondition": _Recorder},
        "launch.substitutions": {"LaunchConfiguration": _Configuration},
        "launch_ros.actions": {"LifecycleNode": _Recorder, "Node": _Recorder},
        "ament_index_python.packages": {"get_package_share_directory": lambda name: f"/share/{name}"},
    }
    for name, attributes in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _started_node(module, **given):
    arguments = {name: "" for name in module.OVERRIDES} | given
    context = {"params_file": "/share/efficientps_ros/config/efficientps.yaml", **arguments}
    (node,) = module._perception(context)
    return node.kwargs


def test_empty_launch_arguments_leave_the_params_file_alone(monkeypatch):
    node = _started_node(load_launch_file(monkeypatch))
    assert node["parameters"] == ["/share/efficientps_ros/config/efficientps.yaml", {}]
    assert node["name"] == "efficientps" and node["executable"] == "efficientps_node"


def test_given_launch_arguments_override_their_parameters(monkeypatch):
    node = _started_node(
        load_launch_file(monkeypatch), image_topics="['/front/image_raw', '/rear/image_raw']", device="cuda:1"
    )
    assert node["parameters"][1] == {"image_topics": ["/front/image_raw", "/rear/image_raw"], "device": "cuda:1"}


def test_every_overridden_parameter_is_in_the_params_file_and_declared(monkeypatch):
    params = flat_keys(yaml.safe_load(PARAMS.read_text())["efficientps"]["ros__parameters"])
    overridden = set(load_launch_file(monkeypatch).OVERRIDES.values())
    assert overridden <= params
    assert overridden <= set(SPECS_BY_NAME)


def test_the_description_declares_every_argument_it_reads(monkeypatch):
    module = load_launch_file(monkeypatch)
    entities = module.generate_launch_description().args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    assert set(declared) == {"params_file", "rviz", *module.OVERRIDES}
    assert all(declared[name] == "" for name in module.OVERRIDES)
    assert sum(e.kwargs.get("function") is module._perception for e in entities) == 1


def test_every_launch_configuration_is_declared():
    tree = launch_tree()
    declared = set(string_calls(tree, "DeclareLaunchArgument"))
    used = set(string_calls(tree, "LaunchConfiguration"))
    assert {"params_file", "rviz"} <= declared
    assert used == declared


def test_the_node_name_matches_the_params_file_and_setup_registers_the_executable():
    assert "efficientps" in yaml.safe_load(PARAMS.read_text())
    assert re.search(r"efficientps_node = \S*ros\.node:main", (ROOT / "setup.py").read_text())


def test_rviz_config_shows_overlay_and_semantic_with_reliable_qos():
    config = yaml.safe_load(RVIZ.read_text())
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"]: d["Topic"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert set(topics) == {"/camera/efficientps/overlay", "/camera/efficientps/semantic"}
    assert all(t["Reliability Policy"] == "Reliable" for t in topics.values())
