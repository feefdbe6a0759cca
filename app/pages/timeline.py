"""Timeline: allocated/reserved bytes over time, the largest allocations stacked, phases, peaks.

Zoom and pan are answered on the server (``timeline-graph.relayoutData`` -> a Patch of trace data)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import dash
from dash import Input, Output, Patch, State, callback, dcc, html

from app import common
from app.state import library, parse_key
from memprof import figures
from memprof.format import fmt_bytes, fmt_us

dash.register_page(__name__, path="/timeline", name="Timeline", title="memprof · timeline")


def x_range(relayout: dict[str, Any] | None) -> tuple[float | None, float | None] | None:
    """The visible x-range from plotly's ``relayoutData``; ``(None, None)`` on autorange; ``None`` when x did not change."""
    if not relayout:
        return None
    if relayout.get("xaxis.autorange") or relayout.get("autosize"):
        return (None, None)
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        r = (relayout["xaxis.range[0]"], relayout["xaxis.range[1]"])
    elif isinstance(relayout.get("xaxis.range"), (list, tuple)) and len(relayout["xaxis.range"]) == 2:
        r = tuple(relayout["xaxis.range"])
    else:
        return None
    try:
        a, b = float(r[0]), float(r[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or a >= b:
        return None
    return (a, b)


def zoom_patch(relayout: dict[str, Any] | None, key: dict[str, Any]) -> tuple[Patch, list[int]]:
    """plotly-resampler style: re-aggregate for the new x-range; only trace data goes back."""
    from dash.exceptions import PreventUpdate

    r = x_range(relayout)
    if r is None or not key:
        raise PreventUpdate
    traces, rows = common.timeline_view(*parse_key(key), *r)
    patch = Patch()
    patch["data"] = traces
    return patch, rows


def stack_panel(click: dict[str, Any] | None, rows: Sequence[int] | None, key: dict[str, Any]) -> Any:
    """The side panel for a click on the timeline: the clicked allocation's full stack."""
    if not click or not click.get("points") or not key:
        return "Click an allocation in the timeline to see its full stack."
    pt = click["points"][0]
    row = pt.get("customdata")
    if not isinstance(row, (int, float)):
        cn = pt.get("curveNumber")
        row = rows[cn] if rows and isinstance(cn, int) and 0 <= cn < len(rows) else -1
    m = library().model(*parse_key(key))
    t = pt.get("x")
    alive = dcc.Link(f"What is alive at {t:.3f} ms", href=f"/allocations?snap={key['snap']}&t={t:.6f}") if isinstance(t, (int, float)) else ""
    if not isinstance(row, (int, float)) or row < 0 or row >= len(m.allocs):
        return html.Div([html.P("No allocation under the cursor."), alive])
    a = m.allocs.iloc[int(row)]
    frames = m.snap.stack(int(a["stack_id"]))
    stack = "\n".join(f"{name}  {fn}:{line}" for fn, line, name in frames) or "(no stack recorded)"
    return html.Div([
        html.B(f"{fmt_bytes(int(a['size']))} · {a['category']}"),
        html.P(f"allocated at {a['t0_ms']:.3f} ms in {a['phase'] or '-'}; freed at "
               + ("end (alive)" if a["alive_at_end"] else f"{a['t1_ms']:.3f} ms")
               + (f"; lived {fmt_us(a['lifetime_us'])}" if a["lifetime_us"] == a["lifetime_us"] else "")),
        html.P(a["site"]),
        html.Pre(stack, id="timeline-stack-frames"),
        alive,
    ])


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
    return zoom_patch(relayout, key)


@callback(Output("timeline-stack", "children"), Input("timeline-graph", "clickData"),
          State("timeline-rows", "data"), State("timeline-key", "data"), prevent_initial_call=True)
def show_stack(click: dict[str, Any] | None, rows: list[int] | None, key: dict[str, Any]) -> Any:
    return stack_panel(click, rows, key)
