"""Compare: two or more snapshots on one time axis aligned by phase, with diff tables."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from app import common
from app.state import library

dash.register_page(__name__, path="/compare", name="Compare", title="memprof · compare")


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
    return common.guard(common.compare_content, ids or [])
