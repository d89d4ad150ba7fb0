"""Which image sizes arrive over a QoS: a publisher here, a subscriber in a process of its own.

python -m efficientps_ros.ros.qos_probe --sizes 480x640 1024x2048 --rate 30 --seconds 3

For each size and each reliability it prints frames sent, received, and lost
as the subscriber's middleware reports them. Run it where the node would run,
with the same FASTDDS_BUILTIN_TRANSPORTS (and, here, inside the tests' private
network namespace): the numbers are the transport's, not the node's.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

TOPIC = "/qos_probe/image"
RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
# How long the subscriber keeps listening after the last frame was sent.
DRAIN_S = 2.0
# How long either side waits for the other before the probe gives up with a message.
MATCH_TIMEOUT_S = 30.0
# The subscriber's replies start with this: the middleware may write lines of its own to the same stdout.
TAG = "qos_probe:"
LISTENER_ARGV = (sys.executable, "-m", "efficientps_ros.ros.qos_probe", "--listen")


def probe_qos(reliability: str) -> QoSProfile:
    """Keep last 1, as the node subscribes by default."""
    return QoSProfile(depth=1, reliability=RELIABILITIES[reliability], history=HistoryPolicy.KEEP_LAST)


def probe_topic(index: int, height: int, width: int, reliability: str) -> str:
    """A topic per probe, so a publisher never matches the subscription of the probe before it.

    The index keeps a size given twice apart; a name token must not start with a digit.
    """
    return f"{TOPIC}/probe{index}_h{height}_w{width}_{reliability}"


def tell(text: str) -> None:
    print(TAG, text, flush=True)


def listen() -> None:
    """The subscriber side, one process for the whole run, driven by lines on stdin.

    'TOPIC RELIABILITY' subscribes and answers 'listening'; the next line says
    the last frame was sent, and is answered with 'RECEIVED LOST'; 'ready' comes
    first. Every answer starts with TAG. One process throughout, because a DDS
    participant that leaves and another that joins in its place is where TCP
    transports have failed to match again.
    """
    rclpy.init()
    node = rclpy.create_node("qos_probe_subscriber")
    tell("ready")
    while line := sys.stdin.readline():
        topic, reliability = line.split()
        counts = {"received": 0, "lost": 0}

        def lost(info, counts=counts) -> None:
            counts["lost"] += info.total_count_change

        def received(message, counts=counts) -> None:
            counts["received"] += 1

        events = SubscriptionEventCallbacks(message_lost=lost)
        subscription = node.create_subscription(Image, topic, received, probe_qos(reliability), event_callbacks=events)
        tell("listening")
        while not select.select([sys.stdin], [], [], 0)[0]:
            rclpy.spin_once(node, timeout_sec=0.05)
        if not sys.stdin.readline():
            break  # the publisher is gone: nobody to count for
        end = time.monotonic() + DRAIN_S
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        tell(f"{counts['received']} {counts['lost']}")
        node.destroy_subscription(subscription)
    node.destroy_node()
    rclpy.shutdown()


class Listener:
    """The subscriber process, seen from the publisher: one request, one tagged line back, within a deadline.

    A thread reads its stdout into a queue, so a wait for a reply is bounded however
    the lines arrive; lines without TAG are the middleware's, and skipped.
    """

    def __init__(self, argv: Sequence[str] | None = None):
        self.process = subprocess.Popen(
            list(argv or LISTENER_ARGV), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, errors="replace",
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.reply("start", "ready", MATCH_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read(self) -> None:
        with self.process.stdout as lines:
            for line in lines:
                # The middleware may have left half a line of its own before the reply.
                _, tag, reply = line.rpartition(TAG)
                if tag:
                    self.replies.put(reply.strip())
        self.replies.put(None)

    def ask(self, line: str, answer: str, timeout: float) -> tuple[str, ...]:
        """Send `line`; the groups of the reply, which must match the regular expression `answer`."""
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self.exited(f"before {line!r}") from None
        return self.reply(line, answer, timeout)

    def reply(self, what: str, answer: str, timeout: float) -> tuple[str, ...]:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the probe's subscriber did not answer {what!r} within {timeout:.0f} s") from None
        if reply is None:
            raise self.exited(f"at {what!r}")
        match = re.fullmatch(answer, reply)
        if match is None:
            raise RuntimeError(f"the probe's subscriber answered {reply!r} to {what!r}")
        return match.groups()

    def exited(self, when: str) -> RuntimeError:
        return RuntimeError(f"the probe's subscriber exited (status {self.process.wait()}) {when}")

    def close(self, timeout: float = 10.0) -> None:
        """End of input asks the subscriber to exit; a kill after `timeout` s makes sure. Never raises."""
        with contextlib.suppress(BrokenPipeError):  # it may have exited already
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout)


def send(node, topic: str, height: int, width: int, rate: float, count: int, reliability: str) -> None:
    publisher = node.create_publisher(Image, topic, probe_qos(reliability))
    try:
        deadline = time.monotonic() + MATCH_TIMEOUT_S
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no subscriber matched {topic} ({reliability}) within {MATCH_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        time.sleep(1.0)  # discovery settles both ways before the first frame counts
        message = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=bytes(height * width * 3))
        start = time.monotonic()
        for index in range(count):
            publisher.publish(message)
            time.sleep(max(0.0, start + (index + 1) / rate - time.monotonic()))
    finally:
        node.destroy_publisher(publisher)


def probe(node, listener: Listener, index: int, height: int, width: int, rate: float, seconds: float,
          reliability: str) -> tuple[int, int, int]:
    """(sent, received, lost) for one size and reliability, the run's probe number `index`."""
    count = round(rate * seconds)
    topic = probe_topic(index, height, width, reliability)
    listener.ask(f"{topic} {reliability}", "listening", MATCH_TIMEOUT_S)
    send(node, topic, height, width, rate, count, reliability)
    received, lost = listener.ask("sent", r"(\d+) (\d+)", DRAIN_S + MATCH_TIMEOUT_S)
    return count, int(received), int(lost)


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(480, 640), (1080, 1920), (3000, 4000)],
                        help="HxW rgb8 frames")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each size is sent")
    parser.add_argument("--reliability", nargs="+", choices=sorted(RELIABILITIES), default=sorted(RELIABILITIES))
    parser.add_argument("--listen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.listen:
        listen()
        return 0
    rclpy.init()
    node = rclpy.create_node("qos_probe_publisher")
    try:
        with Listener() as listener:
            print(f"{'size':>10} {'MB':>6} {'rate':>5} {'reliability':>12} {'sent':>5} {'received':>8} {'lost':>5}")
            for index, ((height, width), reliability) in enumerate(itertools.product(args.sizes, args.reliability)):
                sent, received, lost = probe(node, listener, index, height, width, args.rate, args.seconds, reliability)
                megabytes = height * width * 3 / 1e6
                print(f"{f'{height}x{width}':>10} {megabytes:6.1f} {args.rate:5.0f} {reliability:>12} {sent:5d} "
                      f"{received:8d} {lost:5d}", flush=True)
    except RuntimeError as error:
        print(f"qos_probe: {error}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
