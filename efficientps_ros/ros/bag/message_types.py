"""ROS message type names ('sensor_msgs/msg/Image') to what playing and writing need.

Playing needs the rclpy class of a type, writing a bag needs its definition
and type hash. The definitions come from rosbags' own Kilted type store, and,
for packages it does not know (vision_msgs), from the `.msg` files the
package installed under its share folder.
"""
from __future__ import annotations

import importlib
import os
import sys
from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
CLOCK = "rosgraph_msgs/msg/Clock"


def message_class(msgtype: str) -> type | None:
    """The rclpy class of `msgtype`, or None where its package is not installed here."""
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        return None
    package, kind, name = parts
    try:
        module = importlib.import_module(f"{package}.{kind}")
    except ImportError:
        return None
    return getattr(module, name, None)


@lru_cache(maxsize=1)
def ros2_typestore() -> Typestore:
    """The type store bags are written with and ROS 1 messages are converted with."""
    return get_typestore(Stores.ROS2_KILTED)


def definition(msgtype: str) -> tuple[str, str]:
    """(message definition, RIHS01 type hash) of `msgtype`, as rosbag2 stores them; KeyError if unknown."""
    store = ros2_typestore()
    if msgtype not in store.fielddefs:
        _register_package(store, msgtype.split("/")[0])
    if msgtype not in store.fielddefs:
        raise KeyError(f"no definition of {msgtype} in rosbags' type store or any installed share/*/msg")
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return msgdef, store.hash_rihs01(msgtype)


def _register_package(store: Typestore, package: str) -> None:
    for prefix in _prefixes():
        folder = prefix / "share" / package / "msg"
        if folder.is_dir():
            types = {}
            for path in sorted(folder.glob("*.msg")):
                types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
            store.register(types)
            return


def _prefixes() -> list[Path]:
    """Install prefixes, this interpreter's (the venv) last."""
    paths = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [*paths, Path(sys.prefix)]
