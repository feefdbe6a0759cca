"""Compare: two or more snapshots on one time axis aligned by phase, with diff tables."""

from __future__ import annotations

from typing import Any, Sequence

import dash
from dash import Input, Output, callback, dcc, html

from app import common
from app.state import library
from memprof import figures, views

dash.register_page(__name__, path="/compare", name="Compare", title="memprof · compare")


def compare_content(ids: Sequence[Any], device: int | None = None) -> list[Any]:
    """Several snapshots on one time axis aligned at their first forward, and diff tables against the first."""
    lib = library()
    ids = [lib.get(i).id for i in ids][:6]
    if len(ids) < 2:
        return [html.P("Pick two or more snapshots to compare.", id="compare-hint")]
    models = [lib.model(i, device) for i in ids]
    labels = [lib.get(i).rel for i in ids]
    curves = []
    for lab, m in zip(labels, models):
        off = views.align_offset(m)
        x, y = views.step_view(m.t_alloc, m.allocated, None, None, 1500)
        curves.append((lab, x - off, y))
    base = models[0]
    ph0 = base.phases.assign(start_ms=base.phases["start_ms"] - views.align_offset(base), end_ms=base.phases["end_ms"] - views.align_offset(base))
    fig = figures.plot_compare(curves, [ph0])
    summ = views.compare_summary(models, labels)
    cat = views.diff_by(models, labels, "category")
    site = views.diff_by(models, labels, "site").head(25)
    return [
        dcc.Graph(id="compare-graph", figure=fig),
        html.H4("summary"), common.table("compare-summary", summ),
        html.H4(f"alive at the peak by category (Δ against {labels[0]})"), common.table("compare-categories", cat),
        html.H4("by site"), common.table("compare-sites", site),
    ]


def layout(snaps: str | None = None, **_: Any) -> html.Div:
    lib = library()
    entries = lib.entries()
    try:
        ids = [lib.get(s.strip()).id for s in (snaps or "").split(",") if s.strip()]
    except Exception as e:
        return html.Div([html.H2("Compare"), common.error_box(e)])
    if not ids:
        ids = [e.id for e in entries[:2]]
    return html.Div([
        html.H2("Compare"),
        dcc.Dropdown(id="compare-select", options=[{"label": e.rel, "value": e.id} for e in entries], value=ids, multi=True),
        dcc.Loading(html.Div(id="compare-body")),
    ])


@callback(Output("compare-body", "children"), Input("compare-select", "value"))
def update(ids: list[int] | None) -> Any:
    return common.guard(compare_content, ids or [])
