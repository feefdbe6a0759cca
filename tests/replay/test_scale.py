"""Issue 15's machinery changes no figure: the cached replay, categorical label columns, the
unvalidated timeline figure and the reserved axis."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import pytest

from memprof.snapshot import background
from memprof.present import figures
from memprof.replay import cache as replay_cache
from memprof.analysis import analyze
from memprof.snapshot.load import load
from memprof.replay.timeline import Replay, replay
from memprof.present.views import build_model

ROOT = Path(__file__).resolve().parents[2]
from corpus import CORPUS  # noqa: E402
FILES = [ROOT / "tests/data/golden/transformer_train3.pickle.gz", ROOT / "tests/data/golden/attention_naive_fwdbwd.pickle.gz"]
FILES += sorted(CORPUS.glob("Yiyi-philosophy__LLM-inference__oom_snapshot.pickle.gz"))  # an OOM, several devices' worth


def _same_replay(a: Replay, b: Replay) -> None:
    for f in fields(Replay):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_dtype=True, check_categorical=True, obj=f.name)
        elif isinstance(x, float) and np.isnan(x):
            assert np.isnan(y), f.name
        else:
            assert x == y and type(x) is type(y), f.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cached_replay_reads_back_the_same_replay(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a snapshot loaded through an empty cache
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    snap = load(path)
    dev = snap.default_device()
    fresh = replay(snap, dev)
    # WHEN replayed through the cache twice (the first writes, the second reads the Arrow files)
    first = replay_cache.cached_replay(snap, dev)
    background.flush()  # cache entries are written on another thread
    written = list((tmp_path / "cache").rglob("replay.json"))
    second = replay_cache.cached_replay(load(path), dev)
    # THEN the entry exists and both equal a plain replay, value for value and dtype for dtype
    assert len(written) == 1
    _same_replay(fresh, first)
    _same_replay(fresh, second)
    # AND a damaged entry is rebuilt, not trusted
    (written[0].parent / "timeline.arrow").write_bytes(b"garbage")
    _same_replay(fresh, replay_cache.cached_replay(load(path), dev))
    # AND analyze() from a path uses it and gives the same peak as the plain replay
    assert analyze(path).rep.peak_bytes == fresh.peak_bytes


def test_replay_cache_only_for_cached_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a snapshot loaded without the cache: nothing may be written for it
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    snap = load(FILES[0], use_cache=False)
    rep = replay_cache.cached_replay(snap, snap.default_device())
    background.flush()
    assert rep.peak_bytes == replay(snap, snap.default_device()).peak_bytes
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("replay.json"))


def _plain_sites(snap, a: pd.DataFrame) -> np.ndarray:
    """Site strings computed as the string-column code did: labels per stack, 'before recording' when unseen."""
    from memprof.snapshot.frames import BEFORE_RECORDING_LABEL

    out = snap.site_labels(a["stack_id"].to_numpy()).astype(object)
    out[(a["alloc_idx"].to_numpy() < 0) & (a["stack_id"].to_numpy() < 0)] = BEFORE_RECORDING_LABEL
    return out


@pytest.mark.parametrize("path", FILES[:2], ids=lambda p: p.name)
def test_label_columns_are_categorical_with_the_same_labels(path: Path) -> None:
    an = analyze(path, use_cache=False)
    a = an.allocations
    snap = an.snap
    # the categorical site column holds exactly the strings site_labels gives, row by row
    plain = _plain_sites(snap, a)
    assert isinstance(a["site"].dtype, pd.CategoricalDtype)
    assert list(a["site"].astype(object)) == list(plain)
    for col in ("phase", "free_phase", "category_source"):
        assert isinstance(a[col].dtype, pd.CategoricalDtype)
        assert all(isinstance(v, str) for v in a[col].astype(object))
    # the model keeps them as codes, same labels
    m = build_model(an.snap, an.rep, an.meta, analysis=an)
    assert list(m.allocs["site"].astype(object)) == list(plain)
    assert list(m.allocs["phase"].astype(object)) == list(a["phase"].astype(object))
    # the peak's site table reports plain strings, bytes summed by an independent loop
    by_site = an.peak.by_site
    assert all(isinstance(s, str) for s in by_site["site"])
    alive = an.rep.alive_at(an.rep.peak_idx)
    labels = _plain_sites(snap, alive)
    want: dict[str, int] = {}
    for s, b in zip(labels, alive["size"].to_numpy()):
        want[s] = want.get(s, 0) + int(b)
    assert dict(zip(by_site["site"], by_site["bytes"].astype(int))) == want


def test_unvalidated_timeline_figure_equals_the_validated_one() -> None:
    an = analyze(FILES[0], use_cache=False)
    m = build_model(an.snap, an.rep, an.meta, analysis=an)
    traces, _ = figures.timeline_traces(m)
    fig = figures.plot_timeline(m, traces=traces)
    # the same figure through plotly's validation (what plot_timeline used to build)
    ref = go.Figure(data=traces, layout=fig.to_plotly_json()["layout"])
    a = json.loads(json.dumps(fig.to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder))
    b = json.loads(json.dumps(ref.to_plotly_json(), cls=plotly.utils.PlotlyJSONEncoder))
    assert a == b
    assert a["layout"]["template"]["layout"]["plot_bgcolor"] == "white"  # plotly_white resolved, not a bare name
    assert a["layout"]["xaxis"]["title"] == {"text": "time since trace start (ms)"}


def test_reserved_gets_its_own_axis_only_when_it_dwarfs_allocated() -> None:
    an = analyze(FILES[0], use_cache=False)
    m = build_model(an.snap, an.rep, an.meta, analysis=an)

    def reserved_trace(model):
        traces, _ = figures.timeline_traces(model)
        lay = figures.plot_timeline(model, traces=traces).to_plotly_json()["layout"]
        return [t for t in traces if str(t["name"]).startswith("reserved")][0], lay

    small = m.peak_reserved_bytes <= figures.RESERVED_AXIS_RATIO * m.peak_bytes
    t, fig = reserved_trace(m)
    assert ("yaxis" in t) != small and ("yaxis2" in fig) != small
    # a cache 10x the allocated peak: reserved moves to the right axis, the bytes drawn are unchanged
    m.peak_reserved_bytes = 10 * m.peak_bytes
    m.reserved = m.reserved * 0 + 10 * m.peak_bytes
    t, fig = reserved_trace(m)
    assert t["yaxis"] == "y2" and fig["yaxis2"]["overlaying"] == "y" and fig["yaxis2"]["side"] == "right"
    assert np.all(np.asarray(t["y"]) * figures.MIB == 10 * m.peak_bytes)
    assert "reserved" in fig["yaxis2"]["title"]["text"] and "allocated" in fig["yaxis"]["title"]["text"]


def test_pyramid_keeps_the_envelope_of_every_window() -> None:
    from memprof.replay import pyramid
    from memprof.replay.downsample import minmax_step, step_envelope_ok, visible_slice

    rng = np.random.default_rng(3)
    n = 300_000
    x = np.cumsum(rng.integers(1, 5, n)).astype(np.float64)
    y = np.cumsum(rng.integers(-1000, 1001, n)).astype(np.int64)
    y[rng.integers(0, n, 5)] += 10**9  # isolated spikes must survive any zoom
    levels = pyramid.build(y)
    assert len(levels) >= 3
    for _ in range(60):
        a = float(rng.uniform(x[0] - 10, x[-1]))
        b = a + float(rng.uniform(1, x[-1] - x[0]))
        idx = minmax_step(x, y, a, b, 500, levels=levels)
        full = minmax_step(x, y, a, b, 500)
        lo, hi = visible_slice(x, a, b)
        # same envelope as the full curve (independent check: plain max/min of the slice)
        assert step_envelope_ok(x, y, idx, a, b)
        assert y[idx].max() == y[lo:hi].max() and y[idx].min() == y[lo:hi].min()
        assert idx[0] == lo and idx[-1] == hi - 1  # the point in force at the left edge, one past the right
        assert np.all(np.diff(idx) > 0) and len(idx) <= 3 * 500 + 2
        assert y[full].max() == y[idx].max()
    # the whole range: no window given
    idx = minmax_step(x, y, None, None, 1000, levels=levels)
    assert y[idx].max() == y.max() and y[idx].min() == y.min() and idx[0] == 0 and idx[-1] == n - 1
