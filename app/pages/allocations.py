"""Allocations: the per-tensor table (paged, sorted and filtered on the server) and what is alive at a time."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dash_table, dcc, html

from app import common
from app.state import library

dash.register_page(__name__, path="/allocations", name="Allocations", title="memprof · allocations")


def layout(snap: str | None = None, device: str | None = None, t: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        t_ms = float(t) if t not in (None, "") else m.peak_ms
    except Exception as e:
        return html.Div([html.H2("Allocations"), common.error_box(e)])
    cols = [{"name": c, "id": c} for c in common.ALLOC_COLUMNS]
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
            html.Div(common.table("allocations-alive", common.alloc_frame(m, m.allocs.head(0))), className="grow"),
            html.Div(dcc.Graph(id="allocations-alive-chart"), style={"flex": "0 0 420px"}),
        ], className="row"),
    ])


@callback(Output("allocations-table", "data"), Output("allocations-table", "page_count"), Output("allocations-count", "children"),
          Input("allocations-table", "page_current"), Input("allocations-table", "page_size"),
          Input("allocations-table", "sort_by"), Input("allocations-table", "filter_query"), State("allocations-key", "data"))
def page(page: int, size: int, sort_by: list[dict[str, str]], filter_query: str, key: dict[str, Any]) -> Any:
    return common.alloc_page(key, page, size, sort_by, filter_query)


@callback(Output("allocations-time", "value"), Input("allocations-slider", "value"), prevent_initial_call=True)
def slide(v: float) -> float:
    return round(float(v), 6)


@callback(Output("allocations-alive", "data"), Output("allocations-alive-summary", "children"), Output("allocations-alive-chart", "figure"),
          Input("allocations-time", "value"), State("allocations-key", "data"))
def alive(t_ms: Any, key: dict[str, Any]) -> Any:
    return common.alive_table(key, t_ms)
