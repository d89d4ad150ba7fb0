"""The node benchmark: its report, and one small run publishing to its listener."""
import argparse
import re
import time

from efficientps_ros.ros.benchmark import report

from .conftest import error_lines


def test_the_report_gives_each_stage_and_the_frame_rates_with_their_ratio():
    args = argparse.Namespace(height=4, width=8, encoding="rgb8", instances=1, frames=3, model_ms=30.0)
    times = {
        "messages": [0.010, 0.012, 0.011],
        "frame, inline outputs": [0.060, 0.060, 0.060],
        "frame, output thread": [0.030, 0.030, 0.030],
    }
    text = report(times, args)
    assert re.search(r"^messages\s+11\.00\s+11\.9\d$", text, re.M), text
    assert "frame, inline outputs     60.00 ms median,  16.7 frames/s" in text
    assert "frame, output thread      30.00 ms median,  33.3 frames/s" in text
    assert text.endswith("output thread / inline frame rate: x2.00")


def test_a_small_run_publishes_to_its_listener_and_times_the_pipeline_both_ways(ros_processes):
    result = ros_processes.run(module="efficientps_ros.ros.benchmark", timeout=120.0, args=[
        "--height", "64", "--width", "128", "--frames", "4", "--warmup", "1", "--model-ms", "20",
    ])
    text = result.stdout
    for stage in ("conversion in", "messages", "publish", "  overlay", "  detections", "total"):
        assert re.search(rf"^{stage}\s+\d+\.\d\d\s+\d+\.\d\d$", text, re.M), text
    periods = dict(re.findall(r"^(frame, [a-z ]+?)\s+(\d+\.\d\d) ms median", text, re.M))
    assert set(periods) == {"frame, inline outputs", "frame, output thread"}, text
    # Each frame waits for the stand-in model: no path can be faster than it.
    assert all(float(ms) >= 20.0 for ms in periods.values()), text
    assert "images published through rcl from their own buffer" in text
    # The listener, stopped at the end, leaves no traceback in the output it shares.
    assert not error_lines(result.stderr), result.stderr


def test_the_listener_stops_at_sigint_without_a_traceback(ros_processes):
    listener = ros_processes.start(module="efficientps_ros.ros.benchmark", args=["--listen", "120"])
    # Its subscriptions come after its SIGINT handler: once they are seen, the signal is its to handle.
    ros_processes.run(
        "import time, rclpy\n"
        "rclpy.init()\n"
        "node = rclpy.create_node('benchmark_probe')\n"
        "end = time.monotonic() + 60\n"
        "while not node.get_subscriptions_info_by_topic('/benchmark/efficientps/detections'):\n"
        "    assert time.monotonic() < end, 'the listener never subscribed'\n"
        "    time.sleep(0.1)\n",
        timeout=90,
    )
    listener.interrupt()
    begin = time.monotonic()
    result = listener.wait(timeout=10)
    assert time.monotonic() - begin < 5, "the listener went on after SIGINT"
    assert result.returncode == 0, result.stderr
    assert not error_lines(result.stderr), result.stderr
