"""Explain: why the peak is what it is: the verdict with its numbers, the breakdown, the analytic account."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import dcc, html

from app import common
from app.state import library
from memprof import figures, views
from memprof.format import fmt_bytes

dash.register_page(__name__, path="/explain", name="Explain", title="memprof · explain")


def explain_content(snap_id: int, device: int | None) -> list[Any]:
    """Verdict with its numbers, breakdown of the peak, analytic account."""
    m = library().model(snap_id, device)
    v = views.verdict(m)
    at_peak = views.alive_at(m, m.peak_ms)
    if not m.rep.has_trace:  # an empty trace: no iterations, no verdict, only the state at dump time
        head = html.Div([html.Div("no history recorded", className="verdict", id="explain-verdict"), html.P(
            "The snapshot's trace is empty: it holds the state when it was taken, not how memory got there. Below are "
            "the live blocks at dump time. Record with torch.cuda.memory._record_memory_history() (or `memprof record`) "
            "for the timeline, the iterations and the verdict.", id="explain-no-history")], className="card")
    else:
        head = html.Div([html.Div(v["verdict"], className="verdict", id="explain-verdict"), html.P(v["explanation"]),
                         html.Ul([html.Li(r) for r in v["remedies"]])], className="card")
    out: list[Any] = [
        head,
        html.H4("numbers"),
        common.table("explain-numbers", pd.DataFrame({"quantity": list(v["numbers"]), "value": [str(x) for x in v["numbers"].values()]}), page_size=20),
        html.Div([
            html.Div(dcc.Graph(id="explain-categories", figure=figures.plot_category_bars(views.by_category(at_peak))), className="grow"),
        ], className="row"),
        html.H4("largest sites alive at the peak"),
        common.table("explain-sites", views.by_site(at_peak).assign(bytes=lambda d: [fmt_bytes(int(b)) for b in d["bytes"]])),
        html.H4("analytic account"),
        common.table("explain-analytic", views.analytic_account(m), page_size=20),
    ]
    return out


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        body = explain_content(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Explain"), common.error_box(e)])
    return html.Div([html.H2(f"Explain · {library().get(sid).rel}"), html.P(common.summary_line(m), className="sub"),
                     common.page_links(sid, dev), *body])
