"""`efficientps bag play BAG`: a bag's messages over DDS, with the recorded timing.

Messages go out as the bag holds them, CDR bytes published without
deserialising (ROS 1 messages converted to CDR first). With `clock`, /clock
follows the bag's time, so that nodes with use_sim_time run on bag time.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock

from .message_types import COMPRESSED_IMAGE, IMAGE, message_class
from .source import BagError, BagSource, CorruptMessage

# Reliable reaches best-effort and reliable subscribers alike.
PLAY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Topics recorded latched (label_info, tf_static) reach late subscribers too.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# /clock is published at least this often while waiting for the next message.
CLOCK_HZ = 50.0
# Once a publisher sees a subscriber, the subscriber may not have seen it yet,
# and would drop what comes before it has.
MATCH_SETTLE_S = 1.5
# How long each publisher may wait at the end for its reliable subscribers to acknowledge.
ACK_TIMEOUT_S = 2.0
# Bag times are int64 nanoseconds: a window that reaches past the last of them has no end.
LAST_NS = 2**63 - 1


@dataclass(frozen=True)
class PlayOptions:
    rate: float = 1.0
    topics: tuple[str, ...] = ()  # empty: every topic whose type is installed
    loop: bool = False
    clock: bool = False
    start: float = 0.0  # seconds into the bag
    duration: float | None = None  # seconds of bag time; None: to the end
    wait_for_subscribers: float = 0.0  # seconds to wait for `subscribers` on every image topic
    subscribers: int = 1


def time_window(bag_start: int, start: float, duration: float | None) -> tuple[int, int | None]:
    """[begin, stop) in bag time (ns) for `start` seconds into the bag and `duration` seconds on."""
    begin = bag_start + round(start * 1e9)
    if duration is None or duration * 1e9 >= LAST_NS - begin:
        return begin, None
    return begin, begin + round(duration * 1e9)


def due_after(timestamp: int, begin: int, rate: float) -> float:
    """Seconds after playback began at which a message of bag time `timestamp` goes out."""
    return (timestamp - begin) / 1e9 / rate


def check_options(options: PlayOptions) -> None:
    check_number("--rate", options.rate, above=0)
    check_number("--start", options.start, at_least=0)
    if options.duration is not None:
        check_number("--duration", options.duration, above=0)
    check_number("--wait-for-subscribers", options.wait_for_subscribers, at_least=0)
    if options.subscribers < 1:
        raise ValueError(f"--subscribers must be 1 or more (got {options.subscribers})")


def check_number(option: str, value: float, above: float | None = None, at_least: float | None = None) -> None:
    """ValueError naming `option` unless `value` is finite and above `above` (or at least `at_least`).

    NaN fails every comparison, so that a check like `value < 0` lets it
    through; infinity overflows bag times, or never ends a wait.
    """
    if above is not None and not (math.isfinite(value) and value > above):
        raise ValueError(f"{option} must be a finite number above {above:g} (got {value})")
    if at_least is not None and not (math.isfinite(value) and value >= at_least):
        raise ValueError(f"{option} must be a finite number, {at_least:g} or more (got {value})")


def playable_topics(source: BagSource, wanted: tuple[str, ...], report: Callable[[str], None]) -> dict[str, type]:
    """Topic -> rclpy class of each topic to play; topics of types not installed here, or whose
    messages cannot be read, are reported and left out."""
    for topic in wanted:
        if topic not in source.topics:
            raise BagError(f"bag {source.path}, topic {topic}: not in the bag")
    playable = {}
    for topic in wanted or sorted(source.topics):
        msgtype = source.topics[topic]
        cls = message_class(msgtype)
        if topic in source.unreadable:
            report(f"bag {source.path}, topic {topic}: {source.unreadable[topic]}; not played")
        elif cls is None:
            report(f"bag {source.path}, topic {topic}: type {msgtype} is not installed here; not played")
        else:
            playable[topic] = cls
    if not playable:
        raise BagError(f"bag {source.path}: nothing to play")
    return playable


def check_window(source: BagSource, options: PlayOptions) -> None:
    """Refuse a --start that lies past the bag's last message: it would play nothing (and loop on nothing)."""
    length = (source.end_time - source.start_time) / 1e9
    if options.start > length:
        raise BagError(f"bag {source.path}: --start {options.start:g} s is past its end ({length:.3f} s long)")


def play_bag(path: str | Path, options: PlayOptions = PlayOptions(),
             report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    """Play the bag; returns how many messages went out. Ctrl-C ends it cleanly."""
    check_options(options)
    with BagSource(path) as source:
        topics = playable_topics(source, options.topics, report)
        check_window(source, options)
        # Ctrl-C stays a KeyboardInterrupt: nothing is published on a context rclpy already shut down.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("efficientps_bag_play")
        sent = 0
        try:
            _interruptible()
            publishers = {topic: node.create_publisher(cls, topic, LATCHED_QOS if source.latched(topic) else PLAY_QOS)
                          for topic, cls in topics.items()}
            clock = node.create_publisher(Clock, "/clock", CLOCK_QOS) if options.clock else None
            _wait_for_subscribers(source, publishers, options, report)
            while True:
                sent_now = _play_once(source, publishers, clock, options, report)
                sent += sent_now
                if not options.loop:
                    break
                if not sent_now:
                    # Every pass would be as empty: looping would only spin.
                    raise BagError(f"bag {source.path}: no message of {', '.join(sorted(topics))} "
                                   "in the window played; not looping")
            # The last messages may still be on their way; leaving now would lose them.
            for publisher in (*publishers.values(), *([clock] if clock else [])):
                publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        except KeyboardInterrupt:
            pass
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
        report(f"played {sent} messages on {len(topics)} topics from {source.path}")
        return sent


def _interruptible() -> None:
    """Let SIGINT raise KeyboardInterrupt even where it came in ignored.

    A shell starts background jobs of a script with SIGINT ignored, and
    Python then leaves it so: `kill -INT` would not stop such a player.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait_for_subscribers(source: BagSource, publishers: dict, options: PlayOptions, report) -> None:
    timeout = options.wait_for_subscribers
    if timeout <= 0:
        return
    images = [p for t, p in publishers.items() if source.topics[t] in (IMAGE, COMPRESSED_IMAGE)]
    deadline = time.monotonic() + timeout
    while any(p.get_subscription_count() < options.subscribers for p in images or publishers.values()):
        if time.monotonic() > deadline:
            report(f"fewer than {options.subscribers} subscriber(s) on some image topics after {timeout:.0f} s; "
                   "playing anyway")
            return
        time.sleep(0.05)
    time.sleep(MATCH_SETTLE_S)


def _play_once(source: BagSource, publishers: dict, clock, options: PlayOptions, report) -> int:
    begin, stop = time_window(source.start_time, options.start, options.duration)
    started = time.monotonic()
    sent = 0
    for message in source.messages(set(publishers), start=begin, stop=stop):
        try:
            data = source.cdr(message)
        except CorruptMessage as exc:
            report(f"{exc}; not played")
            continue
        _wait_until(started + due_after(message.timestamp, begin, options.rate), clock, begin, started, options.rate)
        if clock is not None:
            clock.publish(_clock(message.timestamp))
        publishers[message.topic].publish(data)
        sent += 1
    if options.loop:
        # A pass lasts as long as its stretch of the bag, however few messages it held.
        end = source.end_time if stop is None else min(stop, source.end_time)
        _wait_until(started + due_after(end, begin, options.rate), clock, begin, started, options.rate)
    return sent


def _wait_until(due: float, clock, begin: int, started: float, rate: float) -> None:
    """Sleep until `due` (monotonic), keeping /clock moving with the bag's time meanwhile."""
    while (left := due - time.monotonic()) > 0:
        time.sleep(min(left, 1.0 / CLOCK_HZ))
        if clock is not None:
            now = min(time.monotonic(), due)
            clock.publish(_clock(begin + round((now - started) * rate * 1e9)))


def _clock(timestamp: int) -> Clock:
    message = Clock()
    message.clock.sec, message.clock.nanosec = divmod(timestamp, 10**9)
    return message
