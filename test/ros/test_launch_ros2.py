"""perception.launch.py under the real `ros2 launch`: arguments, lifecycle state, topics, the rviz check, failures.

Needs launch, launch_ros and ros2launch, and this package built with colcon
(`colcon build --packages-select efficientps_ros && source install/setup.bash`):
launch starts `lib/efficientps_ros/efficientps_node`, which a pip install does
not create. It skips itself where any of that is missing, as in this
project's venv, where test_launch.py checks the same file over stand-ins.

    python -m pytest -q test/ros/test_launch_ros2.py
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("launch")
pytest.importorskip("launch_ros")
pytest.importorskip("ros2launch")

import rclpy  # noqa: E402
from ament_index_python.packages import (  # noqa: E402
    PackageNotFoundError,
    get_package_prefix,
)
from lifecycle_msgs.srv import GetState  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from .conftest import error_lines, wait_until  # noqa: E402


def _built_with_colcon() -> bool:
    try:
        prefix = Path(get_package_prefix("efficientps_ros"))
    except PackageNotFoundError:
        return False
    return (prefix / "lib" / "efficientps_ros" / "efficientps_node").exists()


pytestmark = pytest.mark.skipif(not _built_with_colcon(), reason="efficientps_ros is not installed by colcon")

START_TIMEOUT = 180.0
# `ros2 launch ...` with this interpreter, so that it finds the same packages.
ROS2 = "import sys; from ros2cli.cli import main; sys.argv[0] = 'ros2'; sys.exit(main())"


def _rviz2_installed() -> bool:
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        return False
    return True


class Client:
    """Service calls and graph queries from a node of the test's own."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_check", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.missing: str | None = None
        self.heard: list[tuple[str, float]] = []

    def call(self, kind, service: str, request, timeout: float = 30.0):
        """The service's answer, or None; `self.missing` then says whether the service or its answer was."""
        client = self.node.create_client(kind, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                self.missing = "no service"
                return None
            future = client.call_async(request)
            wait_until(future.done, timeout)
            self.missing = None if future.done() else "no answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self, node: str, timeout: float = 30.0) -> str | None:
        answer = self.call(GetState, f"{node}/get_state", GetState.Request(), timeout)
        return None if answer is None else answer.current_state.label

    def wait_for_state(self, node: str, label: str, timeout: float = START_TIMEOUT) -> bool:
        """Asks until `node` is in state `label`; `self.heard` lists each change of what came back, with when."""
        start, self.heard = time.monotonic(), []

        def reached():
            heard = self.state(node, 5.0) or f"<{self.missing}>"
            if not self.heard or self.heard[-1][0] != heard:
                self.heard.append((heard, round(time.monotonic() - start, 1)))
            return heard == label

        return wait_until(reached, timeout, interval=0.2)

    def parameter(self, node: str, name: str):
        answer = self.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=[name]))
        value = answer.values[0]
        return value.bool_value if value.type == 1 else value.string_value

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def client():
    harness = Client()
    yield harness
    harness.close()


def launch(ros_processes, *arguments: str, env=None):
    return ros_processes.start(
        ROS2, args=["launch", "efficientps_ros", "perception.launch.py", *arguments], name="ros2-launch", env=env
    )


def test_every_argument_reaches_the_node_and_sigint_ends_launch_cleanly(ros_processes, client):
    child = launch(
        ros_processes, "namespace:=car1", "use_sim_time:=true", "output_namespace:=seg",
        "image_topics:=front/image_raw", "device:=cpu", "precision:=fp32", "log_level:=info",
        "inference_height:=64", "inference_width:=128",
    )
    assert client.wait_for_state("/car1/efficientps", "active"), f"heard {client.heard}\n{child.describe()}"
    assert client.parameter("/car1/efficientps", "use_sim_time") is True
    assert client.parameter("/car1/efficientps", "output_namespace") == "seg"
    assert wait_until(lambda: client.node.count_publishers("/car1/front/seg/semantic") == 1, 30.0)
    assert client.node.count_subscribers("/car1/front/image_raw") == 1
    result = child.stop(timeout=30.0)
    assert result.returncode == 0, child.describe()
    assert error_lines(result.stdout + result.stderr) == [], child.describe()


def test_autostart_false_leaves_the_node_unconfigured(ros_processes, client):
    child = launch(ros_processes, "autostart:=false", "namespace:=manual")
    assert client.wait_for_state("/manual/efficientps", "unconfigured"), f"heard {client.heard}\n{child.describe()}"
    assert child.stop(timeout=30.0).returncode == 0, child.describe()


def test_a_bad_parameter_fails_launch_with_the_node_s_one_line(ros_processes):
    child = launch(ros_processes, "device:=gpu", "namespace:=bad")
    result = child.wait(START_TIMEOUT)
    assert result.returncode != 0, child.describe()
    output = result.stdout + result.stderr
    assert "parameter device: not a device (got 'gpu'); allowed: auto, cpu, cuda or cuda:N" in output, output


@pytest.mark.skipif(_rviz2_installed(), reason="rviz2 is installed here")
def test_rviz_without_rviz2_is_one_line_and_leaves_nothing_running(ros_processes, client):
    child = launch(ros_processes, "rviz:=true", "namespace:=with_rviz")
    result = child.wait(60.0)
    assert result.returncode != 0, child.describe()
    errors = error_lines(result.stdout + result.stderr)
    assert len(errors) == 1 and "rviz2" in errors[0], child.describe()
    assert client.state("/with_rviz/efficientps", timeout=5.0) is None, "the node was started anyway"


# Stands in for rviz2, which is not installable beside the pip wheels: it records how launch started it
# and the config it was handed, and ends cleanly when launch stops it.
STAND_IN_RVIZ2 = """#!{python}
import json, signal, sys
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
argv = sys.argv[1:]
config = open(argv[argv.index("-d") + 1]).read()
with open({record!r} + ".part", "w") as out:
    json.dump({{"argv": argv, "config": config}}, out)
__import__("os").replace({record!r} + ".part", {record!r})
signal.pause()
"""


def _stand_in_rviz2(root: Path, record: Path) -> Path:
    """An ament prefix holding an `rviz2` package whose executable is the stand-in; returns the prefix."""
    prefix = root / "rviz2_prefix"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").write_text("")
    executable = prefix / "lib" / "rviz2" / "rviz2"
    executable.parent.mkdir(parents=True)
    executable.write_text(STAND_IN_RVIZ2.format(python=sys.executable, record=str(record)))
    executable.chmod(0o755)
    return prefix


def test_rviz_starts_in_the_node_s_namespace_on_the_node_s_topics(ros_processes, ros_env, client, tmp_path):
    record = tmp_path / "rviz2.json"
    prefix = _stand_in_rviz2(tmp_path, record)
    child = launch(
        ros_processes, "rviz:=true", "namespace:=car1", "image_topics:=front/image_raw", "device:=cpu",
        env={"AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{ros_env['AMENT_PREFIX_PATH']}"},
    )
    assert client.wait_for_state("/car1/efficientps", "active"), f"heard {client.heard}\n{child.describe()}"
    assert wait_until(record.exists, 30.0), child.describe()
    started = json.loads(record.read_text())
    assert "__ns:=/car1" in started["argv"], started["argv"]
    displays = yaml.safe_load(started["config"])["Visualization Manager"]["Displays"]
    assert {d["Topic"]["Value"] for d in displays} == {
        "/car1/front/efficientps/overlay", "/car1/front/efficientps/semantic"}
    config = Path(started["argv"][started["argv"].index("-d") + 1])
    result = child.stop(timeout=30.0)
    assert result.returncode == 0, child.describe()
    assert error_lines(result.stdout + result.stderr) == [], child.describe()
    assert not config.exists(), "the config written for this launch outlived it"


def test_launch_ends_when_the_node_is_stopped(ros_processes, client):
    child = launch(ros_processes, "namespace:=stopped", "device:=cpu")
    assert client.wait_for_state("/stopped/efficientps", "active"), f"heard {client.heard}\n{child.describe()}"
    node_pids = [pid for pid in _children(child.popen.pid) if "efficientps_node" in _cmdline(pid)]
    assert node_pids, child.describe()
    os.kill(node_pids[0], signal.SIGTERM)
    result = child.wait(60.0)
    assert result.returncode == 0, child.describe()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found += [int(entry.name), *_children(int(entry.name))]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
