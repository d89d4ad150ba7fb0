"""Newest-frame-only slots: replacement, drop counting, waking the worker, closing."""
import threading

import pytest

from efficientps_ros.ros.frame_slots import FrameSlots, SlotCounts


def test_a_newer_frame_replaces_the_pending_one_and_counts_a_drop():
    slots = FrameSlots(["/a"])
    assert slots.put("/a", "first") is False
    assert slots.put("/a", "second") is True
    frames = slots.take(timeout=0)
    assert [f.message for f in frames] == ["second"]
    counts = slots.counts("/a")
    assert (counts.received, counts.dropped) == (2, 1)


def test_take_returns_every_camera_once_oldest_first_and_empties_the_slots():
    slots = FrameSlots(["/a", "/b"])
    slots.put("/b", "b1", received=1.0)
    slots.put("/a", "a1", received=2.0)
    frames = slots.take(timeout=0)
    assert [(f.camera, f.message) for f in frames] == [("/b", "b1"), ("/a", "a1")]
    assert slots.pending() == 0
    assert slots.take(timeout=0) == []


def test_memory_is_bounded_by_the_number_of_cameras():
    slots = FrameSlots(["/a", "/b"])
    for i in range(1000):
        slots.put("/a", i)
        slots.put("/b", i)
    assert slots.pending() == 2
    assert slots.counts("/a").dropped == 999


def test_a_frame_taken_is_not_counted_as_dropped():
    slots = FrameSlots(["/a"])
    slots.put("/a", 1)
    slots.take(timeout=0)
    slots.put("/a", 2)
    assert slots.counts("/a").dropped == 0


def test_take_waits_for_a_frame_from_another_thread():
    slots = FrameSlots(["/a"])
    timer = threading.Timer(0.05, slots.put, args=("/a", "late"))
    timer.start()
    frames = slots.take(timeout=10)
    timer.join()
    assert [f.message for f in frames] == ["late"]


def test_close_wakes_a_waiting_take_and_drops_pending_frames():
    slots = FrameSlots(["/a"])
    result = []
    waiter = threading.Thread(target=lambda: result.append(slots.take(timeout=10)))
    waiter.start()
    slots.close()
    waiter.join(5)
    assert not waiter.is_alive() and result == [[]]


def test_close_drops_the_pending_frame_and_ignores_later_ones():
    slots = FrameSlots(["/a"])
    slots.put("/a", "pending")
    slots.close()
    assert slots.pending() == 0
    assert slots.put("/a", "after close") is False
    assert slots.pending() == 0 and slots.counts("/a").received == 1
    assert slots.take(timeout=0) == []


def test_unknown_camera_is_refused_by_name():
    slots = FrameSlots(["/a"])
    with pytest.raises(KeyError, match="/nope"):
        slots.put("/nope", 1)


def test_messages_lost_in_transport_are_counted_apart_from_drops():
    slots = FrameSlots(["/a", "/b"])
    slots.put("/a", "m1")
    slots.record_lost("/a", 3)
    slots.record_lost("/a", 2)
    assert slots.counts("/a") == SlotCounts(received=1, dropped=0, lost=5)
    assert slots.counts("/b").lost == 0
