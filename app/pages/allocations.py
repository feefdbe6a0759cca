"""Allocations: the per-tensor table (paged, sorted and filtered on the server) and what is alive at a time."""

from __future__ import annotations

import math
import re
from typing import Any

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, State, callback, dash_table, dcc, html

from app import common
from app.state import library
from memprof import figures, views
from memprof.format import fmt_bytes

dash.register_page(__name__, path="/allocations", name="Allocations", title="memprof · allocations")


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


_FILTER = re.compile(r"^\{(\w+)\}\s*(s?(?:<=|>=|!=|=|<|>)|contains|eq|ne|lt|le|gt|ge|datestartswith)\s*(.+)$")


def apply_query(df: pd.DataFrame, filter_query: str | None, sort_by: list[dict[str, str]] | None) -> pd.DataFrame:
    """DataTable's custom filter (``{col} op value && ...``) and sort, on the server."""
    for part in (filter_query or "").split(" && "):
        mt = _FILTER.match(part.strip())
        if not mt:
            continue
        col, op, val = mt.group(1), mt.group(2).lstrip("s"), mt.group(3).strip().strip("'\"`")
        if col not in df.columns:
            continue
        s = df[col]
        if op in ("contains", "datestartswith"):
            df = df[s.astype(str).str.contains(val, case=False, regex=False)]
            continue
        num = pd.to_numeric(pd.Series([val]), errors="coerce").iloc[0]
        v: Any = num if pd.api.types.is_numeric_dtype(s) and num == num else val
        if v is val and op in ("=", "eq"):
            df = df[s.astype(str).str.contains(val, case=False, regex=False)] if not pd.api.types.is_numeric_dtype(s) else df[s.astype(str) == val]
            continue
        ops = {"=": "eq", "eq": "eq", "!=": "ne", "ne": "ne", "<": "lt", "lt": "lt", "<=": "le", "le": "le", ">": "gt", "gt": "gt", ">=": "ge", "ge": "ge"}
        try:
            df = df[getattr(s, ops[op])(v)]
        except TypeError:
            df = df.iloc[0:0]
    if sort_by:
        cols = [s["column_id"] for s in sort_by if s.get("column_id") in df.columns]
        asc = [s.get("direction", "asc") == "asc" for s in sort_by if s.get("column_id") in df.columns]
        if cols:
            df = df.sort_values(cols, ascending=asc, kind="stable")
    return df


def alloc_page(key: dict[str, Any], page: int, size: int, sort_by: list[dict[str, str]] | None, filter_query: str | None) -> tuple[list[dict[str, Any]], int, str]:
    """One page of the per-allocation table, filtered and sorted on the server."""
    m = library().model(int(key["snap"]), key.get("device"))
    al = m.allocs.assign(row=np.arange(len(m.allocs)), lifetime_ms=m.allocs["lifetime_us"] / 1000,
                         alloc_ms=m.allocs["t0_ms"], free_ms=np.where(m.allocs["alive_at_end"], np.nan, m.allocs["t1_ms"]))
    if "{addr}" in (filter_query or ""):  # search by address: match the hex text the table shows
        al = al.assign(addr=hex_addrs(al["addr"]))
    al = apply_query(al, filter_query, sort_by)
    size = max(1, min(int(size or 25), 500))
    n_pages = max(1, math.ceil(len(al) / size))
    page = max(0, min(int(page or 0), n_pages - 1))
    chunk = al.iloc[page * size:(page + 1) * size]
    out = alloc_frame(m, chunk.set_index("row"))
    return out.to_dict("records"), n_pages, f"{len(al):,} of {len(m.allocs):,} allocations"


def alive_table(key: dict[str, Any], t_ms: Any) -> tuple[list[dict[str, Any]], str, Any]:
    """Allocations alive at ``t_ms`` (the peak when empty), their total, and a category chart."""
    m = library().model(int(key["snap"]), key.get("device"))
    try:
        t = float(t_ms)
    except (TypeError, ValueError):
        t = m.peak_ms
    alive = views.alive_at(m, t)
    fig = figures.plot_category_bars(views.by_category(alive), title=f"alive at {t:.3f} ms, by category")
    head = alloc_frame(m, alive.head(200))
    return head.to_dict("records"), f"{len(alive):,} allocations alive at {t:.3f} ms, {fmt_bytes(int(alive['size'].sum()))} in all", fig


def layout(snap: str | None = None, device: str | None = None, t: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        t_ms = float(t) if t not in (None, "") else m.peak_ms
    except Exception as e:
        return html.Div([html.H2("Allocations"), common.error_box(e)])
    cols = [{"name": c, "id": c} for c in ALLOC_COLUMNS]
    return html.Div([
        html.H2(f"Allocations · {library().get(sid).rel}"),
        html.P(common.summary_line(m), className="sub"),
        common.page_links(sid, dev),
        dcc.Store(id="allocations-key", data={"snap": sid, "device": dev}),
        html.Div(id="allocations-count", className="sub"),
        dash_table.DataTable(
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


@callback(Output("allocations-time", "value"), Input("allocations-slider", "value"), prevent_initial_call=True)
def slide(v: float) -> float:
    return round(float(v), 6)


@callback(Output("allocations-alive", "data"), Output("allocations-alive-summary", "children"), Output("allocations-alive-chart", "figure"),
          Input("allocations-time", "value"), State("allocations-key", "data"))
def alive(t_ms: Any, key: dict[str, Any]) -> Any:
    return alive_table(key, t_ms)
