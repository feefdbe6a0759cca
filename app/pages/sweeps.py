"""Sweeps: ``memprof sweep`` results (``results.csv``): tables and time/peak plots against seq_len."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, callback, dcc, html

from app import common
from app.state import library

dash.register_page(__name__, path="/sweeps", name="Sweeps", title="memprof · sweeps")


def layout(sweep: str | None = None, **_: Any) -> html.Div:
    found = library().sweeps()
    if not found:
        return html.Div([html.H2("Sweeps"), html.P("No sweep results (results.csv) under the served folder.", id="sweeps-empty")])
    value = int(sweep) if isinstance(sweep, str) and sweep.isascii() and sweep.isdigit() and len(sweep) < 9 and int(sweep) < len(found) else 0
    return html.Div([
        html.H2("Sweeps"),
        dcc.Dropdown(id="sweeps-select", options=[{"label": rel, "value": i} for i, rel, _ in found], value=value, clearable=False),
        html.Div(id="sweeps-body"),
    ])


@callback(Output("sweeps-body", "children"), Input("sweeps-select", "value"))
def update(i: int) -> Any:
    return common.guard(common.sweep_content, i)
