"""The inference thread: takes the pending frames of all cameras and hands them on as one batch.

It runs beside the executor, so subscription callbacks and lifecycle services
never wait for the model.
"""
from __future__ import annotations

import threading
from typing import Callable

from .frame_slots import Frame, FrameSlots

# How long `stop` waits for a batch in progress before leaving the thread behind.
STOP_TIMEOUT_S = 30.0


class InferenceWorker:
    """Calls `process(frames)` for every batch taken from `slots` until stopped."""

    def __init__(
        self,
        slots: FrameSlots,
        process: Callable[[list[Frame]], None],
        on_failure: Callable[[Exception], None],
    ):
        self._slots = slots
        self._process = process
        self._on_failure = on_failure
        self._stopping = threading.Event()
        # Daemon: a batch stuck in the model must not keep the process alive at exit.
        self._thread = threading.Thread(target=self._run, name="efficientps-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop taking frames; with `wait`, also wait for the batch in progress."""
        self._stopping.set()
        self._slots.close()
        if wait:
            self.join(STOP_TIMEOUT_S)

    def join(self, timeout: float | None) -> bool:
        """Wait up to `timeout` s (None: as long as it takes) for the thread to end; True when it has."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            frames = self._slots.take(timeout=0.5)
            if not frames or self._stopping.is_set():
                continue
            try:
                self._process(frames)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not end the thread
                if not self._stopping.is_set():
                    self._on_failure(exc)
