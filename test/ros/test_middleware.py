"""The transport setting is the one Fast DDS applies, and every place that sets it agrees.

Also the harness's clean-up of the shared memory that killed participants leave.
"""
import re

from efficientps_ros.ros.middleware import FASTDDS_BUILTIN_TRANSPORTS

from .conftest import REPO_ROOT, SHARED_MEMORY, remove_stale_shared_memory, wait_until

# A participant's sockets, from the kernel's tables: LARGE_DATA listens on TCP, the default does not.
SOCKETS = """
import os, rclpy, time
rclpy.init()
node = rclpy.create_node("transport_probe")
time.sleep(0.5)
inodes = set()
for fd in os.listdir("/proc/self/fd"):
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:  # the descriptor listdir itself used
        continue
    if link.startswith("socket:["):
        inodes.add(link[8:-1])
for table in ("tcp", "udp"):
    rows = [row.split() for row in open(f"/proc/net/{table}").read().splitlines()[1:]]
    listening = [row for row in rows if row[9] in inodes and (table == "udp" or row[3] == "0A")]
    print(table, len(listening))
"""


def test_the_makefile_exports_the_same_setting():
    makefile = (REPO_ROOT / "Makefile").read_text()
    exported = re.search(r"^export FASTDDS_BUILTIN_TRANSPORTS := (.*)$", makefile, re.MULTILINE)
    assert exported and exported.group(1).strip() == FASTDDS_BUILTIN_TRANSPORTS


def test_fast_dds_accepts_the_setting_and_opens_its_tcp_transport(ros_processes):
    result = ros_processes.run(SOCKETS, timeout=60)
    counts = dict(line.split() for line in result.stdout.splitlines())
    # An option Fast DDS does not know makes it fall back to the default transports, with one error line.
    assert "Wrong value" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert int(counts["tcp"]) >= 1, result.stdout


def test_without_the_setting_the_probe_sees_no_tcp_transport(ros_processes):
    """The probe can tell the transports apart: the default ones open no TCP socket."""
    result = ros_processes.run(SOCKETS, env={"FASTDDS_BUILTIN_TRANSPORTS": "DEFAULT"}, timeout=60)
    counts = dict(line.split() for line in result.stdout.splitlines())
    assert int(counts["tcp"]) == 0 and int(counts["udp"]) >= 1, result.stdout


PARTICIPANT = """
import rclpy, time
rclpy.init()
node = rclpy.create_node("shared_memory_owner")
print("up", flush=True)
time.sleep(120)
"""


def _fast_dds_files() -> set[str]:
    return {path.name for path in SHARED_MEMORY.glob("*fastdds_*")}


def test_the_shared_memory_of_a_killed_participant_is_removed_and_a_live_ones_kept(ros_processes):
    before = _fast_dds_files()
    owner = ros_processes.start(PARTICIPANT, name="owner")
    assert wait_until(lambda: "up" in owner.stdout, 60), owner.describe()
    owned = _fast_dds_files() - before
    assert any(name.endswith("_el") for name in owned), owned

    assert not owned & set(remove_stale_shared_memory())
    assert owned <= _fast_dds_files()

    owner.kill()
    assert owned <= _fast_dds_files()  # SIGKILL leaves them behind
    removed = remove_stale_shared_memory()
    assert owned <= set(removed)
    assert not owned & _fast_dds_files()
