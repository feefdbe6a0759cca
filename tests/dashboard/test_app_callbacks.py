"""The dashboard's callbacks called directly (no browser) over the bundled H100 snapshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dash")

from dash import Patch  # noqa: E402
from dash.exceptions import PreventUpdate  # noqa: E402

from memprof.errors import MemprofError  # noqa: E402
from dashwalk import walk as _walk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "snapshots"
EAGER = "h100/transformer-small-train-eager-bf16.pickle.gz"
COMPILED = "h100/transformer-small-train-compiled-bf16.pickle.gz"


@pytest.fixture(scope="module")
def lib():
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    create_app(ROOT)
    return library()


def _ops(p: Patch) -> list[dict]:
    return p.to_plotly_json()["operations"]


def test_library_rows(lib) -> None:
    df = lib.table()
    names = set(df["name"])
    assert EAGER in names and COMPILED in names
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.pickle.gz")}
    assert names == files
    row = df[df["name"] == EAGER].iloc[0]
    assert row["peak_allocated_mib"] > 0 and row["workload"] == "transformer"


def test_timeline_figure_and_zoom_patch(lib) -> None:
    from memprof.dashboard import common
    from memprof.dashboard.pages import timeline

    sid = lib.get(EAGER).id
    fig, rows = common.timeline_figure(sid, None)
    assert len(fig.data) >= 2
    m = lib.model(sid, None)
    total = sum(len(t.x) for t in fig.data if t.x is not None)
    assert total > 0
    a, b = m.peak_ms * 0.9, m.peak_ms * 1.02
    patch, rows2 = timeline.zoom({"xaxis.range[0]": a, "xaxis.range[1]": b}, {"snap": sid, "device": None})
    assert isinstance(patch, Patch)
    ops = _ops(patch)
    assert [op["location"] for op in ops] == [["data"]]  # only trace data goes back, never the layout
    traces = ops[0]["params"]["value"]
    assert traces and all(len(t["x"]) <= 5000 for t in traces)
    # the re-aggregated curve covers the window, and is not the full-range data
    xs = [x for t in traces if t.get("name") and "allocated" in str(t.get("name")) for x in t["x"]]
    assert xs and min(xs) <= a + (b - a) * 0.05 and max(xs) >= b - (b - a) * 0.05
    assert isinstance(rows2, list)
    # plotly's other relayout forms
    p2, _ = timeline.zoom({"xaxis.range": [a, b]}, {"snap": sid, "device": None})
    assert _ops(p2)[0]["params"]["value"]
    p3, _ = timeline.zoom({"xaxis.autorange": True}, {"snap": sid, "device": None})
    assert len(_ops(p3)[0]["params"]["value"]) == len(fig.data)
    with pytest.raises(PreventUpdate):
        timeline.zoom({"dragmode": "pan"}, {"snap": sid, "device": None})
    with pytest.raises(PreventUpdate):
        timeline.zoom({"xaxis.range[0]": b, "xaxis.range[1]": a}, {"snap": sid, "device": None})


def test_allocations_filter_sort_and_alive(lib) -> None:
    from memprof.dashboard.pages import allocations

    sid = lib.get(EAGER).id
    key = {"snap": sid, "device": None}
    rows, n_pages, count = allocations.page(0, 20, [{"column_id": "size", "direction": "desc"}], "", key)
    assert len(rows) == 20 and n_pages > 1
    sizes = [r["size"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    big = sizes[5]
    rows_f, _, count_f = allocations.page(0, 500, None, f"{{size}} >= {big}", key)
    assert rows_f and all(r["size"] >= big for r in rows_f)
    assert int(count_f.split()[0].replace(",", "")) < int(count.split()[-2].replace(",", ""))
    rows_c, _, _ = allocations.page(0, 50, None, "{category} contains param", key)
    assert rows_c and all("param" in r["category"] for r in rows_c)
    m = lib.model(sid, None)
    alive, summary, fig = allocations.alive(m.peak_ms, key)
    assert "alive at" in summary and alive
    total = sum(r["size"] for r in alive)
    assert total <= m.peak_bytes
    alive0, summary0, _ = allocations.alive(0.0, key)
    assert summary0 != summary


def test_explain_content(lib) -> None:
    from memprof.dashboard.pages import explain

    sid = lib.get(EAGER).id
    div = explain.layout(snap=str(sid))
    ids = {c.id for c in _walk(div) if getattr(c, "id", None)}
    assert {"explain-verdict", "explain-numbers", "explain-categories"} <= ids
    verdict = next(c for c in _walk(div) if getattr(c, "id", None) == "explain-verdict")
    assert isinstance(verdict.children, str) and verdict.children


def test_compare(lib) -> None:
    from memprof.dashboard.pages import compare

    ids = [lib.get(EAGER).id, lib.get(COMPILED).id]
    out = compare.update(ids)
    by_id = {c.id: c for c in _walk(out) if getattr(c, "id", None)}
    assert {"compare-graph", "compare-summary", "compare-categories", "compare-sites"} <= set(by_id)
    assert len(by_id["compare-graph"].figure.data) == 2
    assert len(by_id["compare-summary"].data) == 2
    hint = compare.update(ids[:1])
    assert any(getattr(c, "id", None) == "compare-hint" for c in _walk(hint))


def test_sweeps(lib) -> None:
    from memprof.dashboard.pages import sweeps

    found = {rel: i for i, rel, _ in lib.sweeps()}
    assert {"sweep-attention-h100", "sweep-transformer-h100"} <= set(found)
    att = {c.id: c for c in _walk(sweeps.update(found["sweep-attention-h100"])) if getattr(c, "id", None)}
    fig = att["sweeps-forward"].figure
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert any(t.text and "OOM" in t.text for t in fig.data)  # naive attention runs out of memory at 32k
    assert "sweeps-peak" in att and "sweeps-speedup" in att
    sp = att["sweeps-speedup"].figure
    assert any(max(t.y) > 1 for t in sp.data)  # sdpa beats naive somewhere
    tr = {c.id: c for c in _walk(sweeps.update(found["sweep-transformer-h100"])) if getattr(c, "id", None)}
    assert tr["sweeps-forward"].figure.layout.xaxis.type == "category"
    assert "sweeps-speedup" in tr


def test_snapshot_selection_path_safety(lib, tmp_path: Path) -> None:
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    for bad in ("../../etc/passwd", "/etc/passwd", str(ROOT / EAGER), "h100/../../pyproject.toml", "999999", "-1", ""):
        with pytest.raises(MemprofError):
            lib.get(bad)
    # a folder holding a symlink to a snapshot outside it: never listed, never served
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(ROOT / "h100" / "script-train_tiny.pickle.gz", outside / "secret.pickle.gz")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(ROOT / "h100" / "script-train_tiny.pickle.gz", served / "ok.pickle.gz")
    os.symlink(outside / "secret.pickle.gz", served / "link.pickle.gz")
    os.symlink(outside, served / "linkdir")
    try:
        create_app(served)
        lib2 = library()
        assert [e.rel for e in lib2.entries()] == ["ok.pickle.gz"]
        for bad in ("link.pickle.gz", "linkdir/secret.pickle.gz", "../outside/secret.pickle.gz", str(outside / "secret.pickle.gz")):
            with pytest.raises(MemprofError):
                lib2.get(bad)
        assert lib2.get("ok.pickle.gz").id == 0
    finally:
        create_app(ROOT)


