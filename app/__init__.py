"""The memprof dashboard: a Dash multi-page app over a folder of snapshots (``memprof serve``).

Layers: :mod:`memprof.views` (arrays) -> :mod:`memprof.figures` (plotly figures) ->
``app/pages/*`` (one module per page: what its callbacks return, its layout, its 3-5 line
callbacks); :mod:`app.common` holds only what several pages share. Component ids carry
their page's name (``timeline-graph``).
"""

from __future__ import annotations

import os
from pathlib import Path

PAGES = (("Library", "/"), ("Timeline", "/timeline"), ("Allocations", "/allocations"), ("Explain", "/explain"),
         ("Flame", "/flame"), ("Allocator", "/allocator"), ("Compare", "/compare"), ("Sweeps", "/sweeps"), ("Ranks", "/ranks"), ("Live", "/live"))


def create_app(root: str | os.PathLike[str]):  # -> dash.Dash
    """Build the app serving the snapshots under ``root`` (only those)."""
    import dash
    from dash import Dash, dcc, html

    from app import state

    state.configure(root)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder=str(Path(__file__).parent / "pages"),
        assets_folder=str(Path(__file__).parent / "assets"),
        title="memprof",
        suppress_callback_exceptions=True,
        serve_locally=True,
    )
    nav = html.Nav(
        [html.Span("memprof", className="brand")]
        + [dcc.Link(name, href=href, id=f"nav-{name.lower()}", className="nav-link") for name, href in PAGES],
        className="navbar",
    )
    app.layout = html.Div([dcc.Location(id="nav-url"), nav, html.Main(dash.page_container, className="page")])

    @app.callback([dash.Output(f"nav-{name.lower()}", "href") for name, _ in PAGES], dash.Input("nav-url", "search"))
    def keep_selection(search: str | None) -> list[str]:  # every page link keeps the selected snapshot and device
        from app.common import nav_hrefs

        return nav_hrefs(search)

    return app
