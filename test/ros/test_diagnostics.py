"""Camera statistics and their DiagnosticStatus: rates, percentiles, levels, throttled errors."""
from diagnostic_msgs.msg import DiagnosticStatus

from efficientps_ros.ros.diagnostics import CameraStats, DiagnosticsReporter
from efficientps_ros.ros.frame_slots import SlotCounts


def values(status: DiagnosticStatus) -> dict:
    return {kv.key: kv.value for kv in status.values}


def test_the_same_problem_is_logged_once_per_throttle_period():
    stats = CameraStats(throttle_s=5.0)
    assert stats.record_error("bad encoding", now=100.0)
    assert not stats.record_error("bad encoding", now=102.0)
    assert stats.record_error("truncated data", now=102.5)
    assert stats.record_error("bad encoding", now=105.5)
    snapshot = stats.snapshot()
    assert snapshot.errors == 4 and snapshot.last_error == "bad encoding"


def test_problems_differing_only_in_numbers_share_one_throttle():
    stats = CameraStats(throttle_s=5.0)
    assert stats.record_error("bad input: data is 3000 bytes, expected 6291456", now=10.0)
    assert not stats.record_error("bad input: data is 4100 bytes, expected 6291456", now=11.0)
    assert stats.record_error("bad input: unsupported encoding 'yuv9'", now=11.0)
    assert stats.snapshot().errors == 3


def test_rates_come_from_the_counters_since_the_last_report():
    reporter = DiagnosticsReporter("efficientps", "cpu")
    stats = CameraStats()
    reporter.camera_status("/cam", SlotCounts(received=10, dropped=0), stats.snapshot(), now=0.0)
    for _ in range(5):
        stats.record_output(latency=0.1, model_time=0.05)
    status = reporter.camera_status("/cam", SlotCounts(received=30, dropped=4, lost=3), stats.snapshot(), now=2.0)
    v = values(status)
    assert float(v["input_rate_hz"]) == 10.0
    assert float(v["output_rate_hz"]) == 2.5
    assert v["frames_dropped"] == "4"
    assert v["frames_lost_in_transport"] == "3"
    assert status.level == DiagnosticStatus.OK
    assert status.name == "efficientps: camera /cam" and status.hardware_id == "cpu"


def test_latency_median_and_p95_in_milliseconds():
    stats = CameraStats()
    for ms in range(1, 101):
        stats.record_output(latency=ms / 1000, model_time=0.02)
    v = values(DiagnosticsReporter("n", "cpu").camera_status("/cam", SlotCounts(100, 0), stats.snapshot(), 1.0))
    assert float(v["latency_median_ms"]) == 50.5
    assert 95.0 <= float(v["latency_p95_ms"]) <= 96.0
    assert float(v["model_time_median_ms"]) == 20.0


def test_no_output_yet_reports_na_instead_of_numbers():
    v = values(DiagnosticsReporter("n", "cpu").camera_status("/cam", SlotCounts(0, 0), CameraStats().snapshot(), 1.0))
    assert v["latency_median_ms"] == "n/a"


def test_errors_raise_the_level_and_name_the_problem():
    reporter = DiagnosticsReporter("n", "cpu")
    stats = CameraStats()
    reporter.camera_status("/cam", SlotCounts(1, 0), stats.snapshot(), now=0.0)
    stats.record_output(0.1, 0.05)
    stats.record_error("bad input: unsupported encoding 'yuv9'")
    warn = reporter.camera_status("/cam", SlotCounts(3, 0), stats.snapshot(), now=1.0)
    assert warn.level == DiagnosticStatus.WARN and "yuv9" in warn.message
    stats.record_error("bad input: truncated data")
    error = reporter.camera_status("/cam", SlotCounts(4, 0), stats.snapshot(), now=2.0)
    assert error.level == DiagnosticStatus.ERROR and "truncated" in error.message
    recovered = reporter.camera_status("/cam", SlotCounts(5, 0), stats.snapshot(), now=3.0)
    assert recovered.level == DiagnosticStatus.OK
    assert values(recovered)["frames_with_errors"] == "2"
