"""Pure figure functions: DataFrames and models in, ``plotly.graph_objects.Figure`` out. No dash.

The timeline's traces are built by :func:`timeline_traces` for a visible x-range, so the app
can answer a zoom with only new trace data (a ``dash.Patch``) and the report can embed the
same figure.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memprof.units import fmt_bytes
from memprof.present.views import TimelineModel, category_bands, stacked_polygons, step_view

MIB = float(1 << 20)

CATEGORY_COLORS: dict[str, str] = {
    "parameter": "#4C78A8",
    "gradient": "#F58518",
    "optimizer_state": "#B279A2",
    "input": "#72B7B2",
    "activation": "#E45756",
    "temporary": "#EECA3B",
    "alive_before_window": "#9D755D",
    "other": "#54A24B",
    "autograd_saved": "#FF9DA6",
    "workspace": "#BAB0AC",
}
PHASE_COLORS: dict[str, str] = {"forward": "rgba(76,120,168,0.10)", "backward": "rgba(228,87,86,0.10)", "optimizer": "rgba(84,162,75,0.12)"}


def category_color(cat: str) -> str:
    if cat in CATEGORY_COLORS:
        return CATEGORY_COLORS[cat]
    palette = ("#8CD17D", "#D37295", "#79706E", "#FABFD2", "#B6992D", "#499894")
    return palette[sum(map(ord, cat)) % len(palette)]


def timeline_traces(model: TimelineModel, x0: float | None = None, x1: float | None = None, k: int = 80, n_buckets: int = 1000) -> tuple[list[dict[str, Any]], list[int]]:
    """Trace dicts for the visible range ``[x0, x1]`` (ms) and, per trace, the allocation row it draws (-1: none).

    Order: per-allocation polygons of the ``k`` largest allocations (coloured by category,
    stacked as memory_viz stacks them), their summed height, every smaller allocation as one
    band per category above them (:func:`memprof.present.views.category_bands`), the allocated and reserved curves (min/max reduced to ``n_buckets``), the
    per-iteration peaks, the overall peak and any OOM.
    """
    polys, st_x, st_y = stacked_polygons(model, x0, x1, k)
    al = model.allocs
    sites = al["site"].array  # read per drawn polygon only (not 10M labels per view)
    traces: list[dict[str, Any]] = []
    rows: list[int] = []
    shown: set[str] = set()
    names = al["name"].array if "name" in al else None  # read per drawn polygon only, like sites
    mods = al["module"].array if "module" in al else None
    for p in polys:
        label = f"{fmt_bytes(p.size)} {p.category}"
        who = (str(names[p.row]) if names is not None else "") or (str(mods[p.row]) if mods is not None else "")
        site = f"{who} · {sites[p.row]}" if who else str(sites[p.row])
        traces.append({
            "type": "scatter", "x": p.xs, "y": p.ys / MIB, "mode": "lines", "fill": "toself",
            "line": {"width": 0.5, "color": "rgba(255,255,255,0.6)"}, "fillcolor": category_color(p.category),
            "hoveron": "fills+points", "name": f"{label} · {site}", "legendgroup": p.category,
            "showlegend": p.category not in shown, "legendgrouptitle": None,
            "customdata": np.full(len(p.xs), p.row), "text": [f"{label}<br>{site}"] * len(p.xs),
            "hovertemplate": "%{text}<extra></extra>",
        })
        if p.category not in shown:
            traces[-1]["name"] = p.category
            traces[-1]["hovertemplate"] = "%{text}<extra></extra>"
            shown.add(p.category)
        rows.append(p.row)
    for t in traces:
        t.pop("legendgrouptitle", None)
    sx, sy = step_view(st_x, st_y, x0, x1, n_buckets)
    traces.append({"type": "scatter", "x": sx, "y": sy / MIB, "mode": "lines", "line": {"width": 0, "shape": "hv"},
                   "hoverinfo": "skip", "showlegend": False, "name": "largest allocations"})
    rows.append(-1)
    ax, ay = step_view(model.t_alloc, model.allocated, x0, x1, n_buckets)
    for b in category_bands(model, ax, np.array([p.row for p in polys], dtype=np.int64)):
        top = ", ".join(b.top_names)
        traces.append({"type": "scatter", "x": b.x, "y": b.y1 / MIB, "mode": "lines", "fill": "tonexty",
                       "line": {"width": 0, "shape": "hv"}, "fillcolor": category_color(b.category), "opacity": 0.55,
                       "name": f"{b.category} (smaller)", "legendgroup": b.category, "showlegend": b.category not in shown,
                       "customdata": (b.y1 - b.y0) / MIB,
                       "hovertemplate": f"{b.category}: %{{customdata:.2f}} MiB in {b.count:,} smaller allocations"
                                        f"<br>largest: {top}<extra></extra>"})
        shown.add(b.category)
        rows.append(-1)
    traces.append({"type": "scatter", "x": ax, "y": ay / MIB, "mode": "lines", "fill": "tonexty",
                   "fillcolor": "rgba(160,160,160,0.35)", "line": {"width": 1.5, "color": "#222", "shape": "hv"},
                   "name": "allocated", "hovertemplate": "allocated %{y:.1f} MiB at %{x:.3f} ms<extra></extra>"})
    rows.append(-1)
    _stream_and_pool_traces(model, x0, x1, n_buckets, traces, rows)
    rx, ry = step_view(model.t_res, model.reserved, x0, x1, n_buckets)
    if len(rx) and rx[-1] < (model.end_ms if x1 is None else x1):
        rx = np.append(rx, model.end_ms if x1 is None else min(x1, model.end_ms))
        ry = np.append(ry, ry[-1])
    traces.append({"type": "scatter", "x": rx, "y": ry / MIB, "mode": "lines",
                   "line": {"width": 1.5, "color": "#7F3C8D", "dash": "dash", "shape": "hv"},
                   "name": "reserved", "hovertemplate": "reserved %{y:.1f} MiB at %{x:.3f} ms<extra></extra>"})
    if reserved_on_own_axis(model):
        traces[-1].update(yaxis="y2", name="reserved (right axis)")
    rows.append(-1)
    it = model.iterations
    if len(it):
        traces.append({"type": "scatter", "x": it["peak_ms"].to_numpy(), "y": it["peak_bytes"].to_numpy() / MIB,
                       "mode": "markers", "marker": {"symbol": "triangle-down", "size": 10, "color": "#F58518"},
                       "name": "iteration peaks", "customdata": np.c_[it["iteration"].to_numpy(), it["ramp_ms"].to_numpy()],
                       "hovertemplate": "iteration %{customdata[0]} peak %{y:.1f} MiB<br>ramp %{customdata[1]:.3f} ms<extra></extra>"})
        rows.append(-1)
    traces.append({"type": "scatter", "x": [model.peak_ms], "y": [model.peak_bytes / MIB], "mode": "markers",  # label: peak_label()
                   "marker": {"symbol": "star", "size": 14, "color": "#D62728"},
                   "name": "peak", "hovertemplate": "peak %{y:.1f} MiB at %{x:.3f} ms<extra></extra>"})
    rows.append(-1)
    if len(model.oom_ms):
        traces.append({"type": "scatter", "x": model.oom_ms, "y": [model.peak_bytes / MIB] * len(model.oom_ms),
                       "mode": "markers+text", "marker": {"symbol": "x", "size": 14, "color": "#000"}, "text": ["OOM"] * len(model.oom_ms),
                       "textposition": "bottom center", "name": "out of memory", "hovertemplate": "OOM at %{x:.3f} ms<extra></extra>"})
        rows.append(-1)
    return traces, rows


AWAITING_FREE_COLOR = "rgba(245,133,24,0.45)"


def _stream_and_pool_traces(model: TimelineModel, x0: float | None, x1: float | None, n_buckets: int,
                            traces: list[dict[str, Any]], rows: list[int]) -> None:
    """Append to ``traces`` (whose last trace is the allocated curve) and ``rows``.

    Two streams: the allocated curve is the memory held (incl. blocks awaiting free); torch's count
    (freed at free_requested) follows as a dotted line, and the awaiting-free part as its own band
    between them (a copy of the held curve filled down to it). Private pools: their held bytes as
    a line. Nothing when neither occurs.
    """
    from memprof.replay.timeline import private_pool_allocated

    counted = torch_counted(model)
    if counted is not None:
        traces[-1]["name"] = "held (incl. awaiting free on another stream)"
        traces[-1]["hovertemplate"] = "held %{y:.1f} MiB at %{x:.3f} ms (incl. blocks awaiting free)<extra></extra>"
        cx, cy = step_view(model.t_alloc, counted, x0, x1, n_buckets)
        traces.append({"type": "scatter", "x": cx, "y": cy / MIB, "mode": "lines",
                       "line": {"width": 1.2, "color": "#555", "shape": "hv", "dash": "dot"},
                       "name": "allocated as torch counts it",
                       "hovertemplate": "allocated as torch counts it (max_memory_allocated) %{y:.1f} MiB at %{x:.3f} ms<extra></extra>"})
        rows.append(-1)
        bx, by = step_view(model.t_alloc, model.allocated, x0, x1, n_buckets)
        traces.append({"type": "scatter", "x": bx, "y": by / MIB, "mode": "lines", "fill": "tonexty",
                       "fillcolor": AWAITING_FREE_COLOR, "line": {"width": 0, "shape": "hv"},
                       "name": "awaiting free on another stream", "hoverinfo": "skip"})
        rows.append(-1)
    priv = private_pool_allocated(model.rep) if len(model.rep.timeline) == len(model.t_alloc) else None
    if priv is not None and priv.any():
        px, py = step_view(model.t_alloc, priv, x0, x1, n_buckets)
        traces.append({"type": "scatter", "x": px, "y": py / MIB, "mode": "lines",
                       "line": {"width": 1.5, "color": "#2CA02C", "dash": "dot", "shape": "hv"},
                       "name": "in private pools (CUDA graphs / MemPool)",
                       "hovertemplate": "in private pools %{y:.1f} MiB at %{x:.3f} ms<extra></extra>"})
        rows.append(-1)


def torch_counted(model: TimelineModel) -> np.ndarray | None:
    """Allocated bytes with torch's semantics (freed at free_requested; requested bytes, like
    ``model.allocated``), aligned with it; None when no block ever waited for another stream, so
    single-stream figures stay as they were."""
    tl = model.rep.timeline
    if "awaiting_free" not in tl or len(tl) != len(model.allocated):
        return None
    waiting = tl["awaiting_free"].to_numpy()
    return model.allocated - waiting if bool(waiting.any()) else None


def plot_state(model: TimelineModel, k: int = 25, height: int = 520) -> go.Figure:
    """No history recorded (an empty trace): the largest live blocks at dump time, by source line.

    Bars of requested bytes per site (the ``k`` largest sites); the title says what is allocated
    and reserved and that no history was recorded.
    """
    from memprof.snapshot.frames import BEFORE_RECORDING_LABEL

    a = model.allocs.assign(site=model.allocs["site"].astype(object).replace(BEFORE_RECORDING_LABEL, "<no stack recorded>"))
    g = a.groupby("site", sort=False)["size"].agg(["sum", "count"]).sort_values("sum", ascending=False).head(k)
    g = g.iloc[::-1]
    fig = go.Figure(go.Bar(x=g["sum"].to_numpy() / MIB, y=[str(s)[-70:] for s in g.index], orientation="h",
                           marker_color="#4C78A8", text=[f"{fmt_bytes(b)} ×{c}" for b, c in zip(g["sum"], g["count"])],
                           textposition="auto", name="live blocks",
                           hovertemplate="%{y}<br>%{x:.1f} MiB<extra></extra>"))
    fig.update_layout(
        title=(f"No allocation history was recorded: state at dump time, {fmt_bytes(model.peak_bytes)} allocated, "
               f"{fmt_bytes(model.peak_reserved_bytes)} reserved"),
        height=height, template="plotly_white", margin={"l": 260, "r": 20, "t": 50, "b": 50},
        xaxis_title="live blocks (MiB, requested)", uirevision=model.source,
    )
    return fig


def phase_shapes(phases: pd.DataFrame) -> list[dict[str, Any]]:
    """Background bands (layout shapes) for forward/backward/optimizer ranges."""
    return [
        {"type": "rect", "xref": "x", "yref": "paper", "x0": float(s), "x1": float(e), "y0": 0, "y1": 1, "layer": "below",
         "line": {"width": 0}, "fillcolor": PHASE_COLORS.get(p, "rgba(120,120,120,0.08)")}
        for p, s, e in zip(phases["phase"], phases["start_ms"], phases["end_ms"])
    ]


def phase_labels(phases: pd.DataFrame) -> list[dict[str, Any]]:
    """Full phase names above their bands (``forward 0``, ``optimizer 2``), on two staggered rows so
    that a short phase's label does not sit on its neighbours'; the hover gives the phase's times."""
    order = np.argsort(phases["start_ms"].to_numpy(dtype=float), kind="stable")
    out = []
    for k, j in enumerate(order):
        p, i = str(phases["phase"].iloc[j]), int(phases["iteration"].iloc[j])
        s, e = float(phases["start_ms"].iloc[j]), float(phases["end_ms"].iloc[j])
        out.append({"x": (s + e) / 2, "y": 1.0, "xref": "x", "yref": "paper", "yanchor": "bottom", "showarrow": False,
                    "yshift": 2 + 13 * (k % 2), "text": p if i < 0 else f"{p} {i}", "font": {"size": 10, "color": "#555"},
                    "hovertext": f"{p}{'' if i < 0 else f' {i}'}: {s:.3f} to {e:.3f} ms ({e - s:.3f} ms)"})
    return out


def peak_label(model: TimelineModel) -> dict[str, Any]:
    """The peak's label as an annotation with an arrow, off to the upper left on a white box: clear of
    the reserved line, which runs at or above the peak."""
    return {"x": model.peak_ms, "y": model.peak_bytes / MIB, "xref": "x", "yref": "y", "text": f"peak {fmt_bytes(model.peak_bytes)}",
            "showarrow": True, "arrowhead": 2, "ax": -60, "ay": 40, "bgcolor": "rgba(255,255,255,0.9)",
            "bordercolor": "#D62728", "borderwidth": 1, "font": {"size": 11, "color": "#D62728"}}


def plot_timeline(model: TimelineModel, x0: float | None = None, x1: float | None = None, k: int = 80, height: int = 520,
                  traces: list[dict[str, Any]] | None = None) -> go.Figure:
    """Allocated and reserved memory over time, the largest allocations stacked, phases, peaks.
    ``traces``: already computed :func:`timeline_traces` output (the app caches it per view)."""
    if traces is None:
        traces, _ = timeline_traces(model, x0, x1, k)
    layout: dict[str, Any] = {
        "height": height, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "template": _template("plotly_white"),
        "xaxis": {"title": {"text": "time since trace start (ms)"}},
        "yaxis": {"title": {"text": "memory (MiB)"}, "rangemode": "tozero"},
        "shapes": phase_shapes(model.phases), "annotations": (phase_labels(model.phases) if len(model.phases) <= 40 else []) + [peak_label(model)],
        "hovermode": "closest", "legend": {"orientation": "h", "y": -0.18}, "uirevision": model.source,
    }
    if reserved_on_own_axis(model):
        # Reserved far above allocated (a cache that grew and was never emptied) would squash the
        # allocated curve into the floor: it gets its own scale on the right.
        layout["yaxis"]["title"]["text"] = "allocated (MiB)"
        layout["margin"]["r"] = 70
        layout["yaxis2"] = {"title": {"text": f"reserved (MiB; peak {fmt_bytes(model.peak_reserved_bytes)})"},
                            "overlaying": "y", "side": "right", "rangemode": "tozero", "showgrid": False}
    # Built without plotly's per-property validation (trace dicts are ours, already valid; the
    # validation copied every array and took about a third of a 10M-entry snapshot's first paint).
    return go.Figure(data=traces, layout=layout, _validate=False)


#: Reserved above this multiple of the allocated peak is drawn on its own (right) axis.
RESERVED_AXIS_RATIO = 3.0


def reserved_on_own_axis(model: TimelineModel) -> bool:
    """Whether the timeline draws reserved bytes on a second y-axis (it dwarfs allocated)."""
    return model.peak_reserved_bytes > RESERVED_AXIS_RATIO * max(model.peak_bytes, 1)


_TEMPLATES: dict[str, dict[str, Any]] = {}


def _template(name: str) -> dict[str, Any]:
    """A plotly template as a plain dict (resolved once: unvalidated figures do not resolve names)."""
    if name not in _TEMPLATES:
        import plotly.io as pio

        _TEMPLATES[name] = pio.templates[name].to_plotly_json()
    return _TEMPLATES[name]


def plot_category_bars(df: pd.DataFrame, title: str = "alive at the peak, by category") -> go.Figure:
    """Horizontal bars of ``df`` (columns: category, bytes)."""
    d = df.sort_values("bytes")
    fig = go.Figure(go.Bar(x=d["bytes"] / MIB, y=d["category"], orientation="h",
                           marker_color=[category_color(c) for c in d["category"]],
                           text=[fmt_bytes(b) for b in d["bytes"]], textposition="auto",
                           hovertemplate="%{y}: %{x:.1f} MiB<extra></extra>"))
    fig.update_layout(title=title, height=max(220, 40 * len(d) + 90), margin={"l": 140, "r": 20, "t": 40, "b": 40},
                      template="plotly_white", xaxis_title="MiB")
    return fig


def plot_compare(curves: Sequence[tuple[Any, ...]], phases: Sequence[pd.DataFrame] | None = None,
                 x_title: str = "time since first forward (ms)") -> go.Figure:
    """Allocated memory of several snapshots on one time axis.

    ``curves``: (label, t_ms, bytes) or (label, t_ms, bytes, own_t_ms), already aligned (see
    :func:`memprof.present.views.warp`); ``own_t_ms`` (each point's time on its own clock) shows on hover.
    ``phases``: one phases table per curve (phase, iteration, start_ms, end_ms on the aligned axis):
    each snapshot's own phases are drawn as a strip above the plot in its colour, and the first
    one's as background bands. The y axis starts at 0."""
    fig = go.Figure()
    palette = ("#4C78A8", "#E45756", "#54A24B", "#B279A2", "#F58518", "#72B7B2")
    for i, c in enumerate(curves):
        label, x, y = c[0], c[1], c[2]
        own = c[3] if len(c) > 3 else None
        fig.add_trace(go.Scatter(x=x, y=np.asarray(y) / MIB, mode="lines", name=f"{i + 1} · {label}" if phases else label, customdata=own,
                                 line={"shape": "hv", "color": palette[i % len(palette)], "width": 1.5},
                                 hovertemplate=f"{label}<br>%{{y:.1f}} MiB at %{{x:.3f}} ms"
                                 + (" (%{customdata:.3f} ms on its own clock)" if own is not None else "") + "<extra></extra>"))
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n = len(phases) if phases is not None else 0
    strip = 0.045
    if n and phases is not None:
        shapes += phase_shapes(phases[0])
        for i, ph in enumerate(phases):
            y0 = 1.02 + i * strip
            color = palette[i % len(palette)]
            for p, s, e in zip(ph["phase"], ph["start_ms"], ph["end_ms"]):
                shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": float(s), "x1": float(e), "y0": y0,
                               "y1": y0 + strip * 0.8, "line": {"width": 1, "color": color},
                               "fillcolor": PHASE_COLORS.get(str(p), "rgba(120,120,120,0.08)").replace("0.10", "0.45").replace("0.12", "0.45")})
            annotations.append({"x": 0, "xref": "paper", "xanchor": "right", "y": y0 + strip * 0.4, "yref": "paper",
                                "text": f"{i + 1}", "showarrow": False, "font": {"size": 10, "color": color}})
    fig.update_layout(height=420 + 18 * n, template="plotly_white", margin={"l": 60, "r": 20, "t": 30 + int(420 * strip * n), "b": 50},
                      xaxis_title=x_title, yaxis={"title": "allocated (MiB)", "rangemode": "tozero"}, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.2}, shapes=shapes, annotations=annotations)
    return fig


SWEEP_PALETTE = ("#4C78A8", "#E45756", "#54A24B", "#B279A2", "#F58518", "#72B7B2", "#EECA3B", "#FF9DA6", "#9D755D", "#BAB0AC")
#: One colour per implementation or mode, whatever else a plot shows, so a series keeps its colour in every sweep plot.
FAMILY_COLORS = {"naive": "#E45756", "compiled": "#4C78A8", "sdpa": "#54A24B", "forward": "#4C78A8",
                 "forward_backward": "#F58518", "train": "#B279A2", "eager": "#E45756"}


def family_color(label: str) -> str:
    """The colour of a sweep series from its label: the first word (``sdpa d=64``) or, for a speedup
    label (``impl=sdpa d=64 vs impl=naive``), the first value that names an implementation or mode;
    other names get a colour from a hash of the name (stable across plots and runs)."""
    import zlib

    head = str(label).split(" vs ")[0].split()
    vals = [w.split("=", 1)[-1] for w in head]
    for v in vals:
        if v in FAMILY_COLORS:
            return FAMILY_COLORS[v]
    first = vals[0] if vals else ""
    return SWEEP_PALETTE[zlib.crc32(first.encode()) % len(SWEEP_PALETTE)]


def _numeric_x(v: pd.Series) -> bool:
    return bool(pd.to_numeric(v, errors="coerce").notna().all()) and len(v) > 0


def plot_sweep(df: pd.DataFrame, y: str, x: str = "seq_len", by: str = "series", title: str = "", log_y: bool = True) -> go.Figure:
    """One line per ``by`` value of ``y`` against ``x`` on log axes (``x`` categorical when not numeric,
    in file order); OOM rows marked with an x labelled OOM at the top. Error bars from ``<phase>_std``."""
    fig = go.Figure()
    std = y.replace("_ms", "_std") if y.endswith("_ms") else None
    status = df["status"].astype(str) if "status" in df else pd.Series("ok", index=df.index)
    ok = df[status == "ok"]
    top = pd.to_numeric(ok[y], errors="coerce").max() if len(ok) else 1.0
    top = top if top == top else 1.0
    numeric = _numeric_x(df[x])
    order = list(dict.fromkeys(df[x].astype(str)))
    groups = list(df.groupby(by, sort=True)) if by in df else [("all", df)]
    # Colour by the series' first word (the implementation, or the mode), dash style by the rest (d, dtype...).
    variants = list(dict.fromkeys(" ".join(str(k).split(" ")[1:]) for k, _ in groups))
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    for key, g in groups:
        fam, var = str(key).split(" ")[0], " ".join(str(key).split(" ")[1:])
        color = family_color(fam)
        dash = dashes[variants.index(var) % len(dashes)]
        g = g.sort_values(x) if numeric else g.iloc[np.argsort([order.index(v) for v in g[x].astype(str)], kind="stable")]
        gs = status.loc[g.index]
        good = g[gs == "ok"]
        xs = pd.to_numeric(good[x]) if numeric else good[x].astype(str)
        err = None
        if std and std in good and pd.to_numeric(good[std], errors="coerce").notna().any():
            err = {"type": "data", "array": pd.to_numeric(good[std], errors="coerce").to_numpy(), "visible": True}
        fig.add_trace(go.Scatter(x=xs, y=pd.to_numeric(good[y], errors="coerce"), mode="lines+markers", name=str(key),
                                 line={"color": color, "dash": dash}, error_y=err, legendgroup=str(key)))
        bad = g[gs != "ok"]
        if len(bad):
            fig.add_trace(go.Scatter(x=pd.to_numeric(bad[x]) if numeric else bad[x].astype(str), y=[top * 1.5] * len(bad),
                                     mode="markers+text", name=f"{key} OOM", legendgroup=str(key),
                                     marker={"symbol": "x", "size": 12, "color": color}, text=["OOM"] * len(bad),
                                     textposition="top center", showlegend=False,
                                     hovertemplate=f"{key}: out of memory at {x}=%{{x}}<extra></extra>"))
    xaxis: dict[str, Any] = {"type": "log", "title": x} if numeric else {"type": "category", "title": x, "categoryorder": "array", "categoryarray": order}
    fig.update_layout(title=title or y, template="plotly_white", height=400, margin={"l": 60, "r": 20, "t": 40, "b": 50},
                      xaxis=xaxis, yaxis={"type": "log" if log_y else "linear", "title": y}, legend={"font": {"size": 10}})
    return fig


def plot_speedup(df: pd.DataFrame, x: str = "seq_len") -> go.Figure:
    """Speedup lines from ``df`` (columns: x, series, speedup; see ``memprof.dashboard.pages.sweeps.speedup_frame``)."""
    fig = go.Figure()
    numeric = _numeric_x(df[x])
    order = list(dict.fromkeys(df[x].astype(str)))
    seen: dict[str, int] = {}
    for key, g in df.groupby("series", sort=True):
        g = g.sort_values(x) if numeric else g
        color = family_color(str(key))
        seen[color] = seen.get(color, -1) + 1  # same implementation, other variant: same colour, next dash
        fig.add_trace(go.Scatter(x=g[x] if numeric else g[x].astype(str), y=g["speedup"], mode="lines+markers", name=str(key),
                                 line={"color": color, "dash": ("solid", "dash", "dot", "dashdot", "longdash")[seen[color] % 5]}))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    xaxis: dict[str, Any] = {"type": "log", "title": x} if numeric else {"type": "category", "title": x, "categoryorder": "array", "categoryarray": order}
    fig.update_layout(title="speedup over the baseline (step time; >1 is faster)", template="plotly_white", height=380,
                      margin={"l": 60, "r": 20, "t": 40, "b": 50}, xaxis=xaxis, yaxis_title="×", legend={"font": {"size": 10}})
    return fig


def plot_icicle(tree: pd.DataFrame, title: str = "", height: int = 640) -> go.Figure:
    """The call tree of :func:`memprof.present.flame.call_tree` as an icicle: the root on top, callees below,
    each box as wide as the bytes alive under it (``branchvalues='total'``); click a box to zoom in."""
    from memprof.present.flame import hover_text

    total = int(tree["bytes"].iloc[0]) if len(tree) else 0
    fig = go.Figure(go.Icicle(
        ids=tree["id"], labels=tree["label"], parents=tree["parent"], values=tree["bytes"], branchvalues="total",
        text=hover_text(tree, total), hovertemplate="%{text}<extra></extra>", textinfo="label",
        tiling={"orientation": "v"}, root={"color": "#e5e7eb"}, marker={"colorscale": "YlOrRd", "colors": tree["depth"]},
        maxdepth=16,
    ))
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, template="plotly_white")
    return fig


def plot_segments(segments: pd.DataFrame, blocks: pd.DataFrame, free_ranges: pd.DataFrame, title: str = "",
                  max_segments: int = 200) -> go.Figure:
    """The allocator's segments (one row each, by address) and their blocks at one event.

    ``blocks`` needs seg, offset, size, category, label (hover), awaiting_free; every row is drawn
    as a share of its own segment (so a 2 MiB and a 20 GiB segment are equally readable; the row's
    label gives its size). Free ranges (cached, reusable) in light grey; blocks awaiting a free on
    another stream hatched."""
    seg = segments.sort_values("addr").head(max_segments)
    ylab = {int(s): f"0x{int(a):x} · {fmt_bytes(int(z))}" for s, a, z in zip(seg["seg"], seg["addr"], seg["size"])}
    size = dict(zip(seg["seg"].astype(int), seg["size"].astype(float)))
    fig = go.Figure()
    b = blocks[blocks["seg"].isin(list(ylab))]
    for cat, g in b.groupby("category", sort=True):
        sz = g["seg"].map(size).to_numpy(float)
        fig.add_trace(go.Bar(y=g["seg"].map(ylab), x=g["size"] / sz, base=g["offset"] / sz, orientation="h", name=str(cat),
                             marker={"color": category_color(str(cat)), "line": {"width": 0.5, "color": "#fff"},
                                     "pattern": {"shape": ["/" if w else "" for w in g["awaiting_free"]]}},
                             text=g["label"], hovertemplate="%{text}<extra></extra>", textposition="none"))
    f = free_ranges[free_ranges["seg"].isin(list(ylab))]
    if len(f):
        sz = f["seg"].map(size).to_numpy(float)
        fig.add_trace(go.Bar(y=f["seg"].map(ylab), x=f["size"] / sz, base=f["offset"] / sz, orientation="h", name="free (cached)",
                             marker={"color": "rgba(200,200,200,0.45)", "line": {"width": 0.5, "color": "#bbb"}},
                             text=[f"free {fmt_bytes(int(s))} at +{fmt_bytes(int(o))}" for s, o in zip(f["size"], f["offset"])],
                             hovertemplate="%{text}<extra></extra>", textposition="none"))
    fig.update_layout(title=title, barmode="overlay", template="plotly_white", height=140 + 22 * len(seg),
                      margin={"l": 200, "r": 20, "t": 40, "b": 40}, legend={"orientation": "h", "y": -0.08 if len(seg) > 10 else -0.3},
                      xaxis={"title": "offset within the segment (share of its size)", "range": [0, 1], "tickformat": ".0%"},
                      yaxis={"autorange": "reversed", "type": "category", "tickfont": {"size": 10}}, bargap=0.25)
    return fig


def plot_segment_timeline(lt: pd.DataFrame, t_now_ms: float | None = None, max_segments: int = 300) -> go.Figure:
    """Each cached segment's life (``lt``: addr, size, t0_ms, t1_ms, from
    :func:`memprof.allocator.state.segment_lifetimes` with times added) as a bar on its own row, by
    address; a vertical line at ``t_now_ms``. Click a time to see the allocator state then."""
    d = lt.sort_values("addr").head(max_segments)
    labels = [f"0x{int(a):x} · {fmt_bytes(int(s))}" for a, s in zip(d["addr"], d["size"])]
    fig = go.Figure(go.Bar(y=labels, x=(d["t1_ms"] - d["t0_ms"]).to_numpy(), base=d["t0_ms"].to_numpy(), orientation="h",
                           marker={"color": "#7F3C8D", "opacity": 0.55}, name="segment",
                           customdata=np.c_[d["t0_ms"].to_numpy(), d["t1_ms"].to_numpy()],
                           hovertemplate="%{y}<br>cached from %{customdata[0]:.3f} to %{customdata[1]:.3f} ms<extra></extra>"))
    if t_now_ms is not None:
        fig.add_vline(x=t_now_ms, line_color="#D62728", line_width=1.5)
    fig.update_layout(title="cached segments over time (click a time to see the state then)", template="plotly_white",
                      height=120 + 14 * len(d), margin={"l": 200, "r": 20, "t": 40, "b": 40}, bargap=0.3,
                      xaxis_title="time since trace start (ms)", yaxis={"autorange": "reversed", "type": "category", "tickfont": {"size": 9}},
                      showlegend=False, clickmode="event")
    return fig


def plot_module_tree(tree: pd.DataFrame, kind: str = "icicle", title: str = "", height: int = 560) -> go.Figure:
    """An icicle or treemap of :func:`memprof.present.views.module_tree` (bytes by module path, coloured by category)."""
    trace = go.Icicle if kind == "icicle" else go.Treemap
    colors = [category_color(c) if c else "#ddd" for c in tree["category"]]
    fig = go.Figure(trace(
        ids=tree["id"], parents=tree["parent"], labels=tree["label"], values=tree["bytes"], branchvalues="total",
        marker={"colors": colors}, customdata=np.c_[tree["module"].to_numpy(), [fmt_bytes(int(b)) for b in tree["bytes"]],
                                                      tree["category"].to_numpy()],
        hovertemplate="%{customdata[0]}<br><b>%{label}</b>: %{customdata[1]} (%{percentRoot:.1%} of the total)"
                      "<br>mostly %{customdata[2]}<extra></extra>",
        maxdepth=6 if kind == "icicle" else 4, sort=True,
    ))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10}, title=title or None)
    return fig


def plot_module_timeline(df: pd.DataFrame, module: str, height: int = 320) -> go.Figure:
    """Stacked areas of :func:`memprof.present.views.module_timeline` (bytes of one module over time, by category)."""
    fig = go.Figure()
    for c in [c for c in df.columns if c != "t_ms"]:
        fig.add_trace(go.Scatter(x=df["t_ms"], y=df[c] / MIB, mode="lines", stackgroup="one", name=c,
                                 line={"width": 0, "shape": "hv"}, fillcolor=category_color(c),
                                 hovertemplate=f"{c}: %{{y:.2f}} MiB at %{{x:.3f}} ms<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 36, "b": 40}, template="plotly_white",
                      title=f"{module or 'everything'}: memory over time", xaxis={"title": "time since trace start (ms)"},
                      yaxis={"title": "MiB", "rangemode": "tozero"}, legend={"orientation": "h", "y": -0.25})
    return fig
