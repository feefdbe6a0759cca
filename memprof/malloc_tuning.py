"""Let glibc keep and reuse freed memory in processes that only analyse snapshots.

An analysis of a 10M-entry snapshot makes hundreds of temporary arrays of 40-80 MB. glibc serves
each one with a fresh ``mmap`` and returns it with ``munmap``, so every temporary page-faults
its memory in again (on a VM whose host takes freed memory back, at ~1.6 s/GiB). Serving large
blocks from the heap and not trimming it lets the next temporary reuse pages already in place:
measured on the 10M-entry benchmark snapshot, cold first paint 5.6-5.8 s -> 5.1-5.3 s (sys time
2.0 -> 1.4 s), peak RSS +2-4 % (``benchmarks/results/scale_10m.md``). Called by the analysis
commands and ``memprof serve`` only: never in a process that records (the user's training code
keeps its allocator as it is), never on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Heap instead of ``mmap`` for large blocks, no trimming (glibc only; elsewhere a no-op).
    Returns whether the settings took effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1  # large blocks from the heap (glibc still maps when the heap cannot grow)
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1  # keep freed heap memory for the next temporary
    ok &= mallopt(M_TOP_PAD, 256 << 20) == 1  # grow the heap in 256 MiB steps
    _done = ok
    return ok
