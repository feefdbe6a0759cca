"""Library: every snapshot under the served folder with its metadata; open one or compare several."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dash
from dash import Input, Output, State, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import collapse_runs, library
from memprof.errors import MemprofError

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


#: Long text columns wrap inside these widths instead of widening the table past the screen.
WRAP_WIDTHS = {"name": "200px", "options": "180px", "device": "100px", "run": "80px"}


def header(col: str) -> str:
    """``peak_allocated_mib`` -> ``peak allocated (MiB)``: words a header can wrap at."""
    if col == "recorded":
        return "recorded (UTC)"
    for suf, unit in (("_mib", "MiB"), ("_ms", "ms")):
        if col.endswith(suf):
            return f"{col[: -len(suf)].replace('_', ' ')} ({unit})"
    return col.replace("_", " ")


def fit_to_screen(tbl: Any) -> None:
    """Wrap the long columns (name, options, device) so the table fits a 1400 px window; the full
    text stays in a tooltip."""
    tbl.style_table = {"overflowX": "auto", "maxWidth": "100%"}
    tbl.style_cell = {"fontFamily": "monospace", "fontSize": 12, "padding": "3px 6px", "textAlign": "left",
                      "whiteSpace": "normal", "height": "auto", "maxWidth": "110px"}
    tbl.style_cell_conditional = [{"if": {"column_id": c}, "minWidth": w, "maxWidth": w, "width": w, "wordBreak": "break-all"}
                                  for c, w in WRAP_WIDTHS.items()]
    tbl.style_header = {"fontWeight": "bold", "backgroundColor": "#f3f4f6", "whiteSpace": "normal", "height": "auto"}
    tbl.tooltip_data = [{c: {"value": str(r.get(c, "")), "type": "text"} for c in ("options",)} for r in tbl.data]
    tbl.tooltip_duration = None


def upload_box() -> Any:
    """Drop or choose a snapshot file: it opens here, like pytorch.org/memory_viz (see :mod:`app.upload`)."""
    from memprof.dashboard.upload import MAX_UPLOAD_BYTES

    return html.Div([
        dcc.Upload(html.Div(["Drop a snapshot here or ", html.A("choose a file"),
                             f" (.pickle, .pickle.gz, .json; up to {MAX_UPLOAD_BYTES >> 20} MiB; kept in a private temporary folder)"]),
                   id="library-upload", max_size=MAX_UPLOAD_BYTES, multiple=False, className="upload"),
        html.Div(id="library-upload-status", className="sub"),
    ])


def upload_target(contents: str | None, filename: str | None) -> tuple[Any, Any]:
    """Where an uploaded snapshot goes: its timeline; or the one-line reason it was refused."""
    from dash import no_update

    from memprof.dashboard.upload import save_upload

    if not contents:
        return no_update, "the file was empty or over the size limit"
    try:
        e = save_upload(library(), filename or "", contents)
    except MemprofError as err:
        return no_update, common.error_box(err)
    return f"/timeline?snap={e.id}", f"opened {e.rel}"


def layout(**_: Any) -> html.Div:
    lib = library()
    df = collapse_runs(lib, lib.table())  # a run of many ranks is one row, opening the Ranks page
    df.insert(1, "open", [f"[ranks](/ranks?run={quote(r)})" if r else f"[timeline](/timeline?snap={i})" for i, r in zip(df["id"], df["run"])])
    # the run's folder is in the name and the link; a column of it (or of rank counts when there is no run) only widens the table
    df = df.drop(columns=["run"] + (["ranks"] if df["ranks"].isna().all() else []))
    tbl = common.table("library-table", df, page_size=20, row_selectable="multi", filter_action="native", selected_rows=[],
                       filter_options={"placeholder_text": "filter…", "case": "insensitive"})
    tbl.columns = [{"name": c, "id": c, "presentation": "markdown"} if c == "open" else {"name": header(c), "id": c} for c in df.columns]
    fit_to_screen(tbl)
    preview: Any = html.P("No snapshots here yet: record one with `memprof record`.", id="library-empty")
    e = lib.default_entry()
    if e is not None:
        try:
            fig, _shown = common.timeline_figure(e.id, None, height=420)
            preview = html.Div([html.H4(["latest: ", dcc.Link(e.rel, href=f"/timeline?snap={e.id}")]),
                                dcc.Graph(id="library-preview", figure=fig, config={"displaylogo": False})])
        except Exception as err:  # a broken file must not hide the library
            preview = common.error_box(err)
    return html.Div([
        html.H2("Library"),
        html.P(f"{len(df)} snapshot(s) under {lib.root}", className="sub"),
        html.Div([html.Button("Open timeline", id="library-open"), html.Button("Compare selected", id="library-compare"),
                  html.Span(id="library-hint", className="sub")], className="toolbar"),
        upload_box(),
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


@callback(Output("library-go", "href", allow_duplicate=True), Output("library-upload-status", "children"),
          Input("library-upload", "contents"), State("library-upload", "filename"), prevent_initial_call=True)
def upload(contents: str | None, filename: str | None) -> tuple[Any, Any]:
    return upload_target(contents, filename)
