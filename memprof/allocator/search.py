"""One bisection for every "where does it stop fitting" question: the largest batch or sequence
length (``memprof predict --find-max-*``, the one-process trials, the GPU benchmarks) and the
least device memory a request stream runs in (``whatif --min-device-memory``)."""

from __future__ import annotations

from typing import Callable


def bisect(good: int, bad: int, ok: Callable[[int], bool], step: int = 1, align: bool = True) -> tuple[int, int]:
    """The boundary between ``good`` (``ok``) and ``bad`` (not ``ok``), on either side of it.

    Returns ``(good, bad)`` at most ``step`` apart: the last value found ``ok`` and the first found
    not. ``align``: midpoints are multiples of ``step`` (batch sizes, sequence lengths), kept strictly
    between the two ends; otherwise exact midpoints (bytes, where ``step`` is only the precision).
    ``ok`` is called only on midpoints: the caller has checked both ends.
    """
    while abs(bad - good) > step:
        mid = (good + bad) // 2
        if align:
            lo, hi = min(good, bad), max(good, bad)
            mid = mid // step * step
            if mid <= lo:
                mid = lo + step
            if mid >= hi:
                break
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, bad
