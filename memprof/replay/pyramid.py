"""A min/max pyramid over a step curve, so a zoom reads a slice instead of scanning millions of points.

Level ``k`` splits the curve into blocks of ``BASE * FACTOR**k`` points and keeps, per block, the
index of its minimum, of its maximum and of its last point. To draw ``[lo, hi)`` at ``n`` buckets,
:func:`candidates` takes the coarsest level that still has several blocks per bucket, and returns
those indices for the blocks inside the range plus every raw point of the partial blocks at its
two ends. :func:`memprof.replay.downsample.minmax_step` then reduces only these candidates. Each block's
extremes are among them, so the envelope of the visible range (its highest and lowest value, and
where they are) is exactly that of the full curve: a peak is never lost, whatever the zoom.
Built once per curve in O(n) (the first level is one reshape and argmax; each next level reduces
the previous one).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

BASE = 64
FACTOR = 8
#: Candidates kept per bucket at least (blocks per bucket); more is finer, fewer is faster.
PER_BUCKET = 4


@dataclass
class Level:
    size: int  # points per block
    imin: np.ndarray  # global index of each full block's minimum (first one)
    imax: np.ndarray  # and of its maximum


def _first_level(y: np.ndarray, s: int) -> Level:
    m = len(y) // s
    blocks = y[: m * s].reshape(m, s)
    off = np.arange(m, dtype=np.int64) * s
    return Level(s, off + blocks.argmin(axis=1), off + blocks.argmax(axis=1))


def _next_level(y: np.ndarray, prev: Level) -> Level:
    m = len(prev.imin) // FACTOR
    imin = prev.imin[: m * FACTOR].reshape(m, FACTOR)
    imax = prev.imax[: m * FACTOR].reshape(m, FACTOR)
    r = np.arange(m)
    return Level(prev.size * FACTOR, imin[r, y[imin].argmin(axis=1)], imax[r, y[imax].argmax(axis=1)])


def build(y: np.ndarray) -> list[Level]:
    """The levels for curve ``y`` (finest first); empty when the curve is too short to need them."""
    y = np.asarray(y)
    if len(y) < BASE * 4:
        return []
    levels = [_first_level(y, BASE)]
    while len(levels[-1].imin) >= FACTOR * 4:
        levels.append(_next_level(y, levels[-1]))
    return levels


def candidates(levels: list[Level], lo: int, hi: int, n_buckets: int) -> np.ndarray | None:
    """Sorted unique indices in ``[lo, hi)`` holding every block extreme of the chosen level and all
    raw points of the partial end blocks; None when no level is coarse enough to help."""
    want = max(int(n_buckets) * PER_BUCKET, 1)
    chosen = None
    for lev in levels:
        if (hi - lo) // lev.size >= want:
            chosen = lev
        else:
            break
    if chosen is None:
        return None
    s = chosen.size
    b0 = -(-lo // s)  # first block wholly inside
    b1 = min(hi // s, len(chosen.imin))  # one past the last block wholly inside
    if b1 <= b0:
        return None
    last = (np.arange(b0, b1, dtype=np.int64) + 1) * s - 1
    parts = [np.array([lo, hi - 1], dtype=np.int64), np.arange(lo, b0 * s, dtype=np.int64), chosen.imin[b0:b1],
             chosen.imax[b0:b1], last, np.arange(b1 * s, hi, dtype=np.int64)]
    return np.unique(np.concatenate(parts))


_CACHE: dict[int, tuple[weakref.ref[np.ndarray], list[Level]]] = {}
_LOCK = threading.Lock()


def for_curve(y: np.ndarray) -> list[Level]:
    """The pyramid of ``y``, built on first use and kept while ``y`` lives (keyed by identity)."""
    k = id(y)
    with _LOCK:
        hit = _CACHE.get(k)
        if hit is not None and hit[0]() is y:
            return hit[1]
    levels = build(y)

    def evict(_r: object, k: int = k) -> None:
        _CACHE.pop(k, None)

    try:
        ref = weakref.ref(y, evict)
    except TypeError:  # not weak-referenceable (a view of something else is): no caching
        return levels
    with _LOCK:
        _CACHE[k] = (ref, levels)
    return levels
