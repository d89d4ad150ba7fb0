"""Publishing a serialised message straight from its buffer, through rcl.

rclpy's `Publisher.publish(bytes)` first copies the bytes into a C++ string
and keeps the GIL while the middleware takes them. For the 20 MB of images
a 1024x2048 frame makes, that copy costs a millisecond or two, and the other
threads of the node (the inference thread) wait on the GIL: a Python thread
counting beside 20 MB publishes got 2 to 2.5 times more done beside this
path than beside rclpy's. Calling `rcl_publish_serialized_message` through
ctypes hands rcl a pointer into the caller's buffer, and ctypes releases the
GIL for the call.

The rcl used is the one rclpy loaded (found among the process's mapped
files), so the publisher's handle is that library's own. Where it cannot be
found, rclpy's own path publishes instead.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Any, Optional

import numpy as np

RCL_RET_OK = 0
# RCUTILS_ERROR_MESSAGE_MAX_LENGTH: rcutils_error_string_t is a char array of this size.
_ERROR_LENGTH = 1024


class _Uint8Array(ctypes.Structure):
    """rcutils_uint8_array_t (rcl_serialized_message_t). Publishing only reads
    the buffer and its length; the allocator is for rcl's own resizing."""

    _fields_ = [
        ("buffer", ctypes.c_void_p),
        ("buffer_length", ctypes.c_size_t),
        ("buffer_capacity", ctypes.c_size_t),
        ("allocator", ctypes.c_void_p * 5),  # rcutils_allocator_t: four functions and a state
    ]


class _ErrorString(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char * _ERROR_LENGTH)]


class _Rcl:
    """The two rcl/rcutils calls this needs, with their C signatures."""

    def __init__(self, rcl: ctypes.CDLL, rcutils: ctypes.CDLL):
        self.publish = rcl.rcl_publish_serialized_message
        self.publish.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Uint8Array), ctypes.c_void_p]
        self.publish.restype = ctypes.c_int
        self.error = rcutils.rcutils_get_error_string
        self.error.argtypes = []
        self.error.restype = _ErrorString
        self.reset = rcutils.rcutils_reset_error
        self.reset.argtypes = []
        self.reset.restype = None


def loaded_library(prefix: str, maps: str = "/proc/self/maps") -> Optional[str]:
    """The path of a shared library this process has mapped whose file name starts with `prefix`."""
    try:
        with open(maps) as lines:
            for line in lines:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith(prefix):
                    return fields[5].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _rcl() -> Optional[_Rcl]:
    import rclpy._rclpy_pybind11  # noqa: F401  (loads rcl and rcutils)

    paths = loaded_library("librcl.so"), loaded_library("librcutils.so")
    if None in paths:
        return None
    try:
        return _Rcl(*(ctypes.CDLL(path) for path in paths))
    except (OSError, AttributeError):
        return None


def direct_publishing() -> bool:
    """Whether serialised messages go to rcl from their own buffer (else through rclpy)."""
    return _rcl() is not None


def publish_serialized(publisher: Any, data: bytes) -> None:
    """Publish `data`, a serialised message of the publisher's type, with no copy on the way to rcl.

    `publisher` is an rclpy Publisher. Raises RuntimeError with rcl's message
    when rcl refuses, as rclpy would raise RCLError.
    """
    rcl = _rcl()
    if rcl is None:
        publisher.publish(data)
        return
    view = np.frombuffer(data, np.uint8)
    message = _Uint8Array(view.ctypes.data if view.size else None, view.size, view.size)
    with publisher.handle:
        code = rcl.publish(publisher.handle.pointer, ctypes.byref(message), None)
    if code != RCL_RET_OK:
        text = rcl.error().text.decode(errors="replace")
        rcl.reset()
        raise RuntimeError(f"publishing on {publisher.topic_name} failed: {text} (rcl returned {code})")
