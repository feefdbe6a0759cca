"""Timeline: allocated/reserved bytes over time, the largest allocations stacked, phases, peaks.

Zoom and pan are answered on the server (``timeline-graph.relayoutData`` -> a Patch of trace data)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import dash
from dash import Input, Output, Patch, State, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library, parse_key
from memprof.present import figures
from memprof.units import fmt_bytes, fmt_us

dash.register_page(__name__, path="/timeline", name="Timeline", title="memprof · timeline")


def state_layout(sid: int, dev: int | None, m: Any) -> html.Div:
    """An empty trace: no time axis to draw, only what the segments held at dump time (bars of the
    live blocks by source line). Its graph has its own id, so zoom and click callbacks never fire."""
    from memprof.present import figures

    return html.Div([
        html.H2(library().get(sid).rel, id="timeline-title"),
        html.P(common.summary_line(m), className="sub", id="timeline-summary"),
        html.P("No allocation history was recorded in this snapshot (its trace is empty): shown is the state when it "
               "was taken. Record with torch.cuda.memory._record_memory_history() to see memory over time.",
               className="sub", id="timeline-no-history"),
        common.page_links(sid, dev),
        dcc.Graph(id="timeline-state-graph", figure=figures.plot_state(m), config={"displaylogo": False}),
    ])


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
    if r is None and key and key.get("keep_range"):
        r = (None, None)  # the detail changed before any zoom: redraw the whole range
    if r is None or not key:
        raise PreventUpdate
    traces, rows = common.timeline_view(*parse_key(key), *r, k=key.get("k", common.DEFAULT_DETAIL))
    patch = Patch()
    patch["data"] = traces
    return patch, rows


def folded_stack(frames: Sequence[tuple[str, int, str]]) -> str:
    """One line per frame, innermost first; a run of two or more library frames (torch's
    ``Module._call_impl`` chains, site-packages) folds into one line that names their files."""
    import os

    from memprof.snapshot.frames import is_library_file

    lines: list[str] = []
    run: list[tuple[str, int, str]] = []

    def flush() -> None:
        if len(run) >= 2:
            files = ", ".join(dict.fromkeys(os.path.basename(f) for f, _, _ in run))
            lines.append(f"  ⋯ {len(run)} library frames ({files})")
        else:
            lines.extend(f"{n}  {f}:{ln}" for f, ln, n in run)
        run.clear()

    for i, (fn, line, name) in enumerate(frames):
        if is_library_file(str(fn)) and i > 0:  # the innermost frame is always shown: it allocated
            run.append((fn, line, name))
            continue
        flush()
        lines.append(f"{name}  {fn}:{line}")
    flush()
    return "\n".join(lines)


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
    alive = dcc.Link(f"What is alive at {t:.3f} ms", href=f"/allocations?snap={key['snap']}" + ("" if key.get("device") is None else f"&device={key['device']}") + f"&t={t:.6f}") if isinstance(t, (int, float)) else ""
    if not isinstance(row, (int, float)) or row < 0 or row >= len(m.allocs):
        return html.Div([html.P("No allocation under the cursor."), alive])
    a = m.allocs.iloc[int(row)]
    frames = m.snap.stack(int(a["stack_id"]))
    stack = folded_stack(frames) or "(no stack recorded)"
    return html.Div([
        html.B(f"{fmt_bytes(int(a['size']))} · {a['category']}"
               + "".join(f" · {a[c]}" for c in ("name", "module") if c in a and a[c])),
        html.P(f"allocated at {a['t0_ms']:.3f} ms in {a['phase'] or '-'}; freed at "
               + ("end (alive)" if a["alive_at_end"] else f"{a['t1_ms']:.3f} ms")
               + (f"; lived {fmt_us(a['lifetime_us'])}" if a["lifetime_us"] == a["lifetime_us"] else "")),
        html.P(a["site"]),
        html.Pre(stack, id="timeline-stack-frames"),
        alive,
    ])


POLYGON_LINE = {"width": 0.5, "color": "rgba(255,255,255,0.6)"}  # as memprof.present.figures.timeline_traces draws them
HIGHLIGHT_LINE = {"width": 3, "color": "#111"}


def highlight_patch(click: dict[str, Any] | None, rows: Sequence[int] | None, prev: Any) -> tuple[Patch, int | None]:
    """Outline the clicked allocation's block (and restore the one outlined before): a Patch of two
    traces' ``line``, nothing else. Returns (patch, the outlined trace's index)."""
    from dash.exceptions import PreventUpdate

    pts = (click or {}).get("points") or []
    cn = pts[0].get("curveNumber") if pts else None
    if not isinstance(cn, int) or not rows or not 0 <= cn < len(rows) or rows[cn] < 0:
        raise PreventUpdate  # a curve or marker, not an allocation's block
    patch = Patch()
    if isinstance(prev, int) and prev != cn and 0 <= prev < len(rows) and rows[prev] >= 0:
        patch["data"][prev]["line"] = POLYGON_LINE
    patch["data"][cn]["line"] = HIGHLIGHT_LINE
    return patch, cn


def detail_control(m: Any) -> html.Div:
    """How many allocations to draw as blocks: the largest 80 (fast), 300, or 1,000 (every one, when fewer)."""
    n = len(m.allocs)
    opts: list[dict[str, Any]] = []
    for k in common.DETAIL_LEVELS:
        opts.append({"label": f"{k:,} largest" if k < n else f"all {n:,}", "value": k})
        if k >= n:
            break
    return html.Div([html.Label("allocations drawn as blocks"),
                     dcc.RadioItems(id="timeline-detail", options=opts, value=min(common.DEFAULT_DETAIL, opts[-1]["value"]), inline=True),
                     html.Span(f"of {n:,}; every smaller one is drawn in its category's band", className="sub")], className="toolbar")


def detail_patch(k: Any, relayout: dict[str, Any] | None, key: dict[str, Any]) -> tuple[Patch, list[int], dict[str, Any]]:
    """Redraw the visible range with ``k`` blocks: a Patch of the trace data, the rows, and the key remembering ``k``."""
    r = x_range(relayout) or (None, None)
    key = {**key, "k": int(k) if k in common.DETAIL_LEVELS else common.DEFAULT_DETAIL}
    traces, rows = common.timeline_view(int(key["snap"]), key.get("device"), *r, k=key["k"])
    patch = Patch()
    patch["data"] = traces
    return patch, rows, key


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        if not m.rep.has_trace:
            return state_layout(sid, dev, m)
        fig, rows = common.timeline_figure(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Timeline"), common.error_box(e)])
    return html.Div([
        html.H2(library().get(sid).rel, id="timeline-title"),
        html.P(common.summary_line(m), className="sub", id="timeline-summary"),
        common.page_links(sid, dev),
        detail_control(m),
        html.Div([
            html.Div(dcc.Graph(id="timeline-graph", figure=fig, config={"displaylogo": False, "scrollZoom": True}), className="grow"),
            html.Div(html.Div("Click an allocation in the timeline to see its full stack.", id="timeline-stack"), className="side"),
        ], className="row"),
        dcc.Store(id="timeline-key", data={"snap": sid, "device": dev}),
        dcc.Store(id="timeline-rows", data=rows),
        dcc.Store(id="timeline-highlight", data=None),
    ])


@callback(Output("timeline-graph", "figure"), Output("timeline-rows", "data"),
          Input("timeline-graph", "relayoutData"), State("timeline-key", "data"), prevent_initial_call=True)
def zoom(relayout: dict[str, Any] | None, key: dict[str, Any]) -> Any:
    return zoom_patch(relayout, key)


def _triggered() -> Any:
    try:
        return dash.ctx.triggered_id
    except Exception:  # noqa: BLE001 - called outside a callback (tests)
        return None


@callback(Output("timeline-stack", "children"), Input("timeline-graph", "clickData"),
          State("timeline-rows", "data"), State("timeline-key", "data"), prevent_initial_call=True)
def show_stack(click: dict[str, Any] | None, rows: list[int] | None, key: dict[str, Any]) -> Any:
    return stack_panel(click, rows, key)


@callback(Output("timeline-graph", "figure", allow_duplicate=True), Output("timeline-highlight", "data"),
          Input("timeline-graph", "clickData"), State("timeline-rows", "data"), State("timeline-highlight", "data"),
          prevent_initial_call=True)
def highlight(click: dict[str, Any] | None, rows: list[int] | None, prev: Any) -> Any:
    return highlight_patch(click, rows, prev)


@callback(Output("timeline-graph", "figure", allow_duplicate=True), Output("timeline-rows", "data", allow_duplicate=True),
          Output("timeline-key", "data"), Input("timeline-detail", "value"), State("timeline-graph", "relayoutData"),
          State("timeline-key", "data"), prevent_initial_call=True)
def detail(k: Any, relayout: dict[str, Any] | None, key: dict[str, Any]) -> Any:
    return detail_patch(k, relayout, key)
