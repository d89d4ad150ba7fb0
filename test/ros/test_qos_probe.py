"""The QoS probe: small frames sent at a gentle rate all arrive, under both reliabilities, and are counted."""
from rclpy.qos import ReliabilityPolicy

from efficientps_ros.ros.qos_probe import probe_qos, probe_topic


def test_the_probe_subscribes_as_the_node_does():
    qos = probe_qos("best_effort")
    assert qos.depth == 1 and qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert probe_qos("reliable").reliability == ReliabilityPolicy.RELIABLE


def test_each_probe_has_a_topic_of_its_own():
    topics = {probe_topic(h, w, r) for h, w in ((48, 64), (64, 48)) for r in ("best_effort", "reliable")}
    assert len(topics) == 4


def test_small_frames_arrive_and_are_reported_per_reliability(ros_processes):
    result = ros_processes.run(
        "import sys\n"
        "from efficientps_ros.ros.qos_probe import main\n"
        "sys.exit(main(['--sizes', '48x64', '32x32', '--rate', '20', '--seconds', '1']))",
        timeout=120,
    )
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["48x64", "48x64", "32x32", "32x32"], result.stdout
    assert [row[3] for row in rows] == ["best_effort", "reliable"] * 2, result.stdout
    for size, megabytes, rate, reliability, sent, received, lost in rows:
        assert sent == "20"
        assert int(received) >= 15, result.stdout  # a loopback carries 9 KB frames at 20 Hz
        assert int(lost) <= int(sent) - int(received)


def test_a_publisher_that_nobody_matches_gives_up_by_name(ros_processes):
    result = ros_processes.run(
        "import rclpy\n"
        "from efficientps_ros.ros import qos_probe\n"
        "qos_probe.MATCH_TIMEOUT_S = 1.0\n"
        "rclpy.init()\n"
        "node = rclpy.create_node('qos_probe_alone')\n"
        "try:\n"
        "    qos_probe.send(node, '/qos_probe/nobody', 8, 8, 20.0, 1, 'reliable')\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
        "print(sorted(publisher.topic_name for publisher in node.publishers))\n",
        timeout=60,
    )
    message, publishers = result.stdout.splitlines()
    assert message == "no subscriber matched /qos_probe/nobody (reliable) within 1 s"
    assert "/qos_probe/nobody" not in publishers
