"""Live: follow a running ``memprof record --live`` (or ``memprof.record(..., live=True)``) on a loopback port.

The server follows the recording process's stream (:func:`memprof.live.follow`); the page polls the
server twice a second and redraws only when something new arrived. When the run ends, the page links
to its snapshot (when it lies under the served folder). Helpers live beside the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from memprof.dashboard.state import library
from memprof import live
from memprof.errors import MemprofError
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/live", name="Live", title="memprof · live")

STATUS_TEXT = {"waiting": "waiting for a recording on this port", "running": "recording", "lost": "connection lost (retrying)",
               "ok": "finished", "done": "finished", "oom": "finished: OUT OF MEMORY", "error": "finished with an error"}


def layout(port: str | None = None, **_: Any) -> html.Div:
    p = port if port not in (None, "") else str(live.DEFAULT_PORT)
    return html.Div([
        html.H2("Live"),
        html.P(["Follows a recording started with ", html.Code("memprof record --live ..."), " or ",
                html.Code("memprof.record(path, live=True)"), " on this machine."], className="sub"),
        html.Div([html.Label("port", htmlFor="live-port"), dcc.Input(id="live-port", type="number", value=p, min=1, max=65535, debounce=True),
                  html.Span(id="live-status", className="sub")], className="toolbar"),
        html.Div(id="live-now", className="card"),
        dcc.Graph(id="live-graph", figure=live_figure([], 0.0), config={"displaylogo": False}),
        html.Div(id="live-growth"),
        html.Div(id="live-snapshot", className="card"),
        dcc.Interval(id="live-interval", interval=500),
        dcc.Store(id="live-version", data=None),
    ])


@callback(Output("live-graph", "figure"), Output("live-status", "children"), Output("live-now", "children"),
          Output("live-growth", "children"), Output("live-snapshot", "children"), Output("live-version", "data"),
          Input("live-interval", "n_intervals"), Input("live-port", "value"), State("live-version", "data"))
def refresh(_n: Any, port: Any, version: Any) -> tuple[Any, ...]:
    return update(port, version)


def update(port: Any, version: Any) -> tuple[Any, ...]:
    """(figure, status, now, growth, snapshot, version) for ``port``; ``no_update`` everywhere when nothing changed."""
    try:
        p = int(port)
        f = live.follow(p)
    except (TypeError, ValueError, MemprofError):
        return (dash.no_update, f"not a port: {str(port)[:20]}", "", "", "", None)
    v = f.view()
    key = f"{p}:{v['version']}"
    if key == version:
        return (dash.no_update,) * 6
    samples = v["samples"]
    hello = v["hello"]
    t0 = float(hello.get("started") or (samples[0]["t"] if samples else 0.0))
    status = STATUS_TEXT.get(v["status"], v["status"])
    if hello.get("pid"):
        status += f" · pid {hello['pid']} · {hello.get('device', '')} · {hello.get('command', '')}"
    return (live_figure(samples, t0, hello.get("source", "")), status, now_panel(samples, hello), growth_panel(samples),
            snapshot_panel(v["snapshot"], v["status"]), key)


def live_figure(samples: list[dict[str, Any]], t0: float, source: str = "") -> go.Figure:
    """Allocated (and reserved, when the device has it) in MiB against seconds since the run started."""
    x = [s["t"] - t0 for s in samples]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[s["allocated"] / 2**20 for s in samples], name="allocated", mode="lines",
                             text=[f"{s['phase'] or '-'} · iteration {s['iteration'] if s['iteration'] is not None else '-'}" for s in samples],
                             hovertemplate="%{y:.1f} MiB at %{x:.1f} s<br>%{text}<extra>allocated</extra>"))
    if any(s["reserved"] is not None for s in samples):
        fig.add_trace(go.Scatter(x=x, y=[None if s["reserved"] is None else s["reserved"] / 2**20 for s in samples], name="reserved",
                                 mode="lines", line={"dash": "dot"}, hovertemplate="%{y:.1f} MiB at %{x:.1f} s<extra>reserved</extra>"))
    fig.update_layout(height=380, margin={"l": 60, "r": 20, "t": 30, "b": 40}, xaxis_title="seconds since the run started",
                      yaxis_title="MiB" + (f" ({source})" if source else ""), uirevision="live", legend={"orientation": "h"})
    return fig


def now_panel(samples: list[dict[str, Any]], hello: dict[str, Any]) -> Any:
    if not samples:
        return "no samples yet"
    s = samples[-1]
    parts = [f"allocated {fmt_bytes(s['allocated'])}"]
    if s["reserved"] is not None:
        parts.append(f"reserved {fmt_bytes(s['reserved'])}")
    parts.append(f"phase {s['phase'] or '-'}")
    parts.append(f"iteration {s['iteration'] if s['iteration'] is not None else '-'}")
    if s["iteration_growth"] is not None:
        parts.append(f"last iteration {'+' if s['iteration_growth'] > 0 else ''}{fmt_bytes(s['iteration_growth'])}")
    return html.Span(" · ".join(parts), id="live-now-text")


def growth_panel(samples: list[dict[str, Any]]) -> Any:
    g = samples[-1]["growth"] if samples else []
    if not g:
        return ""
    rows = [html.Tr([html.Td(x["phase"]), html.Td(("+" if x["bytes"] > 0 else "") + fmt_bytes(x["bytes"]))]) for x in g]
    return html.Div([html.H4("growth per phase, last completed iteration"),
                     html.Table([html.Thead(html.Tr([html.Th("phase"), html.Th("net change")])), html.Tbody(rows)], id="live-growth-table")])


def snapshot_panel(snapshot: str | None, status: str) -> Any:
    """A link to the finished run's snapshot when it is under the served folder, else its path."""
    if not snapshot:
        return "the snapshot is linked here when the run ends" if status in ("waiting", "running", "lost") else "no snapshot was written"
    lib = library()
    p = Path(snapshot)
    try:
        if p.is_absolute() and lib.inside(p) and p.is_file():
            lib.entries(rescan=True)
            e = lib.get(p.resolve().relative_to(lib.root).as_posix())
            return html.Span(["snapshot: ", dcc.Link(e.rel, href=f"/timeline?snap={e.id}", id="live-snapshot-link")])
    except (MemprofError, OSError, ValueError):
        pass
    return html.Span(f"snapshot written to {snapshot} (outside the served folder: memprof serve {p.parent})")
