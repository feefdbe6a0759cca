"""What more than one page uses: the snapshot/device keys of a page's query string, the header line and
page links, the error box, the house table, and the timeline figure (Timeline page and the Library's preview).
Each page's own helpers live in its module under ``memprof/dashboard/pages/``."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import dash_table, dcc, html

from memprof.dashboard import state
from memprof.dashboard.state import library
from memprof.present import figures, views
from memprof.errors import MemprofError
from memprof.units import fmt_bytes, fmt_us


def error_box(e: Exception) -> html.Div:
    return html.Div(f"memprof: {state.error_message(e)}", className="error")


def guard(fn: Any, *args: Any) -> Any:
    """Call ``fn``; a :class:`MemprofError` (bad id, unreadable file) becomes a message on the page."""
    try:
        return fn(*args)
    except MemprofError as e:
        return error_box(e)


def parse_device(device: Any) -> int | None:
    return state.parse_device(device)


def resolve_key(snap: Any) -> Any:
    """The library key for a ``snap`` query value (an id), or the default snapshot's id."""
    lib = library()
    if snap in (None, ""):
        e = lib.default_entry()
        if e is None:
            raise MemprofError(f"no snapshots under {lib.root}")
        return e.id
    return lib.get(snap).id


def summary_line(m: views.TimelineModel) -> str:
    dev = (m.meta.get("device") or {}).get("name", "")
    return (f"peak allocated {fmt_bytes(m.peak_bytes)} at {m.peak_ms:.3f} ms · peak reserved {fmt_bytes(m.peak_reserved_bytes)}"
            f" · {m.rep.n_events:,} events · {len(m.allocs):,} allocations · {fmt_us(m.end_ms * 1000)}"
            f" · device {m.device}{' (' + dev + ')' if dev else ''}" + (f" · {len(m.oom_ms)} OOM" if len(m.oom_ms) else ""))


def page_links(snap_id: int, device: int | None) -> html.Div:
    q = f"?snap={snap_id}" + ("" if device is None else f"&device={device}")
    links: list[Any] = [dcc.Link(n, href=f"/{n.lower()}{q}") for n in ("Timeline", "Allocations", "Explain", "Modules", "Flame", "Allocator")]
    return html.Div(links + device_links(snap_id, device), className="links")


def device_links(snap_id: int, device: int | None) -> list[Any]:
    """For a snapshot with several devices' traces: one link per device, to this same page (a
    query-only href), the one shown marked; with one device, nothing."""
    try:
        m = library().model(snap_id, device)
    except MemprofError:
        return []
    counts = m.snap.info.get("entries_per_device") or []
    if m.snap.n_devices < 2:
        return []
    out: list[Any] = [html.Span("device:", className="sub", style={"marginLeft": "18px", "marginRight": "6px"})]
    for i in range(m.snap.n_devices):
        n = counts[i] if i < len(counts) else 0
        label = f"{i} ({n:,} events)"
        out.append(html.B(label, id="device-current") if i == m.device else dcc.Link(label, href=f"?snap={snap_id}&device={i}"))
    return [html.Span(out, id="device-select")]


#: Pages that show one snapshot (``?snap=&device=``): the header's links and the top navigation lead to these.
SNAPSHOT_PAGES = ("/timeline", "/allocations", "/explain", "/modules", "/flame", "/allocator")


def nav_hrefs(search: str | None) -> list[str]:
    """The top navigation's hrefs (in :data:`app.PAGES` order) for a page whose query string is
    ``search``: the selected snapshot and device travel to Timeline, Allocations and Explain (and
    the first of Compare's ``snaps``); Library, Compare and Sweeps keep their own."""
    from urllib.parse import parse_qs, urlencode

    from memprof.dashboard import PAGES

    q = parse_qs((search or "").lstrip("?"))
    snap = (q.get("snap") or [""])[0] or (q.get("snaps") or [""])[0].split(",")[0]
    keep = {k: v for k, v in (("snap", snap.strip()), ("device", (q.get("device") or [""])[0].strip())) if v}
    tail = ("?" + urlencode(keep)) if "snap" in keep else ""
    return [href + tail if href in SNAPSHOT_PAGES else href for _, href in PAGES]


def table(id_: str, df: pd.DataFrame, page_size: int = 15, **kw: Any) -> dash_table.DataTable:  # type: ignore[name-defined]  # dash's stubs: DataTable is star-imported in an ignored module
    return dash_table.DataTable(  # type: ignore[attr-defined]  # dash's stubs, as above
        id=id_, data=df.to_dict("records"), columns=[{"name": c, "id": c} for c in df.columns],
        page_size=page_size, sort_action="native", style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "monospace", "fontSize": 12, "padding": "3px 6px", "textAlign": "left", "maxWidth": 420,
                    "overflow": "hidden", "textOverflow": "ellipsis"},
        style_header={"fontWeight": "bold", "backgroundColor": "#f3f4f6"}, **kw)


#: How many of the largest allocations the timeline draws as blocks (the Timeline's detail control).
DETAIL_LEVELS = (20, 80, 300, 1000)
DEFAULT_DETAIL = 80


def timeline_view(snap_id: int, device: int | None, x0: float | None, x1: float | None, k: int = DEFAULT_DETAIL) -> tuple[list[dict[str, Any]], list[int]]:
    """Trace data for one (file, device, range, detail), cached per view."""
    lib = library()
    k = int(k) if k in DETAIL_LEVELS else DEFAULT_DETAIL
    key = (*lib.identity(snap_id), device, None if x0 is None else round(x0, 6), None if x1 is None else round(x1, 6), k)
    return lib.views.get_or_make(key, lambda: figures.timeline_traces(lib.model(snap_id, device), x0, x1, k=k))


def timeline_figure(snap_id: int, device: int | None, height: int = 540) -> tuple[Any, list[int]]:
    """The full-range figure, cached with the views: many clients opening one page share one figure (never mutated)."""
    lib = library()

    def make() -> tuple[Any, list[int]]:
        m = lib.model(snap_id, device)
        traces, rows = timeline_view(snap_id, device, None, None)
        return figures.plot_timeline(m, height=height, traces=traces), rows

    return lib.views.get_or_make(("figure", *lib.identity(snap_id), device, height), make)
