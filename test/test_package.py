"""package.xml declares a rosdep key for everything the package imports at run time."""
import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imported module -> the rosdep key that provides it.
KEYS = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "lifecycle_msgs": "lifecycle_msgs",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "vision_msgs": "vision_msgs",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "PIL": "python3-pil",
    "simplejpeg": "python3-simplejpeg-pip",
    "rosgraph_msgs": "rosgraph_msgs",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "rosbags": "python3-rosbags-pip",
    # rosbags requires its decompressors, so its pip key installs them too;
    # from Python 3.14 on, zstd is the standard library's `compression.zstd`.
    "lz4": "python3-rosbags-pip",
    "backports": "python3-rosbags-pip",
    "compression": "python3-rosbags-pip",
    "timm": "python3-timm-pip",
    # timm requires these, so its pip key installs them too.
    "torch": "python3-timm-pip",
    "torchvision": "python3-timm-pip",
    "safetensors": "python3-timm-pip",
}

# Used when installed, never required.
OPTIONAL = {"inplace_abn"}


def _imported_roots(paths):
    roots = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots


def test_every_runtime_import_has_a_declared_rosdep_key():
    manifest = ElementTree.parse(ROOT / "package.xml").getroot()
    assert manifest.get("format") == "3" and manifest.findtext("name") == "efficientps_ros"
    declared = {e.text for e in manifest.iter() if e.tag in ("depend", "exec_depend")}
    sources = [*(ROOT / "efficientps_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")]
    third_party = _imported_roots(sources) - set(sys.stdlib_module_names) - {"efficientps_ros"} - OPTIONAL
    unknown = third_party - set(KEYS)
    assert not unknown, f"imports without a rosdep key in this test's table: {sorted(unknown)}"
    missing = {KEYS[name] for name in third_party} - declared
    assert not missing, f"package.xml lacks {sorted(missing)}"
