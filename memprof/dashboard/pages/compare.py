"""Compare: two or more snapshots on one time axis, each phase of each iteration aligned, with diff tables."""

from __future__ import annotations

from typing import Any, Sequence

import dash
import numpy as np
from dash import Input, Output, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.present import figures, views

dash.register_page(__name__, path="/compare", name="Compare", title="memprof · compare")


def aligned_curves(models: Sequence[views.TimelineModel], labels: Sequence[str]) -> tuple[list[tuple[Any, ...]], list[Any], str]:
    """Each snapshot's allocated curve and phases on the first one's clock: every phase of every
    iteration they share is stretched onto the first's (piecewise linear, :func:`memprof.present.views.warp`);
    without shared phases, shifted to line up their first forward. Returns (curves, phases, how)."""
    base = models[0]
    curves, phases, matched = [], [], 0
    for lab, m in zip(labels, models):
        knots = views.phase_knots(base, m)
        if len(knots[0]) < 2:  # nothing to stretch: line up the first forwards
            off = views.align_offset(m) - views.align_offset(base)
            knots = (np.array([off]), np.array([0.0]))
        else:
            matched += 1
        x, y = views.step_view(m.t_alloc, m.allocated, None, None, 1500)
        curves.append((lab, views.warp(x, knots), y, x))
        phases.append(m.phases.assign(start_ms=views.warp(m.phases["start_ms"].to_numpy(float), knots),
                                      end_ms=views.warp(m.phases["end_ms"].to_numpy(float), knots)))
    how = ("each phase of each iteration aligned to " + labels[0]) if matched == len(models) else "first forwards lined up"
    return curves, phases, how


def compare_content(ids: Sequence[Any], device: int | None = None) -> list[Any]:
    """Several snapshots on one time axis, each phase of each iteration aligned to the first, and diff tables against the first."""
    lib = library()
    ids = [lib.get(i).id for i in ids][:6]
    if len(ids) < 2:
        return [html.P("Pick two or more snapshots to compare.", id="compare-hint")]
    models = [lib.model(i, device) for i in ids]
    labels = [lib.get(i).rel for i in ids]
    curves, phases, how = aligned_curves(models, labels)
    fig = figures.plot_compare(curves, phases, x_title=f"time on {labels[0]}'s clock (ms), {how}")
    summ = views.compare_summary(models, labels)
    mib = {lab: f"{lab} (MiB)" for lab in labels} | {"delta_MiB": "Δ (MiB)"}  # numbers stay sortable; the unit is in the header
    cat = views.diff_by(models, labels, "category").rename(columns=mib)
    site = views.diff_by(models, labels, "site").head(25).rename(columns=mib)
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
