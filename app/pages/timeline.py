"""Timeline: allocated/reserved bytes over time, the largest allocations stacked, phases, peaks.

Zoom and pan are answered on the server (``timeline-graph.relayoutData`` -> a Patch of trace data)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from app import common
from app.state import library
from memprof import figures

dash.register_page(__name__, path="/timeline", name="Timeline", title="memprof · timeline")


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        state_only = not m.rep.has_trace
        if state_only:  # an empty trace: no time axis to draw, only what the segments hold
            fig, rows = figures.plot_state(m), []
        else:
            fig, rows = common.timeline_figure(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Timeline"), common.error_box(e)])
    return html.Div([
        html.H2(library().get(sid).rel, id="timeline-title"),
        html.P(common.summary_line(m), className="sub", id="timeline-summary"),
        html.P("No allocation history was recorded in this snapshot (its trace is empty): shown is the state when it "
               "was taken. Record with torch.cuda.memory._record_memory_history() to see memory over time.",
               className="sub", id="timeline-no-history") if state_only else html.Div(id="timeline-no-history"),
        common.page_links(sid, dev),
        html.Div([
            html.Div(dcc.Graph(id="timeline-graph", figure=fig, config={"displaylogo": False, "scrollZoom": True}), className="grow"),
            html.Div(html.Div("Click an allocation in the timeline to see its full stack.", id="timeline-stack"), className="side"),
        ], className="row"),
        dcc.Store(id="timeline-key", data={"snap": sid, "device": dev, "state_only": state_only}),
        dcc.Store(id="timeline-rows", data=rows),
    ])


@callback(Output("timeline-graph", "figure"), Output("timeline-rows", "data"),
          Input("timeline-graph", "relayoutData"), State("timeline-key", "data"), prevent_initial_call=True)
def zoom(relayout: dict[str, Any] | None, key: dict[str, Any]) -> Any:
    if key and key.get("state_only"):
        raise dash.exceptions.PreventUpdate  # the state bars have no time axis to re-aggregate
    return common.zoom_patch(relayout, key)


@callback(Output("timeline-stack", "children"), Input("timeline-graph", "clickData"),
          State("timeline-rows", "data"), State("timeline-key", "data"), prevent_initial_call=True)
def show_stack(click: dict[str, Any] | None, rows: list[int] | None, key: dict[str, Any]) -> Any:
    return common.stack_panel(click, rows, key)
