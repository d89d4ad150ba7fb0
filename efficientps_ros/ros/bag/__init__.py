"""Recorded drives: rosbag2 (MCAP, sqlite3) and ROS 1 bags, on the rosbags library.

    source.py         open any bag, its topics, and its messages as CDR bytes
    sink.py           write a rosbag2 that stays readable whatever happens
    message_types.py  ROS type names -> rclpy classes and bag definitions
    play.py           replay a bag over DDS with its recorded timing
    record.py         record topics until SIGINT or a duration
    offline.py        the node's pipeline over every image of a bag
    synth.py          a synthetic drive written as a bag
"""
from .source import BagError, CorruptMessage

__all__ = ["BagError", "CorruptMessage"]
