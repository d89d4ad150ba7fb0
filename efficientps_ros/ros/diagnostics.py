"""Per-camera statistics and their /diagnostics report.

The inference worker records outputs and errors; a timer turns the counters
into rates, latency percentiles and levels about once a second.
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


@dataclass(frozen=True)
class CameraSnapshot:
    published: int
    errors: int
    last_error: str
    latencies: tuple[float, ...]
    model_times: tuple[float, ...]


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

    def snapshot(self) -> CameraSnapshot:
        with self._lock:
            return CameraSnapshot(
                self._published, self._errors, self._last_error, tuple(self._latencies), tuple(self._model_times)
            )


@dataclass(frozen=True)
class _Previous:
    time: float
    received: int
    published: int
    errors: int


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


class DiagnosticsReporter:
    """Builds DiagnosticArrays; remembers the last report's counters to give rates."""

    def __init__(self, node_name: str, hardware_id: str):
        self._node_name = node_name
        self._hardware_id = hardware_id
        self._previous: dict[str, _Previous] = {}

    def model_status(self, level: bytes, message: str, values: dict[str, str]) -> DiagnosticStatus:
        return _status(f"{self._node_name}: model", self._hardware_id, level, message, values)

    def camera_status(self, camera: str, counts: SlotCounts, stats: CameraSnapshot, now: float) -> DiagnosticStatus:
        previous = self._previous.get(camera, _Previous(now, counts.received, stats.published, stats.errors))
        self._previous[camera] = _Previous(now, counts.received, stats.published, stats.errors)
        elapsed = now - previous.time
        input_rate = (counts.received - previous.received) / elapsed if elapsed > 0 else 0.0
        output_rate = (stats.published - previous.published) / elapsed if elapsed > 0 else 0.0
        new_errors = stats.errors - previous.errors
        if new_errors and stats.published == previous.published:
            level, message = DiagnosticStatus.ERROR, f"every frame skipped: {stats.last_error}"
        elif new_errors:
            level, message = DiagnosticStatus.WARN, f"{new_errors} frame(s) skipped: {stats.last_error}"
        elif counts.received == previous.received:
            level, message = DiagnosticStatus.OK, "waiting for frames"
        else:
            level, message = DiagnosticStatus.OK, "ok"
        values = {
            "input_rate_hz": f"{input_rate:.2f}",
            "output_rate_hz": f"{output_rate:.2f}",
            "frames_received": str(counts.received),
            "frames_published": str(stats.published),
            "frames_dropped": str(counts.dropped),
            "frames_lost_in_transport": str(counts.lost),
            "frames_with_errors": str(stats.errors),
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
