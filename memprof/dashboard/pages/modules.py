"""Modules: memory by module path at the peak (or any moment) as an icicle or a treemap.

Names and modules come from what memprof's recorder stored in the snapshot
(:mod:`memprof.analysis.attribution`); a snapshot from anyone else shows everything under '<no module>'
by category. Clicking a module filters the panel below to it: its memory over time by category
and its allocations alive at the chosen moment.
"""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, State, callback, dash_table, dcc, html

from dash.exceptions import PreventUpdate

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.present import figures, views
from memprof.errors import MemprofError
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/modules", name="Modules", title="memprof · modules")

TABLE_COLUMNS = ("size_h", "name", "module", "category", "phase", "site", "alloc_ms", "free_ms")


def tree_figure(key: dict[str, Any], kind: str, t_ms: Any) -> Any:
    """The icicle/treemap of what is alive at ``t_ms`` (the peak when not a number)."""
    m = library().model(int(key["snap"]), key.get("device"))
    t = float(t_ms) if isinstance(t_ms, (int, float)) else m.peak_ms
    t = min(max(t, 0.0), m.end_ms)
    alive = views.alive_at(m, t)
    label = "at the peak" if abs(t - m.peak_ms) < 1e-9 else f"at {t:.3f} ms"
    fig = figures.plot_module_tree(views.module_tree(alive), kind="treemap" if kind == "treemap" else "icicle",
                                   title=f"{fmt_bytes(int(alive['size'].sum()))} alive {label}, by module")
    return fig


def selected_module(click: dict[str, Any] | None) -> str:
    """The module path a clicked node stands for ('' for the root)."""
    try:
        pt = click["points"][0]  # type: ignore[index]
        return str(pt["customdata"][0])
    except (TypeError, KeyError, IndexError):
        return ""


def module_panel(key: dict[str, Any], module: str, t_ms: Any) -> list[Any]:
    """The module's memory over time and its largest allocations alive at ``t_ms``."""
    m = library().model(int(key["snap"]), key.get("device"))
    t = float(t_ms) if isinstance(t_ms, (int, float)) else m.peak_ms
    mask = views.module_mask(m.allocs, module)
    sub = m.allocs[mask]
    live = (sub["t0_ms"].to_numpy() <= t) & ((sub["t1_ms"].to_numpy() > t) | sub["alive_at_end"].to_numpy())
    alive = sub[live].sort_values("size", ascending=False, kind="stable")
    rows = pd.DataFrame({
        "size_h": [fmt_bytes(int(s)) for s in alive["size"].head(200)],
        "name": alive["name"].head(200).astype(str), "module": alive["module"].head(200).astype(str),
        "category": alive["category"].head(200).astype(str), "phase": alive["phase"].head(200).astype(str),
        "site": alive["site"].head(200).astype(str), "alloc_ms": alive["t0_ms"].head(200).round(3),
        "free_ms": alive["t1_ms"].head(200).round(3),
    })
    title = module or "everything"
    return [
        html.H3(f"{title}: {fmt_bytes(int(alive['size'].sum()))} in {len(alive):,} allocations alive at {t:.3f} ms "
                f"({len(sub):,} allocations over the whole trace)", id="modules-selected-title"),
        dcc.Graph(id="modules-timeline", figure=figures.plot_module_timeline(views.module_timeline(m, module), module),
                  config={"displaylogo": False}),
        dash_table.DataTable(id="modules-table",  # type: ignore[attr-defined]  # dash's stubs lack DataTable columns=[{"name": c, "id": c} for c in TABLE_COLUMNS],
                             data=rows.to_dict("records"), page_size=12, sort_action="native",
                             style_cell={"fontFamily": "monospace", "fontSize": 12, "padding": "3px 6px", "textAlign": "left"},
                             style_header={"fontWeight": "bold", "backgroundColor": "#f3f4f6"}),
    ]


def layout(snap: str | None = None, device: str | None = None, t: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        t_ms = float(t) if t not in (None, "") else m.peak_ms
        key = {"snap": sid, "device": dev}
        fig = tree_figure(key, "icicle", t_ms)
        panel = module_panel(key, "", t_ms)
    except Exception as e:
        return html.Div([html.H2("Modules"), common.error_box(e)])
    return html.Div([
        html.H2(f"Modules · {library().get(sid).rel}"),
        html.P(common.summary_line(m), className="sub"),
        common.page_links(sid, dev),
        html.Div([
            dcc.RadioItems(id="modules-kind", options=[{"label": " icicle", "value": "icicle"}, {"label": " treemap", "value": "treemap"}],
                           value="icicle", inline=True),
            html.Label(" moment (ms since start) "),
            dcc.Input(id="modules-time", type="number", value=round(t_ms, 6), debounce=True, step="any"),
            html.Button("peak", id="modules-peak", n_clicks=0),
        ], className="row"),
        dcc.Graph(id="modules-graph", figure=fig, config={"displaylogo": False}),
        html.P("Click a module to filter the panel below to it (its memory over time and its allocations).", className="sub"),
        dcc.Store(id="modules-key", data={**key, "peak_ms": m.peak_ms}),
        dcc.Store(id="modules-selected", data=""),
        html.Div(panel, id="modules-panel"),
    ])


@callback(Output("modules-time", "value"), Input("modules-peak", "n_clicks"), State("modules-key", "data"), prevent_initial_call=True)
def to_peak(_n: int, key: dict[str, Any]) -> Any:
    return round(float(key["peak_ms"]), 6)


@callback(Output("modules-graph", "figure"), Input("modules-kind", "value"), Input("modules-time", "value"),
          State("modules-key", "data"), prevent_initial_call=True)
def redraw(kind: str, t_ms: Any, key: dict[str, Any]) -> Any:
    try:
        return tree_figure(key, kind, t_ms)
    except (MemprofError, TypeError, ValueError, KeyError):
        raise PreventUpdate from None


@callback(Output("modules-panel", "children"), Output("modules-selected", "data"), Input("modules-graph", "clickData"),
          Input("modules-time", "value"), State("modules-selected", "data"), State("modules-key", "data"), prevent_initial_call=True)
def select(click: dict[str, Any] | None, t_ms: Any, current: str, key: dict[str, Any]) -> Any:
    module = selected_module(click) if dash.ctx.triggered_id == "modules-graph" else (current or "")
    return common.guard(module_panel, key, module, t_ms), module
