"""The QoS probe: small frames sent at a gentle rate all arrive, under both reliabilities, and are counted."""
from rclpy.qos import ReliabilityPolicy

from efficientps_ros.ros.qos_probe import probe_qos


def test_the_probe_subscribes_as_the_node_does():
    qos = probe_qos("best_effort")
    assert qos.depth == 1 and qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert probe_qos("reliable").reliability == ReliabilityPolicy.RELIABLE


def test_small_frames_arrive_and_are_reported_per_reliability(ros_processes):
    result = ros_processes.run(
        "from efficientps_ros.ros.qos_probe import main; main(['--sizes', '48x64', '--rate', '20', '--seconds', '1'])",
        timeout=120,
    )
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[3] for row in rows] == ["best_effort", "reliable"], result.stdout
    for size, megabytes, rate, reliability, sent, received, lost in rows:
        assert size == "48x64" and sent == "20"
        assert int(received) >= 15, result.stdout  # a loopback carries 9 KB frames at 20 Hz
        assert int(lost) <= int(sent) - int(received)
