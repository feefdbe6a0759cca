"""Stacked per-allocation polygons (memory_viz layout) on a synthetic training snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memprof.load import load
from memprof.meta import read_meta
from memprof.replay import replay
from memprof.testing import training_snapshot, write_snapshot
from memprof.views import build_model, stacked_polygons


def _model(tmp_path: Path):
    p = write_snapshot(tmp_path / "s.pickle", *training_snapshot(iterations=2, layers=4, hidden_mb=2, seed=5))
    snap = load(p, use_cache=False)
    return build_model(snap, replay(snap, 0), read_meta(p))


def test_stack_sum_spans_the_view_and_never_exceeds_allocated(tmp_path: Path) -> None:
    # GIVEN a model WHEN its 10 largest allocations are stacked over the whole trace
    m = _model(tmp_path)
    polys, tx, ty = stacked_polygons(m, k=10)
    # THEN there are 10 bands, the summed height reaches the right edge, and it stays under allocated memory
    assert len(polys) == 10
    assert tx[0] == 0.0 and tx[-1] == m.end_ms
    alloc_at = m.allocated[np.searchsorted(m.t_alloc, tx, side="right") - 1]
    assert np.all(ty <= alloc_at)


def test_each_band_is_as_tall_as_its_allocation(tmp_path: Path) -> None:
    m = _model(tmp_path)
    polys, _, _ = stacked_polygons(m, 0.0, m.end_ms / 2, k=15)
    for p in polys:
        n = (len(p.xs) - 1) // 2  # top edge forward, bottom edge back, closing point
        heights = p.ys[:n] - p.ys[n:2 * n][::-1]
        assert np.all(heights == p.size)
        assert p.ys.min() >= 0
