"""The inference thread: batches from the slots, a prompt stop, and silence about batches stopped under it."""
import threading
import time

from efficientps_ros.ros.frame_slots import FrameSlots
from efficientps_ros.ros.worker import InferenceWorker


class SlowBatch:
    """Holds each batch until released, as a long model run would."""

    def __init__(self, fail: bool = False):
        self.started = threading.Event()
        self.release = threading.Event()
        self.batches = []
        self.fail = fail

    def __call__(self, frames):
        self.batches.append([f.message for f in frames])
        self.started.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("batch failed")


def _worker_in_a_batch(batch: SlowBatch, on_failure=lambda exc: None) -> tuple[FrameSlots, InferenceWorker]:
    """A worker whose one camera's frame is in `batch`, held there until the batch is released."""
    slots = FrameSlots(["/a"])
    worker = InferenceWorker(slots, batch, on_failure)
    worker.start()
    slots.put("/a", "frame")
    assert batch.started.wait(5)
    return slots, worker


def test_every_pending_frame_goes_to_one_batch():
    slots = FrameSlots(["/a", "/b"])
    batch = SlowBatch()
    batch.release.set()
    worker = InferenceWorker(slots, batch, lambda exc: None)
    slots.put("/a", "a1")
    slots.put("/b", "b1")
    worker.start()
    assert batch.started.wait(5)
    worker.stop()
    assert batch.batches == [["a1", "b1"]]


def test_stop_without_waiting_returns_while_the_batch_runs_and_join_waits_for_it():
    batch = SlowBatch()
    _, worker = _worker_in_a_batch(batch)
    begun = time.monotonic()
    worker.stop(wait=False)
    assert time.monotonic() - begun < 0.5
    assert not worker.join(0.1), "the batch is still running"
    batch.release.set()
    assert worker.join(5)
    assert batch.batches == [["frame"]]


def test_a_frame_put_between_stop_and_the_end_of_the_batch_is_not_processed():
    batch = SlowBatch()
    slots, worker = _worker_in_a_batch(batch)
    worker.stop(wait=False)
    slots.put("/a", "after stop")
    batch.release.set()
    assert worker.join(5)
    assert batch.batches == [["frame"]]


def test_a_batch_failing_after_stop_is_not_reported():
    batch = SlowBatch(fail=True)
    failures = []
    _, worker = _worker_in_a_batch(batch, failures.append)
    worker.stop(wait=False)
    batch.release.set()
    assert worker.join(5)
    assert failures == []


def test_a_batch_failing_while_running_is_reported_and_the_thread_goes_on():
    slots = FrameSlots(["/a"])
    batch = SlowBatch(fail=True)
    batch.release.set()
    failures = []
    worker = InferenceWorker(slots, batch, failures.append)
    worker.start()
    slots.put("/a", "first")
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        time.sleep(0.01)
    slots.put("/a", "second")
    while len(batch.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert [str(f) for f in failures[:1]] == ["batch failed"]
    assert batch.batches[:2] == [["first"], ["second"]]
