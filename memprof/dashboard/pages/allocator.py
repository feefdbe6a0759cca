"""Allocator: the caching allocator's segments and their blocks after any trace event (as PyTorch's
memory_viz "Allocator State History"); step with the arrow keys in the event box, or the buttons."""

from __future__ import annotations

from typing import Any

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, State, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.allocator import state as allocator_state
from memprof.present import figures
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/allocator", name="Allocator", title="memprof · allocator state")


def lifetimes(snap_id: int, device: int | None) -> pd.DataFrame:
    """Every segment's lifetime for one (file, device), cached with the views."""
    lib = library()
    e = lib.get(snap_id)
    m = lib.model(snap_id, device)
    return lib.views.get_or_make(("segments", str(e.path), e.mtime_ns, device),
                                 lambda: allocator_state.segment_lifetimes(m.snap, m.rep.device))


def state_view(key: dict[str, Any], idx: Any) -> tuple[Any, str, list[dict[str, Any]], str]:
    """(figure, event line, segment table rows, totals line) after event ``idx`` (clamped to the trace)."""
    sid, dev = int(key["snap"]), key.get("device")
    m = library().model(sid, dev)
    n = int(m.rep.n_events)
    try:
        i = int(idx)
    except (TypeError, ValueError):
        i = int(m.rep.peak_idx)
    i = max(-1, min(i, n - 1))
    st = allocator_state.state_at(m.snap, m.rep, i, lifetimes(sid, dev))
    pos = m.rep.allocations.index.get_indexer(st.blocks["row"].to_numpy())
    al = m.allocs
    blocks = st.blocks.assign(
        category=al["category"].to_numpy()[pos] if len(pos) else [],
        label=[f"{fmt_bytes(int(s))} {c}{' · awaiting free' if w else ''}<br>{site}<br>0x{int(a):x}"
               for s, c, w, site, a in zip(st.blocks["size"], al["category"].to_numpy()[pos], st.blocks["awaiting_free"],
                                           al["site"].to_numpy()[pos], st.blocks["addr"])] if len(pos) else [],
    )
    seg = st.segments
    t_ms = (float(m.snap.device_events(m.rep.device)["time_us"].iloc[i]) - m.rep.start_us) / 1000.0 if i >= 0 and n else 0.0
    fig = figures.plot_segments(seg, blocks, st.free_ranges, title=f"after event {i:,} of {n:,} ({t_ms:.3f} ms)")
    line = f"event {i:,}: {allocator_state.describe_event(m.snap, m.rep.device, i)}"
    rows = seg.assign(addr=[f"0x{int(a):x}" for a in seg["addr"]],
                      **{c: [fmt_bytes(int(v)) for v in seg[c]] for c in ("size", "allocated", "awaiting_free", "rounding_waste", "free", "largest_free")}
                      ).to_dict("records")
    totals = (f"{len(seg):,} segments, {fmt_bytes(int(seg['size'].sum()))} reserved · {fmt_bytes(int(blocks['size'].sum()))} in "
              f"{len(blocks):,} blocks · {fmt_bytes(int(seg['free'].sum()))} free in the cache"
              + (f" · {fmt_bytes(int(seg['awaiting_free'].sum()))} awaiting free on another stream" if seg["awaiting_free"].sum() else "")
              + (f" · at least {fmt_bytes(int(seg['rounding_waste'].sum()))} rounding waste" if seg["rounding_waste"].sum() else "")
              + (f" · {int((blocks['seg'] < 0).sum())} blocks outside any recorded segment" if (blocks["seg"] < 0).any() else ""))
    return fig, line, rows, totals


def event_times_ms(m: Any) -> np.ndarray:
    """Each trace event's time, ms since the trace start."""
    return (m.snap.device_events(m.rep.device)["time_us"].to_numpy(dtype=float) - m.rep.start_us) / 1000.0


def segment_timeline(key: dict[str, Any], idx: int) -> Any:
    """The cached-segment timeline with a line at event ``idx``."""
    sid, dev = int(key["snap"]), key.get("device")
    m = library().model(sid, dev)
    t = event_times_ms(m)
    lt = lifetimes(sid, dev)
    start, end = 0.0, float(m.end_ms)
    lt = lt.assign(t0_ms=[start if b < 0 else float(t[b]) for b in lt["born"]], t1_ms=[end if x < 0 else float(t[x]) for x in lt["dies"]])
    return figures.plot_segment_timeline(lt, float(t[idx]) if 0 <= idx < len(t) else start)


def step(trigger: Any, idx: Any, key: dict[str, Any], click: dict[str, Any] | None = None) -> int:
    """The event after a Previous / Next / Peak button, or at the time clicked on the segment timeline."""
    m = library().model(int(key["snap"]), key.get("device"))
    try:
        i = int(idx)
    except (TypeError, ValueError):
        i = int(m.rep.peak_idx)
    if trigger == "allocator-peak":
        return int(m.rep.peak_idx)
    if trigger == "allocator-timeline":
        pts = (click or {}).get("points") or []
        x = pts[0].get("x") if pts else None
        if not isinstance(x, (int, float)):
            return i
        t = event_times_ms(m)
        return int(np.clip(np.searchsorted(t, float(x), side="right") - 1, -1, m.rep.n_events - 1))
    return int(np.clip(i + (1 if trigger == "allocator-next" else -1), -1, m.rep.n_events - 1))


def layout(snap: str | None = None, device: str | None = None, event: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        idx = int(event) if event not in (None, "") and str(event).lstrip("-").isdigit() else int(m.rep.peak_idx)
        key = {"snap": sid, "device": dev}
        fig, line, rows, totals = state_view(key, idx)
    except Exception as e:
        return html.Div([html.H2("Allocator state"), common.error_box(e)])
    cols = ["seg", "addr", "size", "stream", "pool", "allocated", "awaiting_free", "rounding_waste", "free", "n_blocks", "largest_free"]
    return html.Div([
        html.H2(f"Allocator state · {library().get(sid).rel}", id="allocator-title"),
        html.P(common.summary_line(m), className="sub"),
        common.page_links(sid, dev),
        dcc.Store(id="allocator-key", data=key),
        html.Div([html.Label("event (↑/↓ in the box steps one)"),
                  dcc.Input(id="allocator-event", type="number", value=idx, min=-1, max=max(int(m.rep.n_events) - 1, -1), step=1,
                            style={"width": "170px"}),
                  html.Button("◀ previous", id="allocator-prev"), html.Button("next ▶", id="allocator-next"),
                  html.Button("peak", id="allocator-peak")], className="toolbar"),
        html.P(line, id="allocator-event-line"),
        html.P(totals, id="allocator-totals", className="sub"),
        dcc.Graph(id="allocator-graph", figure=fig, config={"displaylogo": False}),
        dcc.Graph(id="allocator-timeline", figure=segment_timeline(key, idx), config={"displaylogo": False}),
        html.H4("segments"),
        common.table("allocator-segments", pd.DataFrame(rows, columns=cols), page_size=20),
    ])


@callback(Output("allocator-graph", "figure"), Output("allocator-event-line", "children"), Output("allocator-segments", "data"),
          Output("allocator-totals", "children"), Input("allocator-event", "value"), State("allocator-key", "data"),
          prevent_initial_call=True)
def show(idx: Any, key: dict[str, Any]) -> Any:
    return state_view(key, idx)


@callback(Output("allocator-event", "value"), Input("allocator-prev", "n_clicks"), Input("allocator-next", "n_clicks"),
          Input("allocator-peak", "n_clicks"), Input("allocator-timeline", "clickData"), State("allocator-event", "value"),
          State("allocator-key", "data"), prevent_initial_call=True)
def buttons(_p: Any, _n: Any, _k: Any, click: Any, idx: Any, key: dict[str, Any]) -> int:
    return step(dash.ctx.triggered_id, idx, key, click)


def line_patch(key: dict[str, Any], idx: Any) -> Any:
    """Move the segment timeline's "now" line to event ``idx`` (a Patch of that one shape)."""
    from dash import Patch

    m = library().model(int(key["snap"]), key.get("device"))
    t = event_times_ms(m)
    try:
        i = int(idx)
    except (TypeError, ValueError):
        i = int(m.rep.peak_idx)
    x = float(t[i]) if 0 <= i < len(t) else 0.0
    p = Patch()
    p["layout"]["shapes"][0]["x0"] = x
    p["layout"]["shapes"][0]["x1"] = x
    return p


@callback(Output("allocator-timeline", "figure"), Input("allocator-event", "value"), State("allocator-key", "data"),
          prevent_initial_call=True)
def move_line(idx: Any, key: dict[str, Any]) -> Any:
    return line_patch(key, idx)
