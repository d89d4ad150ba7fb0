"""The newest pending frame of each camera, and how many frames were dropped.

Subscription callbacks put frames in; the inference worker takes all pending
frames at once. A camera holds at most one pending frame, so memory stays
bounded however fast frames arrive: a newer frame replaces an older one that
was never processed, and the replaced frame counts as dropped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Frame:
    """One received message and when it arrived (time.monotonic seconds)."""

    camera: str
    message: Any
    received: float


@dataclass(frozen=True)
class SlotCounts:
    received: int
    dropped: int  # replaced in the slot before the worker took them
    lost: int = 0  # lost in transport, as DDS reports it, before any callback


class FrameSlots:
    """Thread-safe newest-frame-only store for a fixed set of cameras."""

    def __init__(self, cameras: Iterable[str]):
        self._cameras = tuple(cameras)
        self._pending: dict[str, Frame] = {}
        self._received = dict.fromkeys(self._cameras, 0)
        self._dropped = dict.fromkeys(self._cameras, 0)
        self._lost = dict.fromkeys(self._cameras, 0)
        self._closed = False
        self._changed = threading.Condition()

    def put(self, camera: str, message: Any, received: float | None = None) -> bool:
        """Keep `message` as the camera's pending frame; True when it replaced an unprocessed one.

        Once closed, frames are ignored.
        """
        if camera not in self._received:
            raise KeyError(f"unknown camera {camera!r}; known: {', '.join(self._cameras)}")
        frame = Frame(camera, message, time.monotonic() if received is None else received)
        with self._changed:
            if self._closed:
                return False
            replaced = camera in self._pending
            self._pending[camera] = frame
            self._received[camera] += 1
            if replaced:
                self._dropped[camera] += 1
            self._changed.notify_all()
        return replaced

    def take(self, timeout: float | None = None) -> list[Frame]:
        """All pending frames, oldest camera first; waits up to `timeout` for one, [] once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._closed, timeout)
            if self._closed:
                return []
            frames = sorted(self._pending.values(), key=lambda frame: frame.received)
            self._pending.clear()
        return frames

    def record_lost(self, camera: str, count: int) -> None:
        """Count messages the middleware lost before they reached this node."""
        with self._changed:
            self._lost[camera] += count

    def counts(self, camera: str) -> SlotCounts:
        with self._changed:
            return SlotCounts(self._received[camera], self._dropped[camera], self._lost[camera])

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def close(self) -> None:
        """Drop pending frames and wake every waiting `take`."""
        with self._changed:
            self._closed = True
            self._pending.clear()
            self._changed.notify_all()
