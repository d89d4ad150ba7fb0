"""Which image sizes arrive over a QoS: a publisher here, a subscriber in a process of its own.

python -m efficientps_ros.ros.qos_probe --sizes 480x640 1024x2048 --rate 30 --seconds 3

For each size and each reliability it prints frames sent, received, and lost
as the subscriber's middleware reports them. Run it where the node would run,
with the same FASTDDS_BUILTIN_TRANSPORTS (and, here, inside the tests' private
network namespace): the numbers are the transport's, not the node's.
"""
from __future__ import annotations

import argparse
import select
import subprocess
import sys
import time

import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

TOPIC = "/qos_probe/image"
RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
# How long the subscriber keeps listening after the last frame was sent.
DRAIN_S = 2.0


def probe_qos(reliability: str) -> QoSProfile:
    """Keep last 1, as the node subscribes by default."""
    return QoSProfile(depth=1, reliability=RELIABILITIES[reliability], history=HistoryPolicy.KEEP_LAST)


def listen(reliability: str) -> None:
    """The subscriber side: counts until a line on stdin says the last frame was sent, then prints 'received lost'."""
    rclpy.init()
    node = rclpy.create_node("qos_probe_subscriber")
    counts = {"received": 0, "lost": 0}

    def lost(info) -> None:
        counts["lost"] += info.total_count_change

    def received(message) -> None:
        counts["received"] += 1

    events = SubscriptionEventCallbacks(message_lost=lost)
    node.create_subscription(Image, TOPIC, received, probe_qos(reliability), event_callbacks=events)
    print("listening", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + DRAIN_S
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(counts["received"], counts["lost"], flush=True)
    node.destroy_node()
    rclpy.shutdown()


def send(node, height: int, width: int, rate: float, count: int, reliability: str) -> None:
    publisher = node.create_publisher(Image, TOPIC, probe_qos(reliability))
    while publisher.get_subscription_count() == 0:
        time.sleep(0.05)
    time.sleep(1.0)  # discovery settles both ways before the first frame counts
    message = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=bytes(height * width * 3))
    start = time.monotonic()
    for index in range(count):
        publisher.publish(message)
        time.sleep(max(0.0, start + (index + 1) / rate - time.monotonic()))
    node.destroy_publisher(publisher)


def probe(node, height: int, width: int, rate: float, seconds: float, reliability: str) -> tuple[int, int, int]:
    """(sent, received, lost) for one size and reliability."""
    count = round(rate * seconds)
    listener = subprocess.Popen(
        [sys.executable, "-m", "efficientps_ros.ros.qos_probe", "--listen", reliability],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        listener.stdout.readline()  # its subscription exists
        send(node, height, width, rate, count, reliability)
        received, lost = (int(v) for v in listener.communicate("sent\n", timeout=60)[0].split())
    finally:
        if listener.poll() is None:
            listener.kill()
    return count, received, lost


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
    parser.add_argument("--listen", choices=sorted(RELIABILITIES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.listen:
        listen(args.listen)
        return 0
    rclpy.init()
    node = rclpy.create_node("qos_probe_publisher")
    try:
        print(f"{'size':>10} {'MB':>6} {'rate':>5} {'reliability':>12} {'sent':>5} {'received':>8} {'lost':>5}")
        for height, width in args.sizes:
            for reliability in args.reliability:
                sent, received, lost = probe(node, height, width, args.rate, args.seconds, reliability)
                megabytes = height * width * 3 / 1e6
                print(f"{f'{height}x{width}':>10} {megabytes:6.1f} {args.rate:5.0f} {reliability:>12} {sent:5d} "
                      f"{received:8d} {lost:5d}", flush=True)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
