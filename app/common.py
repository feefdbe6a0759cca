"""What the pages' callbacks return. Each function takes plain values (ids, relayout dicts,
table queries) and returns figures, patches or components; the callbacks only call one."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from dash import Patch, dash_table, dcc, html

from app import state
from app.state import library
from memprof import figures, views
from memprof.errors import MemprofError
from memprof.format import fmt_bytes, fmt_us

ALLOC_COLUMNS = ("row", "size", "size_h", "alloc_ms", "free_ms", "lifetime_ms", "phase", "category", "site")


def error_box(e: Exception) -> html.Div:
    return html.Div(f"memprof: {state.error_message(e)}", className="error")


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
    return html.Div([dcc.Link(n, href=f"/{n.lower()}{q}") for n in ("Timeline", "Allocations", "Explain")], className="links")


# --- Timeline ---------------------------------------------------------------

def x_range(relayout: dict[str, Any] | None) -> tuple[float | None, float | None] | None:
    """The visible x-range from plotly's ``relayoutData``; ``(None, None)`` on autorange; ``None`` when x did not change."""
    if not relayout:
        return None
    if relayout.get("xaxis.autorange") or relayout.get("autosize"):
        return (None, None)
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        r = (relayout["xaxis.range[0]"], relayout["xaxis.range[1]"])
    elif isinstance(relayout.get("xaxis.range"), (list, tuple)) and len(relayout["xaxis.range"]) == 2:
        r = tuple(relayout["xaxis.range"])
    else:
        return None
    try:
        a, b = float(r[0]), float(r[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or a >= b:
        return None
    return (a, b)


def timeline_view(snap_id: int, device: int | None, x0: float | None, x1: float | None) -> tuple[list[dict[str, Any]], list[int]]:
    """Trace data for one (file, device, range), cached per view."""
    lib = library()
    e = lib.get(snap_id)
    key = (str(e.path), e.mtime_ns, device, None if x0 is None else round(x0, 6), None if x1 is None else round(x1, 6))
    return lib.views.get_or_make(key, lambda: figures.timeline_traces(lib.model(snap_id, device), x0, x1))


def timeline_figure(snap_id: int, device: int | None, height: int = 540) -> tuple[Any, list[int]]:
    """The full-range figure, cached with the views: many clients opening one page share one figure (never mutated)."""
    lib = library()
    e = lib.get(snap_id)

    def make() -> tuple[Any, list[int]]:
        m = lib.model(snap_id, device)
        traces, rows = timeline_view(snap_id, device, None, None)
        return figures.plot_timeline(m, height=height, traces=traces), rows

    return lib.views.get_or_make(("figure", str(e.path), e.mtime_ns, device, height), make)


def zoom_patch(relayout: dict[str, Any] | None, key: dict[str, Any]) -> tuple[Patch, list[int]]:
    """plotly-resampler style: re-aggregate for the new x-range; only trace data goes back."""
    from dash.exceptions import PreventUpdate

    r = x_range(relayout)
    if r is None or not key:
        raise PreventUpdate
    traces, rows = timeline_view(*state.parse_key(key), *r)
    patch = Patch()
    patch["data"] = traces
    return patch, rows


def stack_panel(click: dict[str, Any] | None, rows: Sequence[int] | None, key: dict[str, Any]) -> Any:
    """The side panel for a click on the timeline: the clicked allocation's full stack."""
    if not click or not click.get("points") or not key:
        return "Click an allocation in the timeline to see its full stack."
    pt = click["points"][0]
    row = pt.get("customdata")
    if not isinstance(row, (int, float)):
        cn = pt.get("curveNumber")
        row = rows[cn] if rows and isinstance(cn, int) and 0 <= cn < len(rows) else -1
    m = library().model(*state.parse_key(key))
    t = pt.get("x")
    alive = dcc.Link(f"What is alive at {t:.3f} ms", href=f"/allocations?snap={key['snap']}&t={t:.6f}") if isinstance(t, (int, float)) else ""
    if not isinstance(row, (int, float)) or row < 0 or row >= len(m.allocs):
        return html.Div([html.P("No allocation under the cursor."), alive])
    a = m.allocs.iloc[int(row)]
    frames = m.snap.stack(int(a["stack_id"]))
    stack = "\n".join(f"{name}  {fn}:{line}" for fn, line, name in frames) or "(no stack recorded)"
    return html.Div([
        html.B(f"{fmt_bytes(int(a['size']))} · {a['category']}"),
        html.P(f"allocated at {a['t0_ms']:.3f} ms in {a['phase'] or '-'}; freed at "
               + ("end (alive)" if a["alive_at_end"] else f"{a['t1_ms']:.3f} ms")
               + (f"; lived {fmt_us(a['lifetime_us'])}" if a["lifetime_us"] == a["lifetime_us"] else "")),
        html.P(a["site"]),
        html.Pre(stack, id="timeline-stack-frames"),
        alive,
    ])


# --- Allocations -----------------------------------------------------------

def alloc_frame(m: views.TimelineModel, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Display columns: row, size, size_h, alloc_ms, free_ms, lifetime_ms, phase, category, site."""
    d = m.allocs if df is None else df
    return pd.DataFrame({
        "row": d.index.to_numpy(),
        "size": d["size"].to_numpy(),
        "size_h": [fmt_bytes(int(s)) for s in d["size"].to_numpy()] if len(d) <= 5000 else None,
        "alloc_ms": d["t0_ms"].round(4).to_numpy(),
        "free_ms": np.where(d["alive_at_end"].to_numpy(), np.nan, d["t1_ms"].round(4).to_numpy()),
        "lifetime_ms": (d["lifetime_us"] / 1000).round(4).to_numpy(),
        "phase": d["phase"].to_numpy(),
        "category": d["category"].to_numpy(),
        "site": d["site"].to_numpy(),
    })


def alive_table(key: dict[str, Any], t_ms: Any) -> tuple[list[dict[str, Any]], str, Any]:
    """Allocations alive at ``t_ms`` (the peak when empty), their total, and a category chart."""
    m = library().model(*state.parse_key(key))
    try:
        t = float(t_ms)
    except (TypeError, ValueError):
        t = m.peak_ms
    alive = views.alive_at(m, t)
    fig = figures.plot_category_bars(views.by_category(alive), title=f"alive at {t:.3f} ms, by category")
    head = alloc_frame(m, alive.head(200))
    return head.to_dict("records"), f"{len(alive):,} allocations alive at {t:.3f} ms, {fmt_bytes(int(alive['size'].sum()))} in all", fig


def table(id_: str, df: pd.DataFrame, page_size: int = 15, **kw: Any) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=id_, data=df.to_dict("records"), columns=[{"name": c, "id": c} for c in df.columns],
        page_size=page_size, sort_action="native", style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "monospace", "fontSize": 12, "padding": "3px 6px", "textAlign": "left", "maxWidth": 420,
                    "overflow": "hidden", "textOverflow": "ellipsis"},
        style_header={"fontWeight": "bold", "backgroundColor": "#f3f4f6"}, **kw)


# --- Explain ---------------------------------------------------------------

def explain_content(snap_id: int, device: int | None) -> list[Any]:
    """Verdict with its numbers, breakdown of the peak, analytic account."""
    m = library().model(snap_id, device)
    v = views.verdict(m)
    at_peak = views.alive_at(m, m.peak_ms)
    out: list[Any] = [
        html.Div([html.Div(v["verdict"], className="verdict", id="explain-verdict"), html.P(v["explanation"]),
                  html.Ul([html.Li(r) for r in v["remedies"]])], className="card"),
        html.H4("numbers"),
        table("explain-numbers", pd.DataFrame({"quantity": list(v["numbers"]), "value": [str(x) for x in v["numbers"].values()]}), page_size=20),
        html.Div([
            html.Div(dcc.Graph(id="explain-categories", figure=figures.plot_category_bars(views.by_category(at_peak))), className="grow"),
        ], className="row"),
        html.H4("largest sites alive at the peak"),
        table("explain-sites", views.by_site(at_peak).assign(bytes=lambda d: [fmt_bytes(int(b)) for b in d["bytes"]])),
        html.H4("analytic account"),
        table("explain-analytic", views.analytic_account(m), page_size=20),
    ]
    return out


# --- Compare ---------------------------------------------------------------

def compare_content(ids: Sequence[Any], device: int | None = None) -> list[Any]:
    """Several snapshots on one time axis aligned at their first forward, and diff tables against the first."""
    lib = library()
    ids = [lib.get(i).id for i in ids][:6]
    if len(ids) < 2:
        return [html.P("Pick two or more snapshots to compare.", id="compare-hint")]
    models = [lib.model(i, device) for i in ids]
    labels = [lib.get(i).rel for i in ids]
    curves = []
    for lab, m in zip(labels, models):
        off = views.align_offset(m)
        x, y = views.step_view(m.t_alloc, m.allocated, None, None, 1500)
        curves.append((lab, x - off, y))
    base = models[0]
    ph0 = base.phases.assign(start_ms=base.phases["start_ms"] - views.align_offset(base), end_ms=base.phases["end_ms"] - views.align_offset(base))
    fig = figures.plot_compare(curves, [ph0])
    summ = views.compare_summary(models, labels)
    cat = views.diff_by(models, labels, "category")
    site = views.diff_by(models, labels, "site").head(25)
    return [
        dcc.Graph(id="compare-graph", figure=fig),
        html.H4("summary"), table("compare-summary", summ),
        html.H4(f"alive at the peak by category (Δ against {labels[0]})"), table("compare-categories", cat),
        html.H4("by site"), table("compare-sites", site),
    ]


def guard(fn: Any, *args: Any) -> Any:
    """Call ``fn``; a :class:`MemprofError` (bad id, unreadable file) becomes a message on the page."""
    try:
        return fn(*args)
    except MemprofError as e:
        return error_box(e)


# --- Library ---------------------------------------------------------------

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


# --- Sweeps ----------------------------------------------------------------

SWEEP_REQUIRED = ("seq_len", "status")


def read_sweep(i: int) -> pd.DataFrame:
    """The ``results.csv`` of sweep folder ``i`` (an index into the scan, never a path)."""
    found = library().sweeps()
    if not isinstance(i, int) or not 0 <= i < len(found):
        raise MemprofError(f"no sweep with id {i}")
    df = library().read_csv(found[i][2])
    missing = [c for c in SWEEP_REQUIRED if c not in df.columns]
    if missing:
        raise MemprofError(f"{found[i][1]}/results.csv: missing column(s) {', '.join(missing)}")
    return df


def sweep_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """Add a ``series`` label column (the config columns that vary, bar the x axis) to a sweep table.

    Returns (df with ``series``, x column, series columns joined). x is ``seq_len`` when the sweep
    varies it, else ``size`` (categorical, in file order), else ``context``."""
    df = df.copy()
    x = next((c for c in ("seq_len", "size", "context") if c in df.columns and df[c].notna().any() and df[c].nunique() > 1), "seq_len")
    keys = [c for c in ("impl", "d", "mode", "compile", "dtype", "causal", "batch") if c in df.columns and c != x and df[c].nunique() > 1]
    if keys:
        df["series"] = df[keys].astype(str).apply(lambda r: " ".join(f"{k}={v}" if k in ("d", "compile", "batch", "causal") else str(v)
                                                                    for k, v in zip(keys, r)), axis=1)
    else:
        df["series"] = "all"
    return df, x, ",".join(keys)


def sweep_content(i: int) -> list[Any]:
    """Sweep folder ``i``: time and peak against seq_len (log axes), OOM marked, speedups, the table."""
    df, x, keys = sweep_frame(read_sweep(i))
    figs = []
    for col, title in (("forward_ms", "forward time (ms)"), ("backward_ms", "backward time (ms)"),
                       ("step_ms", "step time (ms)"), ("peak_allocated_mb", "peak allocated (MB)")):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            figs.append(html.Div(dcc.Graph(id=f"sweeps-{col.split('_')[0]}", figure=figures.plot_sweep(df, col, x=x, by="series", title=title)),
                                 style={"flex": "1 1 520px"}))
    n_oom = int((df["status"].astype(str) == "oom").sum())
    parts: list[Any] = [html.P(f"{len(df)} runs, {n_oom} out of memory · series: {keys or '-'} · x: {x}", className="sub", id="sweeps-summary"),
                        html.Div(figs, className="row", style={"flexWrap": "wrap"})]
    sp = speedup_frame(df, x)
    if sp is not None and len(sp):
        parts.append(dcc.Graph(id="sweeps-speedup", figure=figures.plot_speedup(sp, x=x)))
    parts.append(table("sweeps-table", df.drop(columns=["series"]), page_size=25, filter_action="native"))
    return parts


def speedup_frame(df: pd.DataFrame, x: str) -> pd.DataFrame | None:
    """Speedup of each implementation over the baseline (naive attention, eager transformer) on step time.

    Columns: x, series (the other config columns), speedup (baseline step_ms / step_ms), impl."""
    y = "step_ms" if "step_ms" in df.columns and pd.to_numeric(df["step_ms"], errors="coerce").notna().any() else "forward_ms"
    if "impl" in df.columns and df["impl"].nunique() > 1:
        by, base = "impl", ("naive" if (df["impl"] == "naive").any() else sorted(df["impl"].astype(str).unique())[0])
    elif "compile" in df.columns and df["compile"].nunique() > 1:
        by, base = "compile", False
    else:
        return None
    ok = df[df["status"].astype(str) == "ok"].copy()
    ok[y] = pd.to_numeric(ok[y], errors="coerce")
    on = [c for c in ("d", "mode", "dtype", "causal", "batch", "impl", "compile") if c in ok.columns and c != by and ok[c].nunique() > 1] + [x]
    b = ok[ok[by].astype(str) == str(base)][on + [y]].rename(columns={y: "base"})
    o = ok[ok[by].astype(str) != str(base)].merge(b, on=on)
    if not len(o):
        return None
    lab = [c for c in on if c != x]
    o["series"] = o[[by] + lab].astype(str).apply(lambda r: " ".join(f"{k}={v}" for k, v in zip([by] + lab, r)) + f" vs {by}={base}", axis=1)
    o["speedup"] = o["base"] / o[y]
    return o[[x, "series", "speedup"]]
