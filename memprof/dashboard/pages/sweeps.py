"""Sweeps: ``memprof sweep`` results (``results.csv``): tables and time/peak plots against seq_len."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.present import figures
from memprof.errors import MemprofError

dash.register_page(__name__, path="/sweeps", name="Sweeps", title="memprof · sweeps")


SWEEP_REQUIRED = ("seq_len", "status")


def read_sweep(i: int) -> pd.DataFrame:
    """The ``results.csv`` of sweep folder ``i`` (an index into the scan, never a path)."""
    found = library().sweeps()
    if not isinstance(i, int) or not 0 <= i < len(found):
        raise MemprofError(f"no sweep with id {i}")
    df = library().read_csv(found[i][2])  # checked at open: a regular file inside the served folder
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


def in_mib(df: pd.DataFrame) -> pd.DataFrame:
    """``results.csv`` stores sizes in MB (10^6 B); the dashboard speaks MiB (2^20 B) everywhere:
    each ``*_mb`` column becomes ``*_mib``, the same bytes."""
    out = df.copy()
    for c in [c for c in out.columns if c.endswith("_mb")]:
        out[c[:-3] + "_mib"] = (pd.to_numeric(out[c], errors="coerce") * 1e6 / 2**20).round(2)
        out = out.drop(columns=[c])
    return out


def table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The sweep table without the columns no row fills (a transformer sweep has no seq_len, d or impl)."""
    blank = [c for c in df.columns if df[c].isna().all() or (df[c].astype(str).str.strip() == "").all()]
    return df.drop(columns=blank + (["series"] if "series" in df.columns else []))


def sweep_content(i: int) -> list[Any]:
    """Sweep folder ``i``: time and peak against seq_len (log axes), OOM marked, speedups, the table."""
    df, x, keys = sweep_frame(in_mib(read_sweep(i)))
    figs = []
    for col, title in (("forward_ms", "forward time (ms)"), ("backward_ms", "backward time (ms)"),
                       ("step_ms", "step time (ms)"), ("peak_allocated_mib", "peak allocated (MiB)")):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            figs.append(html.Div(dcc.Graph(id=f"sweeps-{col.split('_')[0]}", figure=figures.plot_sweep(df, col, x=x, by="series", title=title)),
                                 style={"flex": "1 1 520px"}))
    n_oom = int((df["status"].astype(str) == "oom").sum())
    parts: list[Any] = [html.P(f"{len(df)} runs, {n_oom} out of memory · series: {keys or '-'} · x: {x}", className="sub", id="sweeps-summary"),
                        html.Div(figs, className="row", style={"flexWrap": "wrap"})]
    sp = speedup_frame(df, x)
    if sp is not None and len(sp):
        parts.append(dcc.Graph(id="sweeps-speedup", figure=figures.plot_speedup(sp, x=x)))
    parts.append(common.table("sweeps-table", table_frame(df), page_size=25, filter_action="native"))
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


def layout(sweep: str | None = None, **_: Any) -> html.Div:
    found = library().sweeps()
    if not found:
        return html.Div([html.H2("Sweeps"), html.P("No sweep results (results.csv) under the served folder.", id="sweeps-empty")])
    value = int(sweep) if isinstance(sweep, str) and sweep.isascii() and sweep.isdigit() and len(sweep) < 9 and int(sweep) < len(found) else 0
    return html.Div([
        html.H2("Sweeps"),
        dcc.Dropdown(id="sweeps-select", options=[{"label": rel, "value": i} for i, rel, _ in found], value=value, clearable=False),
        html.Div(id="sweeps-body"),
    ])


@callback(Output("sweeps-body", "children"), Input("sweeps-select", "value"))
def update(i: int) -> Any:
    return common.guard(sweep_content, i)
