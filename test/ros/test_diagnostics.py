"""Camera statistics and their DiagnosticStatus: rates, percentiles, levels, throttled errors."""
from diagnostic_msgs.msg import DiagnosticStatus

from efficientps_ros.ros.diagnostics import CameraStats, DiagnosticsReporter, lifecycle_status
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
    status = reporter.camera_status("/cam", SlotCounts(received=30, dropped=4), stats.snapshot(), now=2.0)
    v = values(status)
    assert float(v["input_rate_hz"]) == 10.0
    assert float(v["output_rate_hz"]) == 2.5
    assert v["frames_dropped"] == "4"
    assert v["frames_lost_in_transport"] == "0"
    assert status.level == DiagnosticStatus.OK and status.message == "ok"
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


def _reporter_after(counts: SlotCounts, stats: CameraStats | None = None) -> DiagnosticsReporter:
    reporter = DiagnosticsReporter("n", "cpu")
    reporter.camera_status("/cam", counts, (stats or CameraStats()).snapshot(), now=0.0)
    return reporter


def test_frames_lost_in_transport_warn_for_the_period_they_were_lost_in():
    reporter = _reporter_after(SlotCounts(0, 0))
    lost = reporter.camera_status("/cam", SlotCounts(0, 0, lost=27), CameraStats().snapshot(), now=1.0)
    assert lost.level == DiagnosticStatus.WARN
    assert "27 frame(s) lost in transport" in lost.message and "reliable" in lost.message
    later = reporter.camera_status("/cam", SlotCounts(5, 0, lost=27), CameraStats().snapshot(), now=2.0)
    assert later.level == DiagnosticStatus.OK


def test_a_high_drop_ratio_warns_and_a_low_one_does_not():
    reporter = _reporter_after(SlotCounts(0, 0))
    mostly = reporter.camera_status("/cam", SlotCounts(100, 94), CameraStats().snapshot(), now=1.0)
    assert mostly.level == DiagnosticStatus.WARN and "94% of frames dropped" in mostly.message
    some = reporter.camera_status("/cam", SlotCounts(200, 124), CameraStats().snapshot(), now=2.0)
    assert some.level == DiagnosticStatus.OK
    # Too few frames in a period to judge.
    few = reporter.camera_status("/cam", SlotCounts(203, 127), CameraStats().snapshot(), now=3.0)
    assert few.level == DiagnosticStatus.OK


def test_an_incompatible_publisher_warns_while_no_frame_arrives():
    stats = CameraStats()
    reporter = _reporter_after(SlotCounts(0, 0), stats)
    assert stats.record_incompatible_qos("RELIABILITY_QOS_POLICY")
    assert not stats.record_incompatible_qos("RELIABILITY_QOS_POLICY"), "a policy is logged once"
    warn = reporter.camera_status("/cam", SlotCounts(0, 0), stats.snapshot(), now=1.0)
    assert warn.level == DiagnosticStatus.WARN and "RELIABILITY_QOS_POLICY" in warn.message
    assert values(warn)["incompatible_qos_events"] == "2"
    still = reporter.camera_status("/cam", SlotCounts(0, 0), stats.snapshot(), now=2.0)
    assert still.level == DiagnosticStatus.WARN
    flowing = reporter.camera_status("/cam", SlotCounts(10, 0), stats.snapshot(), now=3.0)
    assert flowing.level == DiagnosticStatus.OK


def test_several_reasons_share_one_message_at_the_worst_level():
    stats = CameraStats()
    reporter = _reporter_after(SlotCounts(0, 0), stats)
    stats.record_error("bad input: truncated data")
    status = reporter.camera_status("/cam", SlotCounts(10, 8, lost=2), stats.snapshot(), now=1.0)
    assert status.level == DiagnosticStatus.ERROR
    assert "truncated" in status.message and "lost in transport" in status.message and "80%" in status.message


def test_counters_restart_from_zero_at_each_activation():
    reporter = _reporter_after(SlotCounts(50, 10, lost=5))
    reporter.start_cameras(["/cam"], now=10.0)
    status = reporter.camera_status("/cam", SlotCounts(10, 0), CameraStats().snapshot(), now=11.0)
    assert float(values(status)["input_rate_hz"]) == 10.0
    assert status.level == DiagnosticStatus.OK


def test_before_configure_the_node_reports_its_state_and_a_failed_configure_is_an_error():
    assert lifecycle_status("n", "unconfigured", "").level == DiagnosticStatus.OK
    failed = lifecycle_status("n", "unconfigured", "configure failed: no such file /x.safetensors")
    assert failed.level == DiagnosticStatus.ERROR and "/x.safetensors" in failed.message
    assert failed.name == "n: model"
