"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

Inference on a CPU allocates and frees the same few buffers over and over: MTCNN's feature maps,
the network's activations, the export's text. glibc's ``malloc`` serves blocks of 128 KiB and
more with ``mmap`` and returns them with ``munmap`` on ``free`` (and trims the heap's free top),
so every call touches fresh pages again, and each first touch is a page fault: ~2 us per 4 KiB
page on the machines measured, 1,100-1,500 faults (~3 ms) per photo in MTCNN alone, once warm.

:func:`retain_freed_memory` raises glibc's mmap threshold to 32 MiB and its trim threshold to
512 MiB, so freed blocks stay in the heap and are reused without faults. The process then holds
its peak working set until it exits, which is what a command-line run or a video loop wants.
The library does not call it on import; ``facerecon predict`` does, before torch loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: Blocks below this many bytes come from the heap (glibc's largest dynamic threshold).
MMAP_THRESHOLD = 32 << 20
#: The heap's free top is returned to the OS only above this many bytes.
TRIM_THRESHOLD = 512 << 20

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Environment variables with which a user already chose glibc's malloc settings.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied = False


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process.

    Does nothing, and returns False, where the C library is not glibc (macOS, Windows, musl), or
    where the user set glibc's malloc settings (``MALLOC_*_`` variables, or ``glibc.malloc``
    tunables in ``GLIBC_TUNABLES``). Returns True when the thresholds are (already) set.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has mallopt with other meanings
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either one fixes both (glibc stops adjusting them)
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok
