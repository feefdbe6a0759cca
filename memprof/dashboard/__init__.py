"""The memprof dashboard: a Dash multi-page app over a folder of snapshots (``memprof serve``).

Layers: :mod:`memprof.present.views` (arrays) -> :mod:`memprof.present.figures` (plotly figures) ->
``memprof/dashboard/pages/*`` (one module per page: what its callbacks return, its layout, its 3-5 line
callbacks); :mod:`app.common` holds only what several pages share. Component ids carry
their page's name (``timeline-graph``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PAGES = (("Library", "/"), ("Timeline", "/timeline"), ("Allocations", "/allocations"), ("Explain", "/explain"),
         ("Modules", "/modules"), ("Flame", "/flame"), ("Allocator", "/allocator"), ("Compare", "/compare"), ("Sweeps", "/sweeps"), ("Ranks", "/ranks"), ("Live", "/live"))


def create_app(root: str | os.PathLike[str], cache_bytes: int | None = None):  # -> dash.Dash
    """Build the app serving the snapshots under ``root`` (only those).

    ``cache_bytes`` bounds the model and view caches (default ``$MEMPROF_SERVE_CACHE_MB``)."""
    import dash
    from dash import Dash, dcc, html

    from memprof.dashboard import state

    state.configure(root, cache_bytes)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder=str(Path(__file__).parent / "pages"),
        assets_folder=str(Path(__file__).parent / "assets"),
        title="memprof",
        suppress_callback_exceptions=True,
        serve_locally=True,
        on_error=_on_error,
    )
    nav = html.Nav(
        [html.Span("memprof", className="brand")]
        + [dcc.Link(name, href=href, id=f"nav-{name.lower()}", className="nav-link") for name, href in PAGES],
        className="navbar",
    )
    app.layout = html.Div([dcc.Location(id="nav-url"), nav,
                           html.Main([html.Div(id="app-error"), dash.page_container], className="page")])

    @app.callback([dash.Output(f"nav-{name.lower()}", "href") for name, _ in PAGES], dash.Input("nav-url", "search"))
    def keep_selection(search: str | None) -> list[str]:  # every page link keeps the selected snapshot and device
        from memprof.dashboard.common import nav_hrefs

        return nav_hrefs(search)

    app.callback(dash.Output("app-error", "children"), dash.Input("_pages_location", "pathname"),
                 prevent_initial_call=True)(_clear_error)
    app.server.before_request(lambda: _check_callback_request(app))
    return app


def _check_callback_request(app: Any) -> Any:
    """A callback request whose shape no page sends (unknown output, inputs not a list of {id, property},
    wrong counts) is answered 400 with one line, before Dash's dispatch would fail with a 500."""
    from flask import request

    if request.method != "POST" or not request.path.endswith("/_dash-update-component"):
        return None
    body = request.get_json(silent=True)

    def slot_ok(x: Any) -> bool:
        if isinstance(x, list):  # pattern-matching inputs send a list of slots
            return all(slot_ok(y) for y in x)
        return isinstance(x, dict) and isinstance(x.get("id"), (str, dict)) and isinstance(x.get("property"), str)

    why = None
    if not isinstance(body, dict):
        why = "not a JSON object"
    else:
        out = body.get("output")
        cb = app.callback_map.get(out) if isinstance(out, str) else None
        outs = body.get("outputs")
        n_out = len(out.strip(".").split("...")) if isinstance(out, str) and out.startswith("..") else 1
        if cb is None:
            why = "no such callback"
        elif not all(isinstance(body.get(k, []), list) and all(slot_ok(x) for x in body.get(k, [])) for k in ("inputs", "state")):
            why = "inputs and state must be lists of {id, property, value}"
        elif len(body.get("inputs", [])) != len(cb["inputs"]) or len(body.get("state", [])) != len(cb["state"]):
            why = "wrong number of inputs or state"
        elif not cb.get("no_output") and not (slot_ok(outs) if n_out == 1 and not isinstance(outs, list) else isinstance(outs, list) and len(outs) == n_out and slot_ok(outs)):
            why = "outputs do not match the callback"
        elif not (isinstance(body.get("changedPropIds", []), list) and all(isinstance(c, str) for c in body.get("changedPropIds", []))):
            why = "changedPropIds must be a list of strings"
    if why is None:
        return None
    return {"error": f"memprof: malformed callback request ({why})"}, 400


def _on_error(err: Exception) -> Any:
    """Every callback's failure (wrong-typed input, bad id, unreadable file) becomes the page's error box and
    an HTTP 200: in the callback's ``children`` outputs when it has any, else in the box above the page."""
    from dash import ctx, no_update, set_props

    from memprof.dashboard.common import error_box

    box = error_box(err)  # logs the traceback of anything but a MemprofError
    outs = ctx.outputs_list
    flat = outs if isinstance(outs, list) else [outs]
    if all(isinstance(o, dict) for o in flat) and any(o.get("property") == "children" for o in flat):
        vals = [box if o.get("property") == "children" else no_update for o in flat]
        return vals if isinstance(outs, list) else vals[0]
    set_props("app-error", {"children": box})
    return None


def _clear_error(_pathname: Any) -> None:
    return None
