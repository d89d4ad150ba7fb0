"""Per-camera statistics and their /diagnostics report.

The inference worker records outputs and errors, the subscriptions record
QoS mismatches; a timer turns the counters into rates, latency percentiles
and levels about once a second. A camera is at WARN, with the reason in
its message, while frames are skipped, lost in transport, mostly dropped,
or held back by a publisher with incompatible QoS.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .frame_slots import SlotCounts

# How many recent frames the latency and model-time percentiles cover.
WINDOW = 100
# Above this fraction of a report period's frames dropped, the model is too slow for the camera.
DROP_WARN_RATIO = 0.5
# Fewer frames than this in a report period say too little about the drop ratio.
DROP_MIN_FRAMES = 4


@dataclass(frozen=True)
class CameraSnapshot:
    published: int
    errors: int
    last_error: str
    latencies: tuple[float, ...]
    model_times: tuple[float, ...]
    incompatible_qos: int = 0
    incompatible_policy: str = ""


class CameraStats:
    """Outputs, latencies and errors of one camera; safe to share between threads."""

    def __init__(self, throttle_s: float = 5.0):
        self._throttle_s = throttle_s
        self._lock = threading.Lock()
        self._published = 0
        self._errors = 0
        self._last_error = ""
        self._last_logged: dict[str, float] = {}
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self._model_times: deque[float] = deque(maxlen=WINDOW)
        self._incompatible_qos = 0
        self._incompatible_policies: set[str] = set()
        self._incompatible_policy = ""

    def record_output(self, latency: float, model_time: float) -> None:
        with self._lock:
            self._published += 1
            self._latencies.append(latency)
            self._model_times.append(model_time)

    def record_error(self, problem: str, now: float | None = None) -> bool:
        """Count a skipped frame; True when `problem` was not logged within the throttle period."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._errors += 1
            self._last_error = problem
            # Problems that differ only in their numbers (byte counts, sizes)
            # are one kind, and the table of kinds stays small.
            kind = re.sub(r"\d+", "N", problem)
            last = self._last_logged.get(kind)
            if last is not None and now - last < self._throttle_s:
                return False
            self._last_logged[kind] = now
            return True

    def record_incompatible_qos(self, policy: str) -> bool:
        """Count a publisher whose QoS cannot match; True the first time `policy` is the reason."""
        with self._lock:
            self._incompatible_qos += 1
            self._incompatible_policy = policy
            first = policy not in self._incompatible_policies
            self._incompatible_policies.add(policy)
            return first

    def snapshot(self) -> CameraSnapshot:
        with self._lock:
            return CameraSnapshot(
                self._published,
                self._errors,
                self._last_error,
                tuple(self._latencies),
                tuple(self._model_times),
                self._incompatible_qos,
                self._incompatible_policy,
            )


@dataclass(frozen=True)
class _Previous:
    time: float
    received: int
    published: int
    errors: int
    dropped: int = 0
    lost: int = 0
    incompatible_qos: int = 0

    @classmethod
    def of(cls, now: float, counts: SlotCounts, stats: CameraSnapshot) -> "_Previous":
        return cls(now, counts.received, stats.published, stats.errors, counts.dropped, counts.lost,
                   stats.incompatible_qos)


def _ms(values: tuple[float, ...], percentile: float) -> str:
    if not values:
        return "n/a"
    return f"{np.percentile(values, percentile) * 1000:.1f}"


def _status(name: str, hardware_id: str, level: bytes, message: str, values: dict[str, str]) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )


def _problems(
    previous: _Previous, counts: SlotCounts, stats: CameraSnapshot, elapsed: float
) -> list[tuple[bytes, str]]:
    """Each (level, reason) that holds for the period since `previous`, worst first."""
    problems = []
    new_errors = stats.errors - previous.errors
    if new_errors and stats.published == previous.published:
        problems.append((DiagnosticStatus.ERROR, f"every frame skipped: {stats.last_error}"))
    elif new_errors:
        problems.append((DiagnosticStatus.WARN, f"{new_errors} frame(s) skipped: {stats.last_error}"))
    lost = counts.lost - previous.lost
    if lost:
        problems.append((DiagnosticStatus.WARN, f"{lost} frame(s) lost in transport in {elapsed:.1f} s: too large "
                         "or too fast for best effort? try input_qos.reliability reliable"))
    received, dropped = counts.received - previous.received, counts.dropped - previous.dropped
    if received >= DROP_MIN_FRAMES and dropped > DROP_WARN_RATIO * received:
        problems.append((DiagnosticStatus.WARN, f"{100 * dropped // received}% of frames dropped: the model "
                         "is slower than the camera"))
    if stats.incompatible_qos and (stats.incompatible_qos > previous.incompatible_qos or not received):
        problems.append((DiagnosticStatus.WARN, f"a publisher's QoS is incompatible ({stats.incompatible_policy}): "
                         "its frames never arrive; see input_qos.*"))
    return problems


def _level_and_message(problems: list[tuple[bytes, str]], idle: bool) -> tuple[bytes, str]:
    if not problems:
        return DiagnosticStatus.OK, "waiting for frames" if idle else "ok"
    return max(level for level, _ in problems), "; ".join(reason for _, reason in problems)


def lifecycle_status(node_name: str, state: str, failure: str) -> DiagnosticStatus:
    """The node's status before a model is loaded: ERROR naming the reason after a failed configure."""
    if failure:
        return _status(f"{node_name}: model", "", DiagnosticStatus.ERROR, failure, {"state": state})
    return _status(f"{node_name}: model", "", DiagnosticStatus.OK, state, {"state": state})


class DiagnosticsReporter:
    """Builds DiagnosticArrays; remembers the last report's counters to give rates."""

    def __init__(self, node_name: str, hardware_id: str):
        self._node_name = node_name
        self._hardware_id = hardware_id
        self._previous: dict[str, _Previous] = {}

    def model_status(self, level: bytes, message: str, values: dict[str, str]) -> DiagnosticStatus:
        return _status(f"{self._node_name}: model", self._hardware_id, level, message, values)

    def start_cameras(self, cameras: list[str], now: float) -> None:
        """Count from zero at `now`: the cameras' counters are new at each activation."""
        self._previous = {camera: _Previous(now, 0, 0, 0) for camera in cameras}

    def camera_status(self, camera: str, counts: SlotCounts, stats: CameraSnapshot, now: float) -> DiagnosticStatus:
        previous = self._previous.get(camera, _Previous.of(now, counts, stats))
        self._previous[camera] = _Previous.of(now, counts, stats)
        elapsed = now - previous.time
        input_rate = (counts.received - previous.received) / elapsed if elapsed > 0 else 0.0
        output_rate = (stats.published - previous.published) / elapsed if elapsed > 0 else 0.0
        idle = counts.received == previous.received
        level, message = _level_and_message(_problems(previous, counts, stats, elapsed), idle)
        values = {
            "input_rate_hz": f"{input_rate:.2f}",
            "output_rate_hz": f"{output_rate:.2f}",
            "frames_received": str(counts.received),
            "frames_published": str(stats.published),
            "frames_dropped": str(counts.dropped),
            "frames_lost_in_transport": str(counts.lost),
            "frames_with_errors": str(stats.errors),
            "incompatible_qos_events": str(stats.incompatible_qos),
            "last_error": stats.last_error,
            "latency_median_ms": _ms(stats.latencies, 50),
            "latency_p95_ms": _ms(stats.latencies, 95),
            "model_time_median_ms": _ms(stats.model_times, 50),
        }
        return _status(f"{self._node_name}: camera {camera}", self._hardware_id, level, message, values)

    def report(self, statuses: list[DiagnosticStatus], stamp) -> DiagnosticArray:
        array = DiagnosticArray(status=statuses)
        array.header.stamp = stamp
        return array
