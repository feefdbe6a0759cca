"""Library: every snapshot under the served folder with its metadata; open one or compare several."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dash
from dash import Input, Output, State, callback, dcc, html

from app import common
from app.state import collapse_runs, library

dash.register_page(__name__, path="/", name="Library", title="memprof · library")


def library_target(trigger: Any, rows: list[dict[str, Any]] | None, selected: list[int] | None) -> tuple[Any, str]:
    """Where the Library's buttons go: the first selected snapshot's timeline, or Compare of all selected."""
    from dash import no_update

    ids = [int(rows[i]["id"]) for i in (selected or []) if rows and 0 <= i < len(rows)]
    if not ids:
        return no_update, "select one or more rows first"
    if trigger == "library-compare":
        if len(ids) < 2:
            return no_update, "select at least two rows to compare"
        return "/compare?snaps=" + ",".join(map(str, ids)), ""
    return f"/timeline?snap={ids[0]}", ""


def layout(**_: Any) -> html.Div:
    lib = library()
    df = collapse_runs(lib, lib.table())  # a run of many ranks is one row, opening the Ranks page
    df.insert(1, "open", [f"[ranks](/ranks?run={quote(r)})" if r else f"[timeline](/timeline?snap={i})" for i, r in zip(df["id"], df["run"])])
    tbl = common.table("library-table", df, page_size=20, row_selectable="multi", filter_action="native", selected_rows=[])
    tbl.columns = [{"name": c, "id": c, "presentation": "markdown"} if c == "open" else {"name": c, "id": c} for c in df.columns]
    preview: Any = html.P("No snapshots here yet: record one with `memprof record`.", id="library-empty")
    e = lib.default_entry()
    if e is not None:
        try:
            fig, _ = common.timeline_figure(e.id, None, height=420)
            preview = html.Div([html.H4(["latest: ", dcc.Link(e.rel, href=f"/timeline?snap={e.id}")]),
                                dcc.Graph(id="library-preview", figure=fig, config={"displaylogo": False})])
        except Exception as err:  # a broken file must not hide the library
            preview = common.error_box(err)
    return html.Div([
        html.H2("Library"),
        html.P(f"{len(df)} snapshot(s) under {lib.root}", className="sub"),
        html.Div([html.Button("Open timeline", id="library-open"), html.Button("Compare selected", id="library-compare"),
                  html.Span(id="library-hint", className="sub")], className="toolbar"),
        tbl,
        dcc.Location(id="library-go", refresh=True),
        preview,
    ])


@callback(Output("library-go", "href"), Output("library-hint", "children"),
          Input("library-open", "n_clicks"), Input("library-compare", "n_clicks"),
          State("library-table", "derived_virtual_data"), State("library-table", "derived_virtual_selected_rows"),
          prevent_initial_call=True)
def go(_open: Any, _cmp: Any, rows: list[dict[str, Any]] | None, selected: list[int] | None) -> tuple[Any, str]:
    return library_target(dash.ctx.triggered_id, rows, selected)
