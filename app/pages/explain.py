"""Explain: why the peak is what it is: the verdict with its numbers, the breakdown, the analytic account."""

from __future__ import annotations

from typing import Any

import dash
from dash import html

from app import common
from app.state import library

dash.register_page(__name__, path="/explain", name="Explain", title="memprof · explain")


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        body = common.explain_content(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Explain"), common.error_box(e)])
    return html.Div([html.H2(f"Explain · {library().get(sid).rel}"), html.P(common.summary_line(m), className="sub"),
                     common.page_links(sid, dev), *body])
