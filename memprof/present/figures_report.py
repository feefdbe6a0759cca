"""``memprof report``: one self-contained offline HTML page (plotly.js embedded; nothing fetched).

Sections: summary, timeline, verdict and explanation, peak breakdown by category, top allocations
alive at the peak; with a second snapshot, the diff tables and the two timelines overlaid.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from memprof.present import figures, views
from memprof.units import fmt_bytes, fmt_us

CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#1f2937;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;font:12px monospace}td,th{border:1px solid #e5e7eb;padding:3px 6px;text-align:left}
th{background:#f3f4f6}.verdict{font-size:20px;font-weight:bold;color:#b91c1c}.sub{color:#6b7280}"""


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="")


def _fig(fig: Any, first: list[bool]) -> str:
    """The figure as a div; plotly.js is inlined once, with the first figure (``first`` is a flag box)."""
    out = fig.to_html(full_html=False, include_plotlyjs=bool(first[0]), config={"displaylogo": False})
    first[0] = False
    return out


def _summary(m: views.TimelineModel, label: str) -> str:
    return (f"<p class='sub'>{html.escape(label)}: peak allocated {fmt_bytes(m.peak_bytes)} at {m.peak_ms:.3f} ms · "
            f"peak reserved {fmt_bytes(m.peak_reserved_bytes)} · {len(m.allocs):,} allocations · {fmt_us(m.end_ms * 1000)}</p>")


def _one(m: views.TimelineModel, label: str, first: list[bool], top: int) -> list[str]:
    v = views.verdict(m)
    at_peak = views.alive_at(m, m.peak_ms)
    cat = views.by_category(at_peak).assign(MiB=lambda d: (d["bytes"] / 2**20).round(2))
    top_allocs = at_peak.head(top)
    ta = pd.DataFrame({"size": [fmt_bytes(int(s)) for s in top_allocs["size"]], "category": top_allocs["category"].to_numpy(),
                       "phase": top_allocs["phase"].to_numpy(), "alloc_ms": top_allocs["t0_ms"].round(3).to_numpy(),
                       "site": top_allocs["site"].to_numpy()})
    return [
        f"<h2>{html.escape(label)}</h2>", _summary(m, label),
        *(["<h3>timeline</h3>", _fig(figures.plot_timeline(m), first)] if m.rep.has_trace else
          ["<h3>state at dump time</h3>", "<p id='no-history'>No allocation history was recorded (the trace is empty): "
           "shown is what the snapshot's segments held when it was taken.</p>", _fig(figures.plot_state(m), first)]),
        "<h3>verdict</h3>", f"<div class='verdict' id='verdict'>{html.escape(str(v['verdict']))}</div>",
        f"<p>{html.escape(str(v['explanation']))}</p>",
        "<ul>" + "".join(f"<li>{html.escape(str(r))}</li>" for r in v["remedies"]) + "</ul>",
        "<h3>peak breakdown by category</h3>", _fig(figures.plot_category_bars(views.by_category(at_peak)), first), _table(cat),
        f"<h3>top {top} allocations alive at the peak</h3>", _table(ta),
    ]


def report_html(models: list[tuple[str, views.TimelineModel]], diff: dict[str, Any] | None = None, top: int = 20) -> str:
    """The whole page. ``models``: (label, model) for A [and B]; ``diff``: ``Diff.to_dict()`` of B against A."""
    first = [True]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>memprof report</title>",
             f"<style>{CSS}</style></head><body>",
             "<h1>memprof report: " + " vs ".join(html.escape(lab) for lab, _ in models) + "</h1>"]
    if diff is not None and len(models) == 2:
        (la, ma), (lb, mb) = models
        curves = []
        for lab, m in models:
            x, y = views.step_view(m.t_alloc, m.allocated, None, None, 2000)
            curves.append((lab, x - views.align_offset(m), y))
        ph = ma.phases.assign(start_ms=ma.phases["start_ms"] - views.align_offset(ma), end_ms=ma.phases["end_ms"] - views.align_offset(ma))
        pa, pb = diff["peak_a_bytes"], diff["peak_b_bytes"]
        parts += ["<h2>comparison</h2>",
                  f"<p>peak A {fmt_bytes(pa)} · B {fmt_bytes(pb)} · B−A {fmt_bytes(diff['peak_delta_bytes'])}"
                  + (f" ({diff['peak_delta_bytes'] / pa:+.1%})" if pa else "") + f" · aligned by {html.escape(str(diff.get('aligned_by', '')))}</p>",
                  _fig(figures.plot_compare(curves, [ph]), first),
                  "<h3>by category at the peak</h3>", _table(pd.DataFrame(diff["by_category"])),
                  "<h3>source lines that changed at the peak</h3>",
                  _table(pd.DataFrame(diff["by_site"], columns=["site", "a_bytes", "b_bytes", "delta", "status"]))]
    for lab, m in models:
        parts += _one(m, lab, first, top)
    parts.append("</body></html>")
    return "\n".join(parts)
