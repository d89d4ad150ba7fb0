"""The launch file, over stand-ins for launch: its arguments reach the node, rviz is checked first and shows
the node's own topics, the node's exit ends it.

`test/ros/test_launch_ros2.py` runs the same file under the real `ros2 launch` where launch is installed.
"""
import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
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


class _Recorder:
    """Stands in for a launch class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Configuration(_Recorder):
    def perform(self, context):
        return context[self.args[0]]


class _PackageNotFound(KeyError):
    pass


def load_launch_file(monkeypatch, installed=("efficientps_ros",)):
    """The launch file as a module, over stand-ins for launch and launch_ros (not installable here)."""
    import importlib.util
    import sys

    def prefix(name):
        if name not in installed:
            raise _PackageNotFound(name)
        return f"/opt/{name}"

    stand_ins = {
        "launch": {"LaunchDescription": _Recorder},
        "launch.actions": {name: _Recorder for name in
                           ("DeclareLaunchArgument", "OpaqueFunction", "RegisterEventHandler", "Shutdown")},
        "launch.event_handlers": {"OnProcessExit": _Recorder, "OnShutdown": _Recorder},
        "launch.substitutions": {"LaunchConfiguration": _Configuration},
        "launch_ros.actions": {"LifecycleNode": _Recorder, "Node": _Recorder},
        "ament_index_python.packages": {
            # The checkout is laid out as the package's share directory: config/ holds the same files.
            "get_package_share_directory": lambda name: str(ROOT) if name == "efficientps_ros" else f"/share/{name}",
            "get_package_prefix": prefix,
            "PackageNotFoundError": _PackageNotFound,
        },
    }
    for name, attributes in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARAMS_PATH = str(PARAMS)


def _actions(module, **given):
    defaults = {name: default for name, (default, _) in module.OTHERS.items()} | {"params_file": PARAMS_PATH}
    context = {name: "" for name in module.OVERRIDES} | defaults | given
    return module._perception(context)


def _started_node(module, **given):
    node = _actions(module, **given)[0]
    assert node.kwargs["executable"] == "efficientps_node"
    return node.kwargs


def test_empty_launch_arguments_leave_the_params_file_alone(monkeypatch):
    node = _started_node(load_launch_file(monkeypatch))
    assert node["parameters"] == [PARAMS_PATH, {}]
    assert node["name"] == "efficientps" and node["namespace"] == ""
    assert node["ros_arguments"] == []


def test_given_launch_arguments_override_their_parameters(monkeypatch):
    node = _started_node(
        load_launch_file(monkeypatch), image_topics="['/front/image_raw', '/rear/image_raw']", device="cuda:1"
    )
    assert node["parameters"][1] == {"image_topics": ["/front/image_raw", "/rear/image_raw"], "device": "cuda:1"}


def test_every_new_argument_reaches_the_node_with_its_type(monkeypatch):
    node = _started_node(
        load_launch_file(monkeypatch),
        namespace="car1",
        use_sim_time="true",
        precision="bf16",
        log_level="debug",
        autostart="false",
        output_namespace="seg",
        inference_height="512",
        inference_width="1024",
        transport="compressed",
        checkpoint="/models/cityscapes.safetensors",
    )
    assert node["namespace"] == "car1"
    assert node["ros_arguments"] == ["--log-level", "debug"]
    assert node["parameters"][1] == {
        "use_sim_time": True,
        "precision": "bf16",
        "autostart": False,
        "output_namespace": "seg",
        "inference_height": 512,
        "inference_width": 1024,
        "transport": "compressed",
        "model.checkpoint": "/models/cityscapes.safetensors",
    }


def test_one_topic_given_as_a_plain_string_becomes_a_list(monkeypatch):
    module = load_launch_file(monkeypatch)
    assert _started_node(module, image_topics="/front/image_raw")["parameters"][1] == {
        "image_topics": ["/front/image_raw"]}
    assert _started_node(module, image_topics="front/image_raw")["parameters"][1] == {
        "image_topics": ["front/image_raw"]}


def test_rviz_without_rviz2_is_refused_in_one_line_before_anything_starts(monkeypatch):
    module = load_launch_file(monkeypatch)
    with pytest.raises(RuntimeError) as refused:
        _actions(module, rviz="true")
    assert "rviz2" in str(refused.value) and "\n" not in str(refused.value)
    # Without rviz, the same launch starts the node and nothing else.
    assert [a.kwargs.get("executable") for a in _actions(module) if "executable" in a.kwargs] == ["efficientps_node"]


def test_rviz_starts_beside_the_node_where_rviz2_is_installed(monkeypatch, tmp_path):
    module = load_launch_file(monkeypatch, installed=("efficientps_ros", "rviz2"))
    monkeypatch.setattr(module.tempfile, "tempdir", str(tmp_path))
    executables = [a.kwargs.get("executable") for a in _actions(module, rviz="true") if "executable" in a.kwargs]
    assert executables == ["efficientps_node", "rviz2"]


def test_launch_shuts_down_when_the_node_exits_and_fails_when_it_failed(monkeypatch):
    module = load_launch_file(monkeypatch)
    node, handler = _actions(module)[:2]
    (on_exit,) = handler.args
    assert on_exit.kwargs["target_action"] is node
    exited = on_exit.kwargs["on_exit"]
    running, stopping = SimpleNamespace(is_shutdown=False), SimpleNamespace(is_shutdown=True)
    with pytest.raises(RuntimeError, match="exited with status 1"):
        exited(SimpleNamespace(returncode=1), running)
    (shutdown,) = exited(SimpleNamespace(returncode=0), running)
    assert "exited" in shutdown.kwargs["reason"]
    # Ctrl-C: launch stops the node itself (SIGINT's -2 included); that is neither a failure nor a second shutdown.
    assert exited(SimpleNamespace(returncode=-2), stopping) is None
    assert exited(SimpleNamespace(returncode=0), stopping) is None


def test_every_overridden_parameter_is_in_the_params_file_and_declared(monkeypatch):
    tree = yaml.safe_load(PARAMS.read_text())
    assert list(tree) == ["/**"], "keyed /** so that it applies under any namespace and node name"
    params = flat_keys(tree["/**"]["ros__parameters"])
    overridden = set(load_launch_file(monkeypatch).OVERRIDES.values()) - {"use_sim_time"}  # every node has it
    assert overridden <= params
    assert overridden <= set(SPECS_BY_NAME)


def test_the_description_declares_every_argument_it_reads(monkeypatch):
    module = load_launch_file(monkeypatch)
    entities = module.generate_launch_description().args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    assert set(declared) == {*module.OTHERS, *module.OVERRIDES}
    assert {"namespace", "use_sim_time", "precision", "log_level", "autostart", "output_namespace",
            "inference_height", "inference_width", "rviz"} <= set(declared)
    assert all(declared[name] == "" for name in module.OVERRIDES)
    assert declared["params_file"] == PARAMS_PATH and declared["rviz"] == "false"
    assert sum(e.kwargs.get("function") is module._perception for e in entities) == 1


def test_the_launch_file_compiles_and_setup_registers_the_executable():
    launch_tree()
    assert re.search(r"efficientps_node = \S*ros\.node:main", (ROOT / "setup.py").read_text())


def test_rviz_config_shows_overlay_and_semantic_with_reliable_qos():
    assert _image_topics(yaml.safe_load(RVIZ.read_text())) == {
        "/camera/efficientps/overlay": "Reliable", "/camera/efficientps/semantic": "Reliable"}


def _image_topics(config: dict) -> dict:
    displays = config["Visualization Manager"]["Displays"]
    return {d["Topic"]["Value"]: d["Topic"]["Reliability Policy"] for d in displays
            if d["Class"] == "rviz_default_plugins/Image"}


def _rviz(monkeypatch, tmp_path, **given):
    """The rviz2 node that the launch starts, its config, and the handler that removes that config."""
    module = load_launch_file(monkeypatch, installed=("efficientps_ros", "rviz2"))
    monkeypatch.setattr(module.tempfile, "tempdir", str(tmp_path))  # the config is written per launch
    actions = _actions(module, rviz="true", **given)
    (rviz,) = [a for a in actions if a.kwargs.get("executable") == "rviz2"]
    (handler,) = [a.args[0] for a in actions if a.args and "on_shutdown" in a.args[0].kwargs]
    flag, path = rviz.kwargs["arguments"]
    assert flag == "-d"
    return rviz, yaml.safe_load(Path(path).read_text()), handler, path


def test_rviz_without_arguments_shows_the_checked_in_config(monkeypatch, tmp_path):
    rviz, config, _, _ = _rviz(monkeypatch, tmp_path)
    assert rviz.kwargs["namespace"] == ""
    assert config == yaml.safe_load(RVIZ.read_text())


def test_rviz_follows_the_node_namespace_and_a_relative_camera(monkeypatch, tmp_path):
    rviz, config, _, _ = _rviz(monkeypatch, tmp_path, namespace="car1", image_topics="front/image_raw")
    assert rviz.kwargs["namespace"] == "car1"
    assert _image_topics(config) == {
        "/car1/front/efficientps/overlay": "Reliable", "/car1/front/efficientps/semantic": "Reliable"}


def test_rviz_keeps_an_absolute_camera_outside_the_namespace(monkeypatch, tmp_path):
    _, config, _, _ = _rviz(
        monkeypatch, tmp_path, namespace="car1", image_topics="/front/image_raw", output_namespace="seg")
    assert set(_image_topics(config)) == {"/front/seg/overlay", "/front/seg/semantic"}


def test_rviz_reads_cameras_from_the_params_file_and_shows_each(monkeypatch, tmp_path):
    params = tmp_path / "cars.yaml"
    params.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"output_namespace": "seg"}},
        "/car1/efficientps": {"ros__parameters": {"image_topics": ["left/image", "/right/image"]}},
        "/car2/efficientps": {"ros__parameters": {"image_topics": ["other/image"]}},
    }))
    _, config, _, _ = _rviz(monkeypatch, tmp_path, namespace="car1", params_file=str(params))
    assert set(_image_topics(config)) == {
        "/car1/left/seg/overlay", "/car1/left/seg/semantic", "/right/seg/overlay", "/right/seg/semantic"}
    names = [d["Name"] for d in config["Visualization Manager"]["Displays"]]
    assert len(set(names)) == 4 and set(names) <= set(config["Window Geometry"])


def test_a_camera_the_node_will_refuse_is_left_out_of_rviz(monkeypatch, tmp_path):
    _, config, _, _ = _rviz(monkeypatch, tmp_path, image_topics="['1bad', 'good/image']")
    assert set(_image_topics(config)) == {"/good/efficientps/overlay", "/good/efficientps/semantic"}


def test_the_rviz_config_is_removed_when_launch_shuts_down(monkeypatch, tmp_path):
    _, _, handler, path = _rviz(monkeypatch, tmp_path)
    handler.kwargs["on_shutdown"](None, None)
    assert not Path(path).exists()
    handler.kwargs["on_shutdown"](None, None)  # a second shutdown event finds nothing to remove


@pytest.mark.parametrize("key, node, applies", [
    ("/**", "/car1/efficientps", True),
    ("/**", "/efficientps", True),
    ("/**/efficientps", "/car1/efficientps", True),
    ("/**/efficientps", "/efficientps", True),
    ("efficientps", "/efficientps", True),
    ("efficientps", "/car1/efficientps", False),
    ("/car1/*", "/car1/efficientps", True),
    ("/car1/*", "/car2/efficientps", False),
    ("/car1/efficientps", "/car1/efficientps_other", False),
])
def test_params_file_node_keys_match_as_ros_matches_them(monkeypatch, tmp_path, key, node, applies):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({key: {"ros__parameters": {"output_namespace": "seg"}}}))
    found = load_launch_file(monkeypatch).file_parameters(str(params), node)
    assert found == ({"output_namespace": "seg"} if applies else {})
