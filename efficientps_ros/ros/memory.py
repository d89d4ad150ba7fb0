"""Keep freed frame buffers in the process instead of handing them back to the kernel.

Every frame allocates and frees tens of megabytes: message data, label maps,
the overlay. glibc's adaptive thresholds often return that memory to the
kernel after one frame and fault it in again for the next, which at 1024x2048
costs several milliseconds per frame and makes the node's overhead jump from
run to run. Fixed thresholds keep up to TRIM_THRESHOLD bytes of freed memory
for reuse; memory stays bounded, since frames are not queued.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 << 20
# glibc's largest allowed value: blocks below it come from the reusable heap.
MMAP_THRESHOLD = 32 << 20


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds; False where that is not possible or the user chose them."""
    if any(name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
