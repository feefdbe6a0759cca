"""Allocations: the per-tensor table (paged, sorted and filtered on the server, exported as CSV) and what is alive at a time.

The table's ``filter_query`` is parsed by :mod:`memprof.present.filters` (the whole dash-table grammar,
with units on byte columns: ``{size} > 50 MiB``); a query it cannot apply is shown, with
where and why, in place of the row count."""

from __future__ import annotations

import math
from typing import Any

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, State, callback, dash_table, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library, parse_key
from memprof.present import figures, filters, views
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/allocations", name="Allocations", title="memprof · allocations")

NUMERIC_COLUMNS = ("row", "size", "alloc_ms", "free_ms", "lifetime_ms", "stream")
BYTE_COLUMNS = ("size",)
ALIASES = {"size_h": "size"}  # the human-readable size filters as the byte count when given a number
MAX_PAGE_SIZE = 500
MAX_EXPORT_ROWS = 250_000
ALLOC_COLUMNS = ("row", "size", "size_h", "alloc_ms", "free_ms", "lifetime_ms", "phase", "category", "site", "stream", "addr")


def hex_addrs(a: pd.Series) -> list[str]:
    """Block addresses as PyTorch's viewer writes them (``0x7f3a...``); '' when unknown (-1)."""
    v = a.to_numpy()
    if v.dtype.kind not in "iu":
        return [str(x) for x in v]  # already text
    return [f"0x{int(x):x}" if x >= 0 else "" for x in v]


def alloc_frame(m: views.TimelineModel, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Display columns: row, size, size_h, alloc_ms, free_ms, lifetime_ms, phase, category, site, stream, addr (hex)."""
    d = m.allocs if df is None else df
    return pd.DataFrame({
        "row": d.index.to_numpy(),
        "size": d["size"].to_numpy(),
        "size_h": [fmt_bytes(int(s)) for s in d["size"].to_numpy()] if len(d) <= 5000 else None,
        "alloc_ms": d["t0_ms"].round(4).to_numpy(),
        "free_ms": np.where(d["alive_at_end"].to_numpy(), np.nan, d["t1_ms"].round(4).to_numpy()),
        "lifetime_ms": (d["lifetime_us"] / 1000).round(4).to_numpy(),
        "phase": d["phase"].to_numpy(),
        "category": d["category"].to_numpy(),
        "site": d["site"].to_numpy(),
        "stream": d["stream"].to_numpy() if "stream" in d else 0,
        "addr": hex_addrs(d["addr"]) if "addr" in d else "",
    })


FILTER_HELP = ("filter: text matches anywhere (category: activation; site: transformer.py:77); numbers take "
               "= != < <= > >= and sizes take units (size: > 50 MiB, <= 1.5GB, = 512 B)")


def layout(snap: str | None = None, device: str | None = None, t: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        t_ms = float(t) if t not in (None, "") else m.peak_ms
        if not math.isfinite(t_ms):
            t_ms = m.peak_ms
    except Exception as e:
        return html.Div([html.H2("Allocations"), common.error_box(e)])
    cols = [{"name": c, "id": c, "type": "numeric" if c in NUMERIC_COLUMNS else "text"} for c in ALLOC_COLUMNS]
    return html.Div([
        html.H2(f"Allocations · {library().get(sid).rel}"),
        html.P(common.summary_line(m), className="sub"),
        common.page_links(sid, dev),
        dcc.Store(id="allocations-key", data={"snap": sid, "device": dev}),
        html.Div([html.Span(id="allocations-count", className="sub"),
                  html.Button("Export CSV", id="allocations-export", title="the filtered, sorted table as CSV"),
                  dcc.Download(id="allocations-download")], className="toolbar"),
        html.P(FILTER_HELP, className="sub"),
        dash_table.DataTable(  # type: ignore[attr-defined]  # dash's stubs lack DataTable
            id="allocations-table", columns=cols, page_current=0, page_size=20, page_action="custom",
            sort_action="custom", sort_mode="multi", sort_by=[{"column_id": "size", "direction": "desc"}],
            filter_action="custom", filter_query="", style_table={"overflowX": "auto"},
            style_cell={"fontFamily": "monospace", "fontSize": 12, "padding": "3px 6px", "textAlign": "left"},
            style_header={"fontWeight": "bold", "backgroundColor": "#f3f4f6"}),
        html.H3("What is alive at time T"),
        html.Div([html.Label("T (ms since start)"),
                  dcc.Input(id="allocations-time", type="number", value=round(t_ms, 6), debounce=True, step="any"),
                  dcc.Slider(id="allocations-slider", min=0, max=max(m.end_ms, 1e-9), value=t_ms, marks=None,
                             tooltip={"placement": "bottom"}, updatemode="mouseup")],
                 className="toolbar", style={"flexWrap": "wrap"}),
        html.P(id="allocations-alive-summary", className="sub"),
        html.Div([
            html.Div(common.table("allocations-alive", alloc_frame(m, m.allocs.head(0))), className="grow"),
            html.Div(dcc.Graph(id="allocations-alive-chart"), style={"flex": "0 0 420px"}),
        ], className="row"),
    ])


@callback(Output("allocations-table", "data"), Output("allocations-table", "page_count"), Output("allocations-count", "children"),
          Input("allocations-table", "page_current"), Input("allocations-table", "page_size"),
          Input("allocations-table", "sort_by"), Input("allocations-table", "filter_query"), State("allocations-key", "data"))
def page(page: int, size: int, sort_by: list[dict[str, str]], filter_query: str, key: dict[str, Any]) -> Any:
    return alloc_page(key, page, size, sort_by, filter_query)


@callback(Output("allocations-download", "data"), Input("allocations-export", "n_clicks"),
          State("allocations-table", "sort_by"), State("allocations-table", "filter_query"), State("allocations-key", "data"),
          prevent_initial_call=True)
def export(_clicks: Any, sort_by: list[dict[str, str]], filter_query: str, key: dict[str, Any]) -> Any:
    return export_csv(key, sort_by, filter_query)


@callback(Output("allocations-time", "value"), Input("allocations-slider", "value"), prevent_initial_call=True)
def slide(v: float) -> float:
    return round(_float(v), 6)


@callback(Output("allocations-alive", "data"), Output("allocations-alive-summary", "children"), Output("allocations-alive-chart", "figure"),
          Input("allocations-time", "value"), State("allocations-key", "data"))
def alive(t_ms: Any, key: dict[str, Any]) -> Any:
    return alive_table(key, t_ms if _finite(t_ms) else None)


# --- what the callbacks return ------------------------------------------------

def table_frame(m: views.TimelineModel, with_size_h: bool = False, with_addr: bool = False) -> pd.DataFrame:
    """The whole table before paging, in replay order, with the values the table shows.

    Columns: row, size, size_h and addr (hex) only when asked for (formatting a million values costs
    a second), alloc_ms, free_ms (NaN while alive at the end), lifetime_ms, phase, category, site, stream."""
    a = m.allocs
    df = pd.DataFrame({
        "row": np.arange(len(a)),
        "size": a["size"].to_numpy(),
        "alloc_ms": a["t0_ms"].round(4).to_numpy(),
        "free_ms": np.where(a["alive_at_end"].to_numpy(), np.nan, a["t1_ms"].round(4).to_numpy()),
        "lifetime_ms": (a["lifetime_us"] / 1000).round(4).to_numpy(),
        "phase": a["phase"].array,  # the column's own array: no copy through Python strings
        "category": a["category"].array,
        "site": a["site"].array,
        "stream": a["stream"].to_numpy() if "stream" in a else np.zeros(len(a), dtype=np.int64),
    })
    if with_size_h:
        df.insert(2, "size_h", [fmt_bytes(int(s)) for s in df["size"].to_numpy()])
    if with_addr:
        df["addr"] = hex_addrs(a["addr"]) if "addr" in a else ""
    return df


def query(key: Any, sort_by: Any, filter_query: Any) -> tuple[views.TimelineModel, pd.DataFrame, np.ndarray]:
    """The model, its table filtered as the DataTable asks, and the row order its sort asks for
    (positions into the filtered table; errors: :class:`filters.FilterError`)."""
    sid, dev = parse_key(key)
    m = library().model(sid, dev)
    node = filters.parse(filter_query or "")
    refs = filters.referenced_columns(node)
    if isinstance(sort_by, list):
        refs |= {s["column_id"] for s in sort_by if isinstance(s, dict) and isinstance(s.get("column_id"), str)}
    df = table_frame(m, with_size_h="size_h" in refs, with_addr="addr" in refs)
    df = filters.apply_filter(df, node, byte_columns=BYTE_COLUMNS, aliases=ALIASES)
    return m, df, filters.sort_order(df, sort_by)


def alloc_page(key: Any, page: Any, size: Any, sort_by: Any, filter_query: Any) -> tuple[list[dict[str, Any]], int, Any]:
    """One page of the per-allocation table, filtered and sorted on the server.

    A filter the table cannot apply leaves the table empty and says why in the count line."""
    try:
        m, df, order = query(key, sort_by, filter_query)
    except filters.FilterError as e:
        return [], 1, html.Span(str(e), className="error", id="allocations-filter-error")
    size = _int(size, 20, 1, MAX_PAGE_SIZE)
    n_pages = max(1, math.ceil(len(df) / size))
    page = _int(page, 0, 0, n_pages - 1)
    chunk = df.iloc[order[page * size:(page + 1) * size]]  # only the page's rows are gathered
    out = alloc_frame(m, m.allocs.iloc[chunk["row"].to_numpy()])
    return out.to_dict("records"), n_pages, f"{len(df):,} of {len(m.allocs):,} allocations"


def export_csv(key: Any, sort_by: Any, filter_query: Any) -> dict[str, Any]:
    """The filtered, sorted table as a CSV download (``dcc.Download`` data), at most :data:`MAX_EXPORT_ROWS` rows.

    Text cells that a spreadsheet would evaluate as a formula are prefixed with ``'`` (the
    frames come from an untrusted file)."""
    m, df, order = query(key, sort_by, filter_query)
    out = df.iloc[order[:MAX_EXPORT_ROWS]].copy()
    if "size_h" not in out.columns:
        out.insert(2, "size_h", [fmt_bytes(int(s)) for s in out["size"].to_numpy()])
    if "addr" not in out.columns:
        a = m.allocs
        out["addr"] = hex_addrs(a["addr"].iloc[out["row"].to_numpy()]) if "addr" in a else ""
    for c in ("phase", "category", "site"):
        out[c] = filters.csv_safe(out[c].tolist())
    name = library().get(parse_key(key)[0]).rel.replace("/", "_").split(".")[0]
    return {"content": out.to_csv(index=False), "filename": f"{name}-allocations.csv", "type": "text/csv", "base64": False}


def alive_table(key: dict[str, Any], t_ms: Any) -> tuple[list[dict[str, Any]], str, Any]:
    """Allocations alive at ``t_ms`` (the peak when empty), their total, and a category chart."""
    m = library().model(*parse_key(key))
    try:
        t = float(t_ms)
    except (TypeError, ValueError):
        t = m.peak_ms
    alive = views.alive_at(m, t)
    fig = figures.plot_category_bars(views.by_category(alive), title=f"alive at {t:.3f} ms, by category")
    head = alloc_frame(m, alive.head(200))
    return head.to_dict("records"), f"{len(alive):,} allocations alive at {t:.3f} ms, {fmt_bytes(int(alive['size'].sum()))} in all", fig


def _int(v: Any, default: int, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return max(lo, min(default, hi))
    return max(lo, min(int(v), hi))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _float(v: Any) -> float:
    return float(v) if _finite(v) else 0.0
