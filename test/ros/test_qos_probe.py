"""The QoS probe: small frames sent at a gentle rate all arrive, under both reliabilities, and are counted.

A subscriber that exits, stays silent, or answers out of turn ends the probe with one
line that names it, and leaves no process behind; lines the middleware writes among
the subscriber's answers are skipped.
"""
import itertools
import re
import subprocess
import sys
import time

import pytest
from rclpy.qos import ReliabilityPolicy
from rclpy.validate_topic_name import validate_topic_name

from efficientps_ros.ros import qos_probe
from efficientps_ros.ros.qos_probe import Listener, probe, probe_qos, probe_topic

# Fake subscribers, for the publisher's side without DDS.
EXITS = "raise SystemExit(3)"
SILENT = "import sys; sys.stdin.read()"
# Closes its input first, so the next request meets a broken pipe.
GONE = "import os, time; os.close(0); print('qos_probe: ready', flush=True); time.sleep(0.5); raise SystemExit(3)"


def answering(listening: str, counts: str) -> str:
    """A fake subscriber that answers each request with `listening`, then `counts`, among other lines."""
    return (
        "import sys\n"
        "sys.stdout.write('[middleware] a line of its own\\nhalf a line ')\n"
        "print('qos_probe: ready', flush=True)\n"
        "for line in sys.stdin:\n"
        f"    reply = {counts!r} if line.strip() == 'sent' else {listening!r}\n"
        "    sys.stdout.write(f'noise\\nqos_probe: {reply}\\nmore noise\\n')\n"
        "    sys.stdout.flush()\n"
    )


@pytest.fixture
def started(monkeypatch):
    """The processes the probe starts; none may be running when the test ends."""
    processes = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(qos_probe.subprocess, "Popen", Recorded)
    yield processes
    running = [process.args for process in processes if process.poll() is None]
    for process in processes:
        process.kill()
        process.wait()
    assert not running


def test_the_probe_subscribes_as_the_node_does():
    qos = probe_qos("best_effort")
    assert qos.depth == 1 and qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert probe_qos("reliable").reliability == ReliabilityPolicy.RELIABLE


def test_each_probe_has_a_topic_of_its_own():
    probes = itertools.product(((48, 64), (48, 64), (64, 48)), ("best_effort", "reliable"))
    topics = {probe_topic(index, h, w, r) for index, ((h, w), r) in enumerate(probes)}
    assert len(topics) == 6
    assert all(validate_topic_name(topic) for topic in topics)


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


def test_a_subscriber_that_exits_at_once_is_named_with_its_status(started):
    with pytest.raises(RuntimeError, match=r"^the probe's subscriber exited \(status 3\) at 'start'$"):
        Listener([sys.executable, "-c", EXITS])


def test_a_subscriber_that_never_answers_is_given_up_on(started, monkeypatch):
    monkeypatch.setattr(qos_probe, "MATCH_TIMEOUT_S", 1.0)
    with pytest.raises(RuntimeError, match=r"^the probe's subscriber did not answer 'start' within 1 s$"):
        Listener([sys.executable, "-c", SILENT])


def test_a_subscriber_gone_before_a_request_is_named_and_closing_does_not_raise(started):
    listener = Listener([sys.executable, "-c", GONE])
    with pytest.raises(RuntimeError, match=r"^the probe's subscriber exited \(status 3\) before '/t reliable'$"):
        listener.ask("/t reliable", "listening", 5.0)
    listener.close()


def test_a_subscriber_that_outstays_the_end_of_its_input_is_killed(started):
    listener = Listener([sys.executable, "-c", "import time; print('qos_probe: ready', flush=True); time.sleep(60)"])
    begin = time.monotonic()
    listener.close(timeout=0.5)
    assert listener.process.returncode == -9 and time.monotonic() - begin < 5


def test_lines_without_the_tag_are_skipped(started, monkeypatch):
    monkeypatch.setattr(qos_probe, "send", lambda *args: None)
    with Listener([sys.executable, "-c", answering("listening", "17 3")]) as listener:
        assert probe(None, listener, 0, 48, 64, 20.0, 1.0, "reliable") == (20, 17, 3)
        assert probe(None, listener, 1, 48, 64, 20.0, 1.0, "reliable") == (20, 17, 3)


@pytest.mark.parametrize("listening, counts, message", [
    ("ready", "17 3", "answered 'ready' to '/qos_probe/image/probe0_h48_w64_reliable reliable'"),
    ("listening", "listening", "answered 'listening' to 'sent'"),
    ("listening", "17 many", "answered '17 many' to 'sent'"),
    ("listening", "17 3 1", "answered '17 3 1' to 'sent'"),
])
def test_an_answer_out_of_turn_is_named(started, monkeypatch, listening, counts, message):
    monkeypatch.setattr(qos_probe, "send", lambda *args: None)
    with Listener([sys.executable, "-c", answering(listening, counts)]) as listener:
        with pytest.raises(RuntimeError, match=f"^the probe's subscriber {re.escape(message)}$"):
            probe(None, listener, 0, 48, 64, 20.0, 1.0, "reliable")


@pytest.mark.parametrize("subscriber, message", [
    (EXITS, "exited (status 3) at 'start'"),
    (SILENT, "did not answer 'start' within 1 s"),
    (GONE, "exited (status 3) before '/qos_probe/image/probe0_h8_w8_best_effort best_effort'"),
])
def test_a_failing_subscriber_ends_the_probe_with_one_line(ros_processes, subscriber, message):
    result = ros_processes.run(
        "import os, sys\n"
        "import rclpy\n"
        "from efficientps_ros.ros import qos_probe\n"
        "qos_probe.MATCH_TIMEOUT_S = 1.0\n"
        f"qos_probe.LISTENER_ARGV = (sys.executable, '-c', {subscriber!r})\n"
        "status = qos_probe.main(['--sizes', '8x8', '--reliability', 'best_effort'])\n"
        "try:\n"
        "    os.waitpid(-1, os.WNOHANG)\n"
        "except ChildProcessError:\n"
        "    print('no child left')\n"
        "print('rclpy ok:', rclpy.ok())\n"
        "sys.exit(status)\n",
        timeout=60, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"qos_probe: the probe's subscriber {message}"]
    assert result.stdout.splitlines()[-2:] == ["no child left", "rclpy ok: False"], result.stdout
