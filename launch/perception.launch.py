"""EfficientPS panoptic segmentation on one or more cameras.

ros2 launch efficientps_ros perception.launch.py image_topics:="['/front/image_raw', '/rear/image_raw']" device:=cuda

Launch arguments left empty keep the value of the params file.
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

# Launch argument -> node parameter it overrides when given.
OVERRIDES = {
    "image_topics": "image_topics",
    "transport": "transport",
    "device": "device",
    "checkpoint": "model.checkpoint",
}
DESCRIPTIONS = {
    "image_topics": "Camera image topics as a YAML list, e.g. \"['/camera/image_raw']\"",
    "transport": "raw or compressed",
    "device": "auto, cpu, cuda or cuda:N",
    "checkpoint": "safetensors checkpoint",
}


def parameter_overrides(arguments):
    """Node parameters for the launch arguments that were given; empty ones are left out."""
    overrides = {}
    for argument, parameter in OVERRIDES.items():
        value = arguments.get(argument, "")
        if value:
            overrides[parameter] = yaml.safe_load(value) if argument == "image_topics" else value
    return overrides


def _perception(context):
    arguments = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    params_file = LaunchConfiguration("params_file").perform(context)
    return [
        LifecycleNode(
            package="efficientps_ros",
            executable="efficientps_node",
            name="efficientps",
            namespace="",
            output="screen",
            # Later entries win over the params file.
            parameters=[params_file, parameter_overrides(arguments)],
        )
    ]


def generate_launch_description():
    share = get_package_share_directory("efficientps_ros")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "efficientps.yaml"),
            description="Parameters of the efficientps node",
        ),
        *(
            DeclareLaunchArgument(name, default_value="", description=f"{DESCRIPTIONS[name]}; empty: params file")
            for name in OVERRIDES
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start rviz2 showing the outputs"),
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", os.path.join(share, "config", "efficientps.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=_perception), rviz])
