"""EfficientPS panoptic segmentation on one or more cameras.

ros2 launch efficientps_ros perception.launch.py image_topics:="['/front/image_raw', '/rear/image_raw']" device:=cuda
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("efficientps_ros")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "efficientps.yaml"),
            description="Parameters of the efficientps node",
        ),
        DeclareLaunchArgument(
            "image_topics",
            default_value="['/camera/image_raw']",
            description="Camera image topics, as a YAML list",
        ),
        DeclareLaunchArgument("transport", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument(
            "checkpoint", default_value="", description="safetensors checkpoint; empty: the packaged model"
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Also start rviz2 showing the outputs"),
    ]
    # Later entries override the params file.
    overrides = {
        "image_topics": LaunchConfiguration("image_topics"),
        "transport": ParameterValue(LaunchConfiguration("transport"), value_type=str),
        "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
        "model.checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
    }
    perception = LifecycleNode(
        package="efficientps_ros",
        executable="efficientps_node",
        name="efficientps",
        namespace="",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), overrides],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", os.path.join(share, "config", "efficientps.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, perception, rviz])
