"""Stacked per-allocation polygons (memory_viz layout) on a synthetic training snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memprof.analysis import analyze
from memprof.snapshot.meta import read_meta
from memprof.testing import training_snapshot, write_snapshot

from memprof.present.views import CATEGORIES, build_model, stacked_polygons


def _model(tmp_path: Path):
    p = write_snapshot(tmp_path / "s.pickle", *training_snapshot(iterations=2, layers=4, hidden_mb=2, seed=5))
    an = analyze(p, device=0, meta=read_meta(p), use_cache=False)
    return build_model(an.snap, an.rep, an.meta, analysis=an)


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


def test_category_bands_equal_a_plain_sum_over_the_allocations(tmp_path: Path) -> None:
    """The bands (precomputed per category, two binary searches a point) against a row-by-row sum."""
    from memprof.present.views import category_bands

    m = _model(tmp_path)
    a = m.allocs
    t0 = a["t0_ms"].tolist()
    t1 = [float("inf") if e else f for e, f in zip(a["alive_at_end"].tolist(), a["t1_ms"].tolist())]
    size, cat = a["size"].tolist(), a["category"].astype(str).tolist()
    for lo, hi, k in [(0.0, m.end_ms, 5), (m.end_ms * 0.2, m.end_ms * 0.45, 3), (m.end_ms * 0.7, m.end_ms, 0)]:
        x = np.linspace(lo, hi, 37)
        drawn = np.argsort(-a["size"].to_numpy(), kind="stable")[:k]
        bands = category_bands(m, x, drawn)
        below = [sum(size[r] for r in drawn if t0[r] <= xi < t1[r]) for xi in x]
        assert list(bands[0].y0) == below if bands else True
        for b in bands:
            rows = [r for r in range(len(size)) if cat[r] == b.category and r not in set(drawn.tolist()) and size[r] > 0
                    and t0[r] <= hi and t1[r] > lo]
            assert b.count == len(rows)
            assert list(b.y1 - b.y0) == [sum(size[r] for r in rows if t0[r] <= xi < t1[r]) for xi in x]
        # stacked, the bands and the drawn allocations hold every allocation alive at each point
        top = bands[-1].y1 if bands else np.array(below)
        assert list(top) == [sum(s for s, a0, a1 in zip(size, t0, t1) if a0 <= xi < a1) for xi in x]
        assert [b.category for b in bands] == sorted((b.category for b in bands), key=CATEGORIES.index)


def test_category_bands_name_what_is_largest_in_the_view(tmp_path: Path) -> None:
    from memprof.present.views import category_bands

    m = _model(tmp_path)
    a = m.allocs
    lo, hi = m.end_ms * 0.3, m.end_ms * 0.6
    x = np.linspace(lo, hi, 11)
    for b in category_bands(m, x, np.zeros(0, dtype=np.int64)):
        vis = a[(a["category"].astype(str) == b.category) & (a["size"] > 0) & (a["t0_ms"] <= hi)
                & ((a["t1_ms"] > lo) | a["alive_at_end"])]
        label = [n or mo or s for n, mo, s in zip(vis["name"].astype(str), vis["module"].astype(str), vis["site"].astype(str))]
        by = vis.groupby(np.array(label, dtype=object))["size"].sum()
        assert by[b.top_names[0]] == by.max()  # (ties: any of the largest)
        assert set(b.top_names) <= set(by.index)
