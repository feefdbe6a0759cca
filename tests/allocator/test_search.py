"""The one bisection (memprof.allocator.search) against a linear scan."""

from __future__ import annotations

import pytest

from memprof.allocator.search import bisect


@pytest.mark.parametrize("step", [1, 3, 64])
def test_aligned_bisection_finds_the_boundary_a_scan_finds(step: int) -> None:
    # GIVEN every limit t between lo and hi (a size fits while it is <= t)
    lo, hi = step, 40 * step + 7
    for t in range(lo, hi):
        calls: list[int] = []

        def fits(v: int) -> bool:
            calls.append(v)
            return v <= t

        # WHEN bisected from lo (fits) to hi (fails)
        good, bad = bisect(lo, hi, fits, step=step)
        # THEN it brackets the limit within one step, every trial inside the range and aligned
        assert fits(good) and not fits(bad) and 0 < bad - good <= step, (t, good, bad)
        assert all(lo < v < hi and v % step == 0 for v in calls[:-2]), calls
        # and the multiple-of-step answer is the largest one a scan finds
        scan = max(v for v in range(lo, hi) if v % step == 0 and v <= t)
        assert good == scan or (good > scan and good <= t)


def test_exact_bisection_of_bytes_from_the_large_side() -> None:
    # GIVEN a device size that works above a threshold (memory: more fits)
    for need in (1, 2, 1000, 12345, 2**21 + 1):
        good, bad = bisect(2**22, 0, lambda m: m >= need, step=1, align=False)
        # THEN the least size that works is found exactly
        assert (good, bad) == (need, need - 1)
