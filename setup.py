"""ament_python package: `colcon build` on a ROS 2 system, `pip install -e .` in a venv."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "efficientps_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["weights/*.safetensors", "weights/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="efficientps_ros developers",
    maintainer_email="dev@efficientps-ros.invalid",
    description="EfficientPS panoptic segmentation as a ROS 2 perception node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"efficientps_node = {PACKAGE}.ros.node:main",
            f"efficientps = {PACKAGE}.cli:main",
        ],
    },
)
