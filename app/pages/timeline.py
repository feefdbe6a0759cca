"""Timeline: allocated/reserved bytes over time, the largest allocations stacked, phases, peaks.

Zoom and pan are answered on the server (``timeline-graph.relayoutData`` -> a Patch of trace data)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from app import common
from app.state import library

dash.register_page(__name__, path="/timeline", name="Timeline", title="memprof · timeline")

#: How many of the largest allocations the full view draws one by one (the rest: category bands).
DETAIL_LEVELS = (20, 80, 200, 500)


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        fig, rows = common.timeline_figure(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Timeline"), common.error_box(e)])
    return html.Div([
        html.H2(library().get(sid).rel, id="timeline-title"),
        html.P(common.summary_line(m), className="sub", id="timeline-summary"),
        common.page_links(sid, dev),
        html.Div([html.Span("detail: the ", className="sub"), dcc.RadioItems(
            id="timeline-detail", options=[{"label": f" {n} ", "value": n} for n in DETAIL_LEVELS], value=80, inline=True),
            html.Span(" largest allocations drawn one by one, every smaller one in its category's band", className="sub")],
            className="row"),
        html.Div([
            html.Div(dcc.Graph(id="timeline-graph", figure=fig, config={"displaylogo": False, "scrollZoom": True}), className="grow"),
            html.Div(html.Div("Click an allocation in the timeline to see its full stack.", id="timeline-stack"), className="side"),
        ], className="row"),
        dcc.Store(id="timeline-key", data={"snap": sid, "device": dev}),
        dcc.Store(id="timeline-rows", data=rows),
    ])


@callback(Output("timeline-graph", "figure"), Output("timeline-rows", "data"),
          Input("timeline-graph", "relayoutData"), State("timeline-key", "data"), Input("timeline-detail", "value"),
          prevent_initial_call=True)
def zoom(relayout: dict[str, Any] | None, key: dict[str, Any], detail: Any = None) -> Any:
    """A zoom re-aggregates the new range; a new detail level redraws the range in view (the last relayout's)."""
    key = {**(key or {}), "k": int(detail) if detail in DETAIL_LEVELS else 80}
    if _triggered() == "timeline-detail":
        key["keep_range"] = True
    return common.zoom_patch(relayout, key)


def _triggered() -> Any:
    try:
        return dash.ctx.triggered_id
    except Exception:  # noqa: BLE001 - called outside a callback (tests)
        return None


@callback(Output("timeline-stack", "children"), Input("timeline-graph", "clickData"),
          State("timeline-rows", "data"), State("timeline-key", "data"), prevent_initial_call=True)
def show_stack(click: dict[str, Any] | None, rows: list[int] | None, key: dict[str, Any]) -> Any:
    return common.stack_panel(click, rows, key)
