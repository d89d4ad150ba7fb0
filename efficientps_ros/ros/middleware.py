"""The Fast DDS transport setting that every ROS process of this project runs with.

Plain `LARGE_DATA` carries 6 MB images (plain UDP does not), but its TCP
channels drop what is sent before their logical ports are negotiated, and on
a busy machine that includes discovery: a node joining a running graph was
sometimes never seen, or one of its publishers was missing for good (5 of 9
runs of test/ros/test_node.py). Waiting up to 50 ms for the negotiation
removed it (0 of 6). Peers with plain `LARGE_DATA` still talk to these ones.
"""
from __future__ import annotations

FASTDDS_BUILTIN_TRANSPORTS = "LARGE_DATA?tcp_negotiation_timeout=50"
