"""The dashboard on what real files hold: an empty trace (state only) and two streams (the awaiting-free band)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dash")

from dash import Patch  # noqa: E402

from corpus import CORPUS  # noqa: E402
from snapgen import two_stream_trace  # noqa: E402

EMPTY = "nishi951__triton-unfold__memory.pickle.gz"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    root = tmp_path_factory.mktemp("lib")
    shutil.copy(CORPUS / EMPTY, root / EMPTY)
    (root / "streams.pickle").write_bytes(pickle.dumps(two_stream_trace(), protocol=4))
    shutil.copy(Path(__file__).parents[1] / "data" / "gpu" / "edge" / "mempool.pickle.gz", root / "mempool.pickle.gz")
    create_app(root)
    yield library()


def _walk(node):
    yield node
    kids = getattr(node, "children", None)
    if kids is None or isinstance(kids, (str, int, float)):
        return
    for c in kids if isinstance(kids, (list, tuple)) else [kids]:
        yield from _walk(c)


def test_empty_trace_timeline_shows_the_state(lib):
    from memprof.dashboard.pages import allocations, explain, timeline

    sid = lib.get(EMPTY).id
    page = timeline.layout(snap=str(sid))
    nodes = list(_walk(page))
    notice = [n for n in nodes if getattr(n, "id", None) == "timeline-no-history"][0]
    assert "No allocation history was recorded" in notice.children
    graph = [n for n in nodes if getattr(n, "id", None) == "timeline-state-graph"][0]
    fig = graph.figure
    assert fig.data[0].type == "bar" and "state at dump time" in fig.layout.title.text
    assert abs(sum(fig.data[0].x) * 2**20 - lib.model(sid, None).peak_bytes) < 1  # the bars sum to the live blocks
    # no zoomable timeline graph on the page: the zoom and click callbacks have nothing to fire on
    assert not [n for n in nodes if getattr(n, "id", None) in ("timeline-graph", "timeline-key")]
    for page_mod in (allocations, explain):
        assert "Traceback" not in str(page_mod.layout(snap=str(sid)))
    ex = [n for n in _walk(explain.layout(snap=str(sid))) if getattr(n, "id", None) == "explain-no-history"]
    assert ex and "trace is empty" in ex[0].children


def test_two_streams_draw_the_awaiting_free_band(lib):
    from memprof.dashboard.pages import timeline

    sid = lib.get("streams.pickle").id
    page = timeline.layout(snap=str(sid))
    fig = [n for n in _walk(page) if getattr(n, "id", None) == "timeline-graph"][0].figure
    names = [t.name for t in fig.data]
    assert "allocated as torch counts it" in names and "held (incl. awaiting free on another stream)" in names
    counted = fig.data[names.index("allocated as torch counts it")]
    held = fig.data[names.index("held (incl. awaiting free on another stream)")]
    assert max(held.y) * 2**20 == pytest.approx(200) and max(counted.y) * 2**20 == pytest.approx(160)
    band = fig.data[names.index("awaiting free on another stream")]
    assert band.fill == "tonexty" and "245,133,24" in band.fillcolor  # the band between the two curves
    assert names.index("awaiting free on another stream") == names.index("allocated as torch counts it") + 1
    assert list(band.y) == list(held.y)
    patch, _ = timeline.zoom({"xaxis.range[0]": 0.0, "xaxis.range[1]": 0.05}, {"snap": sid, "device": None})
    assert isinstance(patch, Patch)
    data = patch.to_plotly_json()["operations"][0]["params"]["value"]
    assert [t["name"] for t in data] == names


def test_private_pools_line_on_the_timeline(lib):
    from memprof.dashboard.pages import timeline

    sid = lib.get("mempool.pickle.gz").id
    fig = [n for n in _walk(timeline.layout(snap=str(sid))) if getattr(n, "id", None) == "timeline-graph"][0].figure
    names = [t.name for t in fig.data]
    assert "in private pools (CUDA graphs / MemPool)" in names
    priv = fig.data[names.index("in private pools (CUDA graphs / MemPool)")]
    alloc = fig.data[names.index("allocated")]
    assert 0 < max(priv.y) <= max(alloc.y)
