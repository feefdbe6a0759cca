"""Ranks: one run of many ranks (torchrun) — peak per rank, every rank's timeline aligned by
iteration, the imbalance, and a click through to any rank's timeline.

Everything here is read from the ranks' summaries (:mod:`memprof.analysis.ranks`); a rank's full snapshot
is opened only on its Timeline page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.present import figures_ranks
from memprof.errors import MemprofError
from memprof.units import fmt_bytes
from memprof.analysis.ranks import aligned_timelines, imbalance, load_summaries, ranks_frame

dash.register_page(__name__, path="/ranks", name="Ranks", title="memprof · ranks")


def run_data(rel: str | None) -> tuple[str, dict[int, Any], list[dict[str, Any]]]:
    """(run folder, {rank: library entry}, summaries) of a served run; the first run when ``rel`` is empty.
    Summaries are cached per run and the rank files' identities."""
    lib = library()
    runs = lib.runs()
    if not runs:
        raise MemprofError(f"no runs of many ranks under {lib.root}: record one with `memprof record -- torchrun ...`")
    rel = rel or next(iter(runs))
    if rel not in runs:
        raise MemprofError("no such run in the served folder")
    entries = runs[rel]
    key = ("ranks", rel, tuple((e.rel, e.mtime_ns) for e in entries.values()))
    folder = next(iter(entries.values())).path.parent
    lib.check_run(folder)  # what load_summaries reads: regular files inside the served folder, checked now
    # summaries the run lacks are kept in the cache folder: the dashboard never writes into DIR
    sums = lib.views.get_or_make(key, lambda: load_summaries(folder, workers=1, beside=False))
    return rel, entries, sums


def imbalance_frame(im: dict[str, Any] | None) -> pd.DataFrame:
    """The imbalance as one table: what (category or source line), lightest, heaviest, more."""
    cols = ["what", "kind", "lightest rank", "heaviest rank", "more on the heaviest"]
    if not im:
        return pd.DataFrame(columns=cols)
    rows = [{"what": c["category"], "kind": "category", "lightest rank": fmt_bytes(c["lightest_bytes"]),
             "heaviest rank": fmt_bytes(c["heaviest_bytes"]), "more on the heaviest": fmt_bytes(c["delta"])} for c in im["by_category"]]
    rows += [{"what": s["site"], "kind": "source line", "lightest rank": fmt_bytes(s["lightest_bytes"]),
              "heaviest rank": fmt_bytes(s["heaviest_bytes"]), "more on the heaviest": fmt_bytes(s["delta"])} for s in im["by_site"]]
    return pd.DataFrame(rows, columns=cols)


def content(rel: str | None) -> list[Any]:
    rel, entries, sums = run_data(rel)
    ids = {r: e.id for r, e in entries.items()}
    rf = ranks_frame(sums)
    im = imbalance(sums)
    head = f"{len(sums)} ranks"
    if im:
        ratio = f"{im['ratio']:.3f}x" if im["ratio"] else "-"
        head += (f" · heaviest rank {im['heaviest_rank']} {fmt_bytes(im['heaviest_bytes'])} · lightest rank {im['lightest_rank']} "
                 f"{fmt_bytes(im['lightest_bytes'])} · {ratio}")
    table = pd.DataFrame({
        "rank": rf["rank"], "status": rf["status"],
        "peak allocated": [fmt_bytes(v) if v == v and v is not None else "-" for v in rf["peak_allocated_bytes"]],
        "peak reserved": [fmt_bytes(v) if v == v and v is not None else "-" for v in rf["peak_reserved_bytes"]],
        "host": rf["host"].fillna(""),
        "timeline": [f"[timeline](/timeline?snap={ids[r]})" if r in ids else "" for r in rf["rank"]],
        "error": rf["error"].fillna(""),
    })
    tbl = common.table("ranks-table", table, page_size=16)
    tbl.columns = [{"name": c, "id": c, "presentation": "markdown"} if c == "timeline" else {"name": c, "id": c} for c in table.columns]
    return [
        html.H2(f"{rel}/", id="ranks-title"),
        html.P(head, className="sub", id="ranks-summary"),
        dcc.Graph(id="ranks-peaks", figure=figures_ranks.plot_rank_peaks(rf, [ids.get(r) for r in rf["rank"]]), config={"displaylogo": False}),
        dcc.Graph(id="ranks-timelines", figure=figures_ranks.plot_aligned_timelines(aligned_timelines(sums), ids), config={"displaylogo": False}),
        html.H4("Imbalance: what the heaviest rank holds at its peak that the lightest does not"),
        html.Div(dcc.Link(f"compare rank {im['lightest_rank']} with rank {im['heaviest_rank']}", id="ranks-compare",
                          href=f"/compare?snaps={ids[im['lightest_rank']]},{ids[im['heaviest_rank']]}")
                 if im and im["lightest_rank"] in ids and im["heaviest_rank"] in ids else "", className="links"),
        common.table("ranks-imbalance", imbalance_frame(im), page_size=12),
        html.H4("Ranks"),
        tbl,
    ]


def click_target(click: dict[str, Any] | None) -> Any:
    """The timeline of the rank whose bar or line was clicked."""
    try:
        sid = click["points"][0]["customdata"]  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return dash.no_update
    return dash.no_update if sid is None else f"/timeline?snap={int(sid)}"


def layout(run: str | None = None, **_: Any) -> html.Div:
    lib = library()
    options = [{"label": f"{rel}/ ({len(es)} ranks)", "value": rel} for rel, es in lib.runs().items()]
    try:
        body = content(run)
    except MemprofError as e:
        body = [html.H2("Ranks"), common.error_box(e)]
    return html.Div([
        dcc.Dropdown(id="ranks-select", options=options, value=run or (options[0]["value"] if options else None), clearable=False),
        html.Div(body, id="ranks-body"),
        dcc.Location(id="ranks-go", refresh=True),
    ])


@callback(Output("ranks-go", "href"), Input("ranks-peaks", "clickData"), Input("ranks-timelines", "clickData"), prevent_initial_call=True)
def go(peaks: dict[str, Any] | None, lines: dict[str, Any] | None) -> Any:
    return click_target(peaks if dash.ctx.triggered_id == "ranks-peaks" else lines)


@callback(Output("ranks-go", "href", allow_duplicate=True), Input("ranks-select", "value"), prevent_initial_call=True)
def pick(rel: str | None) -> Any:
    return f"/ranks?run={quote(rel)}" if rel else dash.no_update
