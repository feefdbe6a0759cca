"""Figures of a run of many ranks: peak per rank, and every rank's timeline on one axis. No dash.

Inputs are the DataFrames of :mod:`memprof.analysis.ranks` (``ranks_frame``, ``aligned_timelines``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memprof.units import fmt_bytes

MIB = float(1 << 20)
STATUS_COLORS = {"ok": "#4C78A8", "oom": "#E45756", "terminated": "#F58518", "error": "#B279A2", "empty": "#BAB0AC",
                 "missing": "#BAB0AC", "unreadable": "#BAB0AC"}


def plot_rank_peaks(ranks: pd.DataFrame, keys: Sequence[object] | None = None, height: int = 320) -> go.Figure:
    """Peak allocated (bars, coloured by status) and peak reserved (markers) per rank.

    ``ranks``: rank, status, peak_allocated_bytes, peak_reserved_bytes. ``keys``: one value per row
    carried as the bars' customdata (the app puts each rank's snapshot id there for click-through).
    """
    alloc = pd.to_numeric(ranks["peak_allocated_bytes"], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
    res = pd.to_numeric(ranks["peak_reserved_bytes"], errors="coerce").to_numpy(dtype=np.float64)
    status = ranks["status"].astype(str).tolist()
    x = ranks["rank"].astype(int).tolist()
    text = [f"rank {r}: {s}<br>peak allocated {fmt_bytes(a)}" for r, s, a in zip(x, status, alloc)]
    fig = go.Figure()
    fig.add_bar(x=x, y=alloc / MIB, name="peak allocated", marker_color=[STATUS_COLORS.get(s, "#79706E") for s in status],
                customdata=list(keys) if keys is not None else None, hovertext=text, hoverinfo="text")
    fig.add_scatter(x=x, y=res / MIB, mode="markers", name="peak reserved", marker={"symbol": "line-ew-open", "size": 14, "color": "#333"},
                    customdata=list(keys) if keys is not None else None, hoverinfo="y+name")
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 30, "b": 40}, xaxis_title="rank", yaxis_title="MiB",
                      title="peak per rank (click a bar for that rank's timeline)", legend={"orientation": "h", "y": 1.0, "x": 1.0, "xanchor": "right", "yanchor": "bottom"},
                      xaxis={"type": "category" if len(x) <= 64 else "linear"})
    return fig


def plot_aligned_timelines(df: pd.DataFrame, keys: dict[int, object] | None = None, height: int = 420, max_ranks: int = 64) -> go.Figure:
    """Allocated bytes of every rank against the iteration axis (iteration k spans [k, k+1)).

    ``df``: rank, x, t_us, allocated (:func:`memprof.analysis.ranks.aligned_timelines`). Beyond ``max_ranks``
    ranks only the heaviest and lightest ``max_ranks // 2`` each are drawn (a legend of 1,000 lines
    helps nobody). ``keys``: rank -> customdata of its line (click-through).
    """
    fig = go.Figure()
    ranks = list(dict.fromkeys(df["rank"].astype(int).tolist()))
    if len(ranks) > max_ranks:
        peaks = df.groupby("rank")["allocated"].max().sort_values()
        ranks = sorted(set(peaks.index[: max_ranks // 2]) | set(peaks.index[-max_ranks // 2:]))
    for r in ranks:
        d = df[df["rank"] == r]
        fig.add_scatter(x=d["x"], y=d["allocated"] / MIB, mode="lines", line={"shape": "hv", "width": 1.3}, name=f"rank {r}",
                        customdata=[keys.get(r) for _ in range(len(d))] if keys else None,
                        hovertemplate=f"rank {r}<br>iteration %{{x:.2f}}<br>%{{y:.1f}} MiB<extra></extra>")
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 30, "b": 40}, yaxis_title="allocated (MiB)",
                      xaxis_title="iteration (each rank's iterations aligned; before the first < 0)",
                      title="all ranks on one axis, aligned by iteration")
    return fig
