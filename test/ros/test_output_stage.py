"""The output thread: order, one waiting item at most, failures, closing."""
import threading
import time

from efficientps_ros.ros.output_stage import OutputStage


class HeldSend:
    """A send that holds each item until `release` is set, as a slow subscriber would."""

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()
        self.sent = []

    def __call__(self, item):
        self.started.set()
        self.release.wait(10.0)
        self.sent.append(item)


def test_items_are_sent_in_order_and_drain_waits_for_them():
    sent = []
    stage = OutputStage(lambda item: (time.sleep(0.01), sent.append(item)), lambda exc: None)
    for item in range(5):
        assert stage.put(item)
    assert stage.drain(10.0)
    assert sent == list(range(5))
    stage.close(wait=True)


def test_put_waits_while_one_item_is_already_waiting():
    send = HeldSend()
    release, started, sent = send.release, send.started, send.sent
    stage = OutputStage(send, lambda exc: None)
    stage.put("first")
    assert started.wait(10.0)
    stage.put("second")  # waits beside the one being sent
    third = threading.Thread(target=stage.put, args=("third",))
    third.start()
    third.join(0.5)
    assert third.is_alive()
    assert not stage.drain(0.1)
    release.set()
    third.join(10.0)
    assert stage.drain(10.0) and sent == ["first", "second", "third"]
    stage.close(wait=True)


def test_a_failure_is_reported_and_the_thread_goes_on():
    failures, sent = [], []

    def send(item):
        if item == "bad":
            raise RuntimeError("publisher gone")
        sent.append(item)

    stage = OutputStage(send, failures.append)
    stage.put("bad")
    stage.put("good")
    assert stage.drain(10.0)
    assert sent == ["good"] and [str(exc) for exc in failures] == ["publisher gone"]
    stage.close(wait=True)


def test_close_drops_the_waiting_item_unblocks_put_and_ends_the_thread():
    send = HeldSend()
    release, started, sent = send.release, send.started, send.sent
    stage = OutputStage(send, lambda exc: None)
    stage.put("sending")
    assert started.wait(10.0)
    stage.put("waiting")
    results = []
    blocked = threading.Thread(target=lambda: results.append(stage.put("blocked")))
    blocked.start()
    stage.close()
    blocked.join(10.0)
    assert results == [False]
    release.set()
    stage.close(wait=True)
    assert sent == ["sending"]
    assert not stage._thread.is_alive()
    assert stage.put("late") is False
