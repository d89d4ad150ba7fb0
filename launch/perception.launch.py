"""EfficientPS panoptic segmentation on one or more cameras.

ros2 launch efficientps_ros perception.launch.py namespace:=car1 image_topics:="['front/image_raw', 'rear/image_raw']"

Launch arguments left empty keep the value of the params file. Preconditions
(rviz2 for rviz:=true) are checked before anything starts. When the node
exits, launch shuts down, and fails when the node did. rviz2 gets a config
written for this launch: config/efficientps.rviz with one overlay and one
semantic display per camera, at the topics this node publishes.
"""
import os
import re
import tempfile

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit, OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from rclpy.expand_topic_name import expand_topic_name

from efficientps_ros.ros.params import SPECS_BY_NAME, output_prefix

# Launch argument -> node parameter it overrides when given.
OVERRIDES = {
    "image_topics": "image_topics",
    "transport": "transport",
    "device": "device",
    "precision": "precision",
    "compile": "compile",
    "checkpoint": "model.checkpoint",
    "output_namespace": "output_namespace",
    "inference_height": "inference_height",
    "inference_width": "inference_width",
    "autostart": "autostart",
    "use_sim_time": "use_sim_time",
}
# Arguments whose text is YAML (lists, booleans, integers); the others are taken as written.
TYPED = {"image_topics", "inference_height", "inference_width", "compile", "autostart", "use_sim_time"}
DESCRIPTIONS = {
    "image_topics": "Camera image topics: one topic, or a YAML list such as \"['front/image_raw', 'rear/image_raw']\"",
    "transport": "raw or compressed",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "fp32, fp16 (GPU only) or bf16",
    "compile": "true: compile the network's dense part with torch.compile (pays on a GPU)",
    "checkpoint": "safetensors checkpoint",
    "output_namespace": "Outputs of P/<leaf> go to P/<output_namespace>/...",
    "inference_height": "Network input height; 0 with inference_width 0 keeps the native size",
    "inference_width": "Network input width; 0 with inference_height 0 keeps the native size",
    "autostart": "true: configure and activate at start; false: wait for lifecycle transitions",
    "use_sim_time": "true: follow /clock (e.g. from a bag played with --clock)",
}
# Arguments that are not node parameters, with their defaults (params_file's is the package's file).
OTHERS = {
    "params_file": ("", "Parameters of the efficientps node"),
    "namespace": ("", "Namespace of the node; relative topics resolve inside it"),
    "log_level": ("", "Log level of the node (debug, info, warn, error); empty: info"),
    "rviz": ("false", "Also start rviz2, in the node's namespace, showing every camera's overlay and semantic output"),
}
NODE_NAME = "efficientps"
# What rviz shows of each camera: display title -> output under the camera's prefix.
RVIZ_OUTPUTS = {"Panoptic overlay": "overlay", "Semantic (train ids)": "semantic"}


def parameter_overrides(arguments):
    """Node parameters for the launch arguments that were given; empty ones are left out."""
    overrides = {}
    for argument, parameter in OVERRIDES.items():
        value = arguments.get(argument, "")
        if value:
            overrides[parameter] = yaml.safe_load(value) if argument in TYPED else value
    topics = overrides.get("image_topics")
    if isinstance(topics, str):
        overrides["image_topics"] = [topics]  # one topic, given as a plain string
    return overrides


def check_rviz(wanted):
    """Refuse rviz:=true without rviz2, before any process starts, so that nothing is left running."""
    if not wanted:
        return
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        raise RuntimeError("rviz:=true needs rviz2, which is not installed; install it or leave rviz false") from None


def _node_key_pattern(key):
    """A params file's node key ('/**', '/**/efficientps', 'car1/efficientps', ...) as a regex, by rcl's rules."""
    key = key if key.startswith("/") else f"/{key}"
    tokens = re.escape(key).replace(r"/\*\*", "(/[^/]+)*").replace(r"\*", "[^/]+")
    return re.compile(tokens)


def file_parameters(params_file, node_name):
    """The ros__parameters that a params file gives the node `node_name` (fully qualified); later keys win.

    A file that cannot be read gives nothing here: the node itself refuses it, in its own line.
    """
    try:
        with open(params_file) as stream:
            tree = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError):
        return {}
    found = {}
    for key, entry in tree.items() if isinstance(tree, dict) else ():
        if isinstance(entry, dict) and _node_key_pattern(str(key)).fullmatch(node_name):
            found.update(entry.get("ros__parameters") or {})
    return found


def output_prefixes(parameters, namespace):
    """The absolute prefix of every camera's outputs, as the node will name them ('/car1/front/efficientps').

    Topics that the node will refuse are left out: the node says why, in its own line.
    """
    def value(name):
        return parameters.get(name, SPECS_BY_NAME[name].default)

    topics, output_namespace = value("image_topics"), value("output_namespace")
    if isinstance(topics, str):
        topics = [topics]
    node_namespace = "/" + namespace.strip("/")
    prefixes = []
    for topic in topics if isinstance(topics, list) else []:
        try:
            prefixes.append(output_prefix(expand_topic_name(topic, NODE_NAME, node_namespace), str(output_namespace)))
        except (TypeError, ValueError):
            continue
    return prefixes


def rviz_config(template, prefixes):
    """The template's config with, for each camera prefix, its displays at that camera's outputs."""
    config = yaml.safe_load(template)
    by_title = {d["Name"]: d for d in config["Visualization Manager"]["Displays"]}
    displays, panels = [], {}
    for prefix in prefixes:
        for title, output in RVIZ_OUTPUTS.items():
            display = yaml.safe_load(yaml.safe_dump(by_title[title]))  # a deep copy per camera
            display["Name"] = f"{title} {prefix}" if len(prefixes) > 1 else title
            display["Topic"]["Value"] = f"{prefix}/{output}"
            displays.append(display)
            panels[display["Name"]] = {"collapsed": False}
    config["Visualization Manager"]["Displays"] = displays
    geometry = {k: v for k, v in config["Window Geometry"].items() if k not in RVIZ_OUTPUTS}
    config["Window Geometry"] = {**geometry, **panels}
    return yaml.safe_dump(config, sort_keys=False)


def _write_rviz_config(share, prefixes):
    with open(os.path.join(share, "config", "efficientps.rviz")) as stream:
        text = rviz_config(stream.read(), prefixes)
    handle, path = tempfile.mkstemp(prefix="efficientps-", suffix=".rviz")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    return path


def _node_name(namespace):
    namespace = namespace.strip("/")
    return f"/{namespace}/{NODE_NAME}" if namespace else f"/{NODE_NAME}"


def _rviz_actions(arguments, share):
    """rviz2 in the node's namespace, on a config of this launch's topics, removed when launch ends."""
    parameters = {**file_parameters(arguments["params_file"], _node_name(arguments["namespace"])),
                  **parameter_overrides(arguments)}
    path = _write_rviz_config(share, output_prefixes(parameters, arguments["namespace"]))
    rviz = Node(package="rviz2", executable="rviz2", namespace=arguments["namespace"], arguments=["-d", path])
    cleanup = OnShutdown(on_shutdown=lambda event, context: os.remove(path) if os.path.exists(path) else None)
    return [rviz, RegisterEventHandler(cleanup)]


def _after_node_exit(event, context):
    """The node is the point of this launch: when it ends, so does launch, failing when it failed."""
    if context.is_shutdown:
        return None  # launch stopped the node itself (Ctrl-C): its exit is no failure, and shutdown is under way
    if event.returncode != 0:
        raise RuntimeError(f"efficientps_node exited with status {event.returncode}; its log above says why")
    return [Shutdown(reason="efficientps_node exited")]


def _perception(context):
    arguments = {name: LaunchConfiguration(name).perform(context) for name in (*OVERRIDES, *OTHERS)}
    share = get_package_share_directory("efficientps_ros")
    wants_rviz = yaml.safe_load(arguments["rviz"] or "false") is True
    check_rviz(wants_rviz)
    log_level = arguments["log_level"]
    node = LifecycleNode(
        package="efficientps_ros",
        executable="efficientps_node",
        name=NODE_NAME,
        namespace=arguments["namespace"],
        output="screen",
        # Later entries win over the params file.
        parameters=[arguments["params_file"], parameter_overrides(arguments)],
        ros_arguments=["--log-level", log_level] if log_level else [],
    )
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_after_node_exit))]
    if wants_rviz:
        actions += _rviz_actions(arguments, share)
    return actions


def generate_launch_description():
    defaults = {"params_file": os.path.join(get_package_share_directory("efficientps_ros"), "config", "efficientps.yaml")}
    arguments = [
        *(
            DeclareLaunchArgument(name, default_value="", description=f"{DESCRIPTIONS[name]}; empty: params file")
            for name in OVERRIDES
        ),
        *(
            DeclareLaunchArgument(name, default_value=defaults.get(name, default), description=description)
            for name, (default, description) in OTHERS.items()
        ),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_perception)])
