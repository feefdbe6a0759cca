"""Flame: the memory alive at the peak (or any moment) by call stack, as an icicle."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.present import figures, flame, views
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/flame", name="Flame", title="memprof · flame graph")


def flame_figure(key: dict[str, Any], t_ms: Any, search: str | None = None, fold: bool = True) -> tuple[Any, str]:
    """The icicle of what is alive at ``t_ms`` (the peak when empty or not a number), and its summary
    line; with ``search``, only the allocations with a frame whose ``function (file:line)`` contains it."""
    m = library().model(int(key["snap"]), key.get("device"))
    try:
        t = float(t_ms)
    except (TypeError, ValueError):
        t = m.peak_ms
    alive = views.alive_at(m, t)
    total = int(alive["size"].sum())
    text = (search or "").strip()
    if text:
        alive = alive[flame.stacks_matching(m, alive, text)]
    tree = flame.call_tree(m, alive, min_share=0.0005, fold_library=fold)
    at = "the peak" if t == m.peak_ms else f"{t:.3f} ms"
    got = int(alive["size"].sum())
    what = f"{fmt_bytes(got)} of {fmt_bytes(total)} under a frame matching {text!r}" if text else fmt_bytes(total)
    fig = figures.plot_icicle(tree, title=f"alive at {at}: {what}, by call stack (click a box to zoom)")
    return fig, f"{len(alive):,} allocations alive at {t:.3f} ms, {what}, {len(tree) - 1:,} frames"


def layout(snap: str | None = None, device: str | None = None, t: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        t_ms = float(t) if t not in (None, "") else m.peak_ms
        fig, summary = flame_figure({"snap": sid, "device": dev}, t_ms)
    except Exception as e:
        return html.Div([html.H2("Flame graph"), common.error_box(e)])
    return html.Div([
        html.H2(f"Flame graph · {library().get(sid).rel}", id="flame-title"),
        html.P(common.summary_line(m), className="sub"),
        common.page_links(sid, dev),
        dcc.Store(id="flame-key", data={"snap": sid, "device": dev}),
        html.Div([html.Label("alive at T (ms since start; empty: the peak)"),
                  dcc.Input(id="flame-time", type="number", value=round(t_ms, 6), debounce=True, step="any", style={"width": "160px"}),
                  html.Label("frame contains"),
                  dcc.Input(id="flame-search", type="text", value="", debounce=True, placeholder="e.g. attention.py:29 or backward",
                            style={"width": "260px"}),
                  dcc.Checklist(id="flame-fold", options=[{"label": " fold torch's own frames (Module._call_impl ...)", "value": "fold"}],
                                value=["fold"])], className="toolbar"),
        html.P(summary, id="flame-summary", className="sub"),
        dcc.Graph(id="flame-graph", figure=fig, config={"displaylogo": False}),
        html.P("Each box is a frame, as wide as the bytes alive under it; memprof's own recorder and runpy frames are left out "
               "(and, folded, torch's own frames but the innermost). "
               "Click a box to zoom into it, the top bar to zoom out.", className="sub"),
    ])


@callback(Output("flame-graph", "figure"), Output("flame-summary", "children"),
          Input("flame-time", "value"), Input("flame-search", "value"), Input("flame-fold", "value"), State("flame-key", "data"),
          prevent_initial_call=True)
def update(t_ms: Any, search: str | None, fold: list[str] | None, key: dict[str, Any]) -> Any:
    return flame_figure(key, t_ms, search, bool(fold))
