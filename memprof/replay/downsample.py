"""Min/max per pixel bucket for step-shaped curves (memory over time), plotly-resampler style.

A memory curve is a step function: value ``y[i]`` holds from ``x[i]`` until ``x[i+1]``. To
draw it at a given width we keep, per bucket of the visible x-range, the points where the
curve reaches its minimum and its maximum and the last point (so the step into the next
bucket is right), plus the value carried into the range from before it. Peaks are therefore
never lost, whatever the zoom. Pure numpy, no plotting.
"""

from __future__ import annotations

import numpy as np

#: Buckets per view; about the width of a plot in pixels.
DEFAULT_BUCKETS = 1000


def visible_slice(x: np.ndarray, x0: float | None, x1: float | None) -> tuple[int, int]:
    """Index range [lo, hi) of the step points needed to draw ``x0..x1``: the point in force at
    ``x0`` and one point past ``x1``."""
    n = len(x)
    lo = 0 if x0 is None else max(int(np.searchsorted(x, x0, side="right")) - 1, 0)
    hi = n if x1 is None else min(int(np.searchsorted(x, x1, side="right")) + 1, n)
    return lo, max(hi, lo)


def minmax_step(
    x: np.ndarray,
    y: np.ndarray,
    x0: float | None = None,
    x1: float | None = None,
    n_buckets: int = DEFAULT_BUCKETS,
    levels: list | None = None,
) -> np.ndarray:
    """Indices into ``x``/``y`` (sorted, unique) that draw the step curve over ``[x0, x1]``.

    ``x`` must be sorted ascending. At most ``3 * n_buckets + 2`` indices are returned; when
    the visible part already has fewer points than that, all of them are. ``levels``: the curve's
    :func:`memprof.replay.pyramid.build` output, to read a slice of precomputed extremes instead of scanning.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    lo, hi = visible_slice(x, x0, x1)
    if hi - lo <= 3 * n_buckets + 2:
        return np.arange(lo, hi, dtype=np.int64)
    if levels:  # a min/max pyramid (memprof.pyramid): reduce only its candidates, not every point
        from memprof.replay.pyramid import candidates

        cand = candidates(levels, lo, hi, n_buckets)
        if cand is not None:
            return cand[minmax_step(x[cand], y[cand], x0, x1, n_buckets)]
    xs = x[lo:hi].astype(np.float64)
    ys = y[lo:hi]
    a = xs[0] if x0 is None else max(float(x0), xs[0])
    b = xs[-1] if x1 is None else min(float(x1), xs[-1])
    width = (b - a) or 1.0
    bucket = np.clip(((xs - a) / width * n_buckets).astype(np.int64), 0, n_buckets - 1)
    # Bucket boundaries (x is sorted, so buckets are contiguous runs).
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(xs)] - 1
    bmax = np.maximum.reduceat(ys, starts)
    bmin = np.minimum.reduceat(ys, starts)
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(xs)]))
    pos = np.arange(len(xs))
    big = len(xs)
    arg_max = np.minimum.reduceat(np.where(ys == bmax[run], pos, big), starts)
    arg_min = np.minimum.reduceat(np.where(ys == bmin[run], pos, big), starts)
    keep = np.unique(np.concatenate([[0, len(xs) - 1], ends, arg_max, arg_min]))
    return keep + lo


def step_envelope_ok(x: np.ndarray, y: np.ndarray, idx: np.ndarray, x0: float, x1: float) -> bool:
    """True when the reduced curve has the same max and min over [x0, x1] as the full one (for tests)."""
    lo, hi = visible_slice(x, x0, x1)
    full = y[lo:hi]
    part = y[idx]
    return bool(full.max() == part.max() and full.min() == part.min())
