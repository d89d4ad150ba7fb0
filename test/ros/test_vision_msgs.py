"""The vision_msgs build is wire-compatible with upstream vision_msgs 4.x.

Type hashes cover every field name, type and order of a message and of all the
messages it nests, so equal hashes mean the two builds interoperate.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Upstream vision_msgs 4.1.1 built with the Kilted rosidl toolchain.
UPSTREAM_HASHES = {
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "ObjectHypothesisWithPose": "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}

# A child process creates one publisher per message and prints the type hash
# that the middleware announces for its topic.
LIVE_HASHES = """
import json, sys, time
import rclpy
import vision_msgs.msg

rclpy.init()
node = rclpy.create_node("type_hash_probe")
names = json.loads(sys.argv[1])
hashes = {}
for name in names:
    topic = "/type_hash_probe/" + name
    node.create_publisher(getattr(vision_msgs.msg, name), topic, 1)
    deadline = time.monotonic() + 10
    while not node.get_publishers_info_by_topic(topic) and time.monotonic() < deadline:
        time.sleep(0.01)
    infos = node.get_publishers_info_by_topic(topic)
    hashes[name] = [str(info.topic_type_hash) for info in infos]
print(json.dumps(hashes))
node.destroy_node()
rclpy.shutdown()
"""


def _share_dir(env: dict[str, str]) -> Path:
    for prefix in env["AMENT_PREFIX_PATH"].split(os.pathsep):
        share = Path(prefix) / "share" / "vision_msgs"
        if (share / "package.xml").is_file():
            return share
    pytest.fail(f"vision_msgs is not installed under AMENT_PREFIX_PATH={env['AMENT_PREFIX_PATH']}")


@pytest.mark.parametrize("name", sorted(UPSTREAM_HASHES))
def test_installed_type_description_has_upstream_hash(name: str, ros_env: dict[str, str]) -> None:
    description = json.loads((_share_dir(ros_env) / "msg" / f"{name}.json").read_text())
    own = description["type_hashes"][0]
    assert own["type_name"] == f"vision_msgs/msg/{name}"
    assert own["hash_string"] == UPSTREAM_HASHES[name]


def test_live_publishers_announce_upstream_hashes(ros_processes) -> None:
    result = ros_processes.run(
        LIVE_HASHES, args=[json.dumps(sorted(UPSTREAM_HASHES))], name="type_hash_probe", timeout=60)
    announced = json.loads(result.stdout.strip().splitlines()[-1])
    assert announced == {name: [value] for name, value in UPSTREAM_HASHES.items()}


def test_layouts_match_vision_msgs_4() -> None:
    from geometry_msgs.msg import PoseWithCovariance
    from vision_msgs.msg import (BoundingBox2D, Detection2D, LabelInfo, ObjectHypothesis,
                                 ObjectHypothesisWithPose, Point2D, Pose2D, VisionClass)

    box = BoundingBox2D()
    assert isinstance(box.center, Pose2D)
    assert isinstance(box.center.position, Point2D)
    box.center.position.x, box.center.position.y, box.center.theta = 1.5, 2.5, 0.25
    assert (box.center.position.x, box.center.position.y) == (1.5, 2.5)
    assert BoundingBox2D.get_fields_and_field_types() == {
        "center": "vision_msgs/Pose2D", "size_x": "double", "size_y": "double"}

    assert ObjectHypothesis.get_fields_and_field_types() == {"class_id": "string", "score": "double"}
    assert ObjectHypothesis(class_id="car").class_id == "car"
    with_pose = ObjectHypothesisWithPose()
    assert isinstance(with_pose.hypothesis, ObjectHypothesis)
    assert isinstance(with_pose.pose, PoseWithCovariance)

    assert VisionClass.get_fields_and_field_types() == {"class_id": "uint16", "class_name": "string"}
    VisionClass(class_id=65535, check_fields=True)
    with pytest.raises(AssertionError, match="unsigned integer"):
        VisionClass(class_id=65536, check_fields=True)

    assert Detection2D.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
        "bbox": "vision_msgs/BoundingBox2D",
        "id": "string",
    }
    assert LabelInfo.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "class_map": "sequence<vision_msgs/VisionClass>",
        "threshold": "float"}
