"""Explain: why the peak is what it is: the verdict with its numbers, the breakdown, the analytic account."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import dcc, html

from memprof.dashboard import common, whatif
from memprof.dashboard.state import library
from memprof.present import figures, views
from memprof.units import fmt_bytes

dash.register_page(__name__, path="/explain", name="Explain", title="memprof · explain")
whatif.register()


#: Human names for the verdict's numbers (memprof.analysis.verdict); others: underscores become spaces.
LABELS = {
    "host_bound_below": "allocator-bound below (GPU busy share)", "gpu_bound_from": "compute-bound from (GPU busy share)",
    "n_iterations": "iterations", "rise_fall_ratio": "sawtooth rise / fall time", "rise_allocs_per_ms": "allocations per ms (rise)",
    "fall_frees_per_ms": "frees per ms (fall)", "symmetric_ramps": "symmetric ramps", "cpu_source": "host time from",
    "basis": "verdict based on", "gpu_utilization": "GPU utilisation (busy / step)", "busy_ms": "GPU busy",
    "span_ms": "step time", "host_ms": "host time (profiled step)", "kernel_launches": "kernel launches",
    "launches_per_ms": "launches per ms", "mean_kernel_us": "mean GPU work per launch", "event_over_host": "CUDA events / host time",
    "gpu_ms": "GPU time (CUDA events)", "cpu_ms": "host time", "gpu_busy": "GPU time / host time", "utilization": "utilisation",
    "launches": "launches", "span_source": "step time from",
}
_SHARE = ("host_bound_below", "gpu_bound_from", "gpu_utilization", "utilization", "event_over_host", "gpu_busy", "share")


def fmt_quantity(key: str, v: Any) -> str:
    """One verdict number as a person reads it: units on times and bytes, shares as %, counts with separators."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if not isinstance(v, (int, float)):
        return str(v)
    if key in _SHARE or key.endswith("_share"):
        return f"{v:.0%}"
    if key.endswith("_per_ms"):
        return f"{v:,.1f} / ms"
    if key.endswith("_ms"):
        return f"{v:,.2f} ms"
    if key.endswith("_us"):
        return f"{v:,.1f} µs"
    if "bytes" in key:
        return fmt_bytes(int(v))
    if key.endswith("ratio"):
        return f"{v:.2f}×"
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.3g}"


def numbers_tables(numbers: dict[str, Any], cpu: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The verdict's numbers as (quantity, value) rows, and ``per_phase`` as its own table (phase + one
    formatted column per number), or None. On a CPU run "CUDA events" is the host's own clock."""
    rows = []
    for k, v in numbers.items():
        if isinstance(v, dict):
            continue
        val = fmt_quantity(k, v)
        if cpu and val == "cuda events":
            val = "host timers (no GPU on a CPU run)"
        rows.append((LABELS.get(k, k.replace("_", " ")), val))
    per = numbers.get("per_phase")
    phase_df = None
    if isinstance(per, dict) and per:
        cols = list(dict.fromkeys(c for d in per.values() if isinstance(d, dict) for c in d))
        phase_df = pd.DataFrame([{"phase": ph, **{LABELS.get(c, c.replace("_", " ")): fmt_quantity(c, d.get(c)) for c in cols}}
                                 for ph, d in per.items() if isinstance(d, dict)])
    return pd.DataFrame(rows, columns=["quantity", "value"]), phase_df


def narrow(tbl: Any, width: str = "760px") -> Any:
    """A two-column (quantity, value) table need not span the page."""
    tbl.style_table = {"overflowX": "auto", "maxWidth": width}
    return tbl


def oom_section(m: views.TimelineModel, oom: dict[str, Any] | None) -> html.Div:
    """What the allocator had when it ran out of memory (``memprof.analysis`` OOM report)."""
    t = ", ".join(f"{x:.3f} ms" for x in m.oom_ms[:3]) if len(m.oom_ms) else "before the recorded window"
    parts: list[Any] = [html.Div(f"Out of memory at {t}", className="verdict", id="explain-oom-title")]
    if oom:
        parts.append(html.P(str(oom.get("explanation", ""))))
        rows = [(LABELS.get(k, k.replace("_bytes", "").replace("_", " ")), fmt_bytes(oom[k]) if oom.get(k) is not None else "-")
                for k in ("requested_bytes", "device_free_bytes", "allocated_bytes", "reserved_bytes", "free_cached_bytes",
                          "largest_free_block_bytes", "device_total_bytes") if k in oom]
        if oom.get("site"):
            rows.append(("where", str(oom["site"])))
        if oom.get("reason"):
            rows.append(("reason", str(oom["reason"])))
        if rows:
            parts.append(narrow(common.table("explain-oom-numbers", pd.DataFrame(rows, columns=["quantity", "value"]), page_size=12)))
    return html.Div(parts, className="card oom", id="explain-oom")


def analytic_part(m: views.TimelineModel) -> list[Any]:
    """The analytic account with byte units, or why there is none (scripts, foreign snapshots)."""
    a = getattr(m, "analysis", None)
    try:
        pk = a.peak if a is not None else None
    except Exception:  # noqa: BLE001 - an odd snapshot: the rest of the page still renders
        pk = None
    if pk is None or not len(pk.analytic):
        kind = str((m.meta.get("workload") or {}).get("kind", "")) or "a snapshot memprof did not record"
        return [html.P(f"No analytic account for {kind}: memprof knows the tensor shapes only of its built-in workloads "
                       "(memprof record attention / transformer), so it can say what their peak should be; for a script "
                       "the breakdown above is the whole account.", className="sub", id="explain-analytic-none")]
    df = pk.analytic.assign(expected=[fmt_bytes(int(b)) for b in pk.analytic["expected_bytes"]])[["item", "expected"]]
    tail = [("expected in all", fmt_bytes(pk.expected_bytes)), ("measured at the peak", fmt_bytes(pk.measured_bytes)),
            ("measured - expected", fmt_bytes(pk.difference_bytes))] if pk.expected_bytes else []
    df = pd.concat([df, pd.DataFrame(tail, columns=["item", "expected"])], ignore_index=True)
    return [html.P(pk.formula, className="sub") if pk.formula else "", common.table("explain-analytic", df, page_size=20)]


def site_table(at_peak: pd.DataFrame) -> pd.DataFrame:
    """Largest sites alive at the peak with byte units; a site holding several categories says so, with each one's bytes."""
    s = views.by_site(at_peak)
    return s.assign(bytes=[fmt_bytes(int(b)) for b in s["bytes"]])[["site", "category", "bytes", "count"]]


def explain_content(snap_id: int, device: int | None) -> list[Any]:
    """OOM (when there is one), verdict with its numbers, per-phase numbers, breakdown of the peak, analytic account."""
    m = library().model(snap_id, device)
    v = views.verdict(m)
    cpu = str((m.meta.get("device") or {}).get("type", "cuda")) not in ("cuda", "")
    at_peak = views.alive_at(m, m.peak_ms)
    nums, per_phase = numbers_tables(v["numbers"], cpu)
    out: list[Any] = []
    a = getattr(m, "analysis", None)
    try:
        oom = a.oom if a is not None else None
    except Exception:  # noqa: BLE001
        oom = None
    if len(m.oom_ms) or oom:
        out.append(oom_section(m, oom))
    if not m.rep.has_trace:  # an empty trace: no iterations, no verdict, only the state at dump time
        out.append(html.Div([html.Div("no history recorded", className="verdict", id="explain-verdict"), html.P(
            "The snapshot's trace is empty: it holds the state when it was taken, not how memory got there. Below are "
            "the live blocks at dump time. Record with torch.cuda.memory._record_memory_history() (or `memprof record`) "
            "for the timeline, the iterations and the verdict.", id="explain-no-history")], className="card"))
    else:
        out.append(html.Div([html.Div(v["verdict"], className="verdict", id="explain-verdict"), html.P(v["explanation"]),
                             html.Ul([html.Li(r) for r in v["remedies"]])], className="card"))
    out += [
        html.H4("numbers"),
        narrow(common.table("explain-numbers", nums, page_size=25)),
    ]
    if per_phase is not None:
        out += [html.H4("per phase"), common.table("explain-phases", per_phase, page_size=12)]
    out += [
        html.Div([
            html.Div(dcc.Graph(id="explain-categories", figure=figures.plot_category_bars(views.by_category(at_peak))), className="grow"),
        ], className="row"),
        html.H4("largest sites alive at the peak"),
        common.table("explain-sites", site_table(at_peak)),
        html.H4("analytic account"),
        *analytic_part(m),
        whatif.panel(snap_id, device),
    ]
    return out


def layout(snap: str | None = None, device: str | None = None, **_: Any) -> html.Div:
    try:
        sid, dev = common.resolve_key(snap), common.parse_device(device)
        m = library().model(sid, dev)
        body = explain_content(sid, dev)
    except Exception as e:
        return html.Div([html.H2("Explain"), common.error_box(e)])
    return html.Div([html.H2(f"Explain · {library().get(sid).rel}"), html.P(common.summary_line(m), className="sub"),
                     common.page_links(sid, dev), *body])
