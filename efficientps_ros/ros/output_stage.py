"""The output thread: a batch's messages are built and sent while the next batch is in the model.

At 1024x2048 the outputs of one frame are about 20 MB of messages: tens of
milliseconds of colouring, copying and publishing on the CPU, which a GPU
model would otherwise wait for. With this stage the frame rate follows the
slower of the two, not their sum.

One item waits at most: a producer that gets ahead blocks in `put` until the
item before has been taken, so outputs keep their order and no result is
dropped while the stage is open.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

# How long `close(wait=True)` waits for an item being sent.
STOP_TIMEOUT_S = 30.0
_NOTHING = object()


class OutputStage:
    """Calls `send(item)` on a thread of its own for every item `put`, in order."""

    def __init__(self, send: Callable[[Any], None], on_failure: Callable[[Exception], None]):
        self._send = send
        self._on_failure = on_failure
        self._changed = threading.Condition()
        self._waiting: Any = _NOTHING
        self._sending = False
        self._closed = False
        # Daemon: an item stuck in a publisher must not keep the process alive at exit.
        self._thread = threading.Thread(target=self._run, name="efficientps-outputs", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Hand `item` on once the one before it was taken; False (and dropped) once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._waiting is _NOTHING or self._closed)
            if self._closed:
                return False
            self._waiting = item
            self._changed.notify_all()
            return True

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything put so far was sent; True when it was within `timeout` s."""
        with self._changed:
            return self._changed.wait_for(lambda: (self._waiting is _NOTHING and not self._sending) or self._closed, timeout)

    def close(self, wait: bool = False) -> None:
        """Take nothing more; an item still waiting is dropped. With `wait`, wait for the one being sent."""
        with self._changed:
            self._closed = True
            self._waiting = _NOTHING
            self._changed.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting is not _NOTHING or self._closed)
                if self._closed:
                    return
                item, self._waiting = self._waiting, _NOTHING
                self._sending = True
                self._changed.notify_all()
            try:
                self._send(item)
            except Exception as exc:  # noqa: BLE001 - one failed item must not end the thread
                self._on_failure(exc)
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()
