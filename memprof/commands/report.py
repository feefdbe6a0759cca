"""``memprof report SNAPSHOT [B] -o report.html``: one self-contained offline HTML file.

The timeline, the explanation and the top allocations (and the diff against ``B`` when
given). plotly.js is embedded; the file fetches nothing.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path
from typing import Any

from memprof.errors import MemprofError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write one self-contained HTML report (works offline)")
    p.add_argument("snapshot", help="snapshot file")
    p.add_argument("other", nargs="?", default=None, help="a second snapshot to diff against")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--device", type=int, default=None)
    p.add_argument("--top", type=int, default=30, help="how many allocations alive at the peak to list")
    return p


def _model(path: str, device: int | None) -> Any:
    from memprof.commands.stats import default_device
    from memprof.load import load
    from memprof.meta import read_meta
    from memprof.replay import replay
    from memprof.views import build_model

    snap = load(path)
    dev = default_device(snap) if device is None else device
    snap.check_device(dev)
    analysis = None
    try:
        from memprof.analysis import analyze  # type: ignore[import-not-found]

        analysis = analyze(path, device=dev)
        return build_model(analysis.snap, analysis.rep, analysis.meta, analysis=analysis)
    except ImportError:
        pass
    except MemprofError:
        raise
    except Exception:
        pass  # fall back to the built-in categories
    return build_model(snap, replay(snap, dev), read_meta(path))


def _table(df: Any) -> str:
    return df.to_html(index=False, border=0, classes="t", escape=True)


def render(models: list[Any], labels: list[str], top: int = 30) -> str:
    """The report's HTML for one snapshot (or a diff when two are given)."""
    import plotly.io as pio

    from memprof import figures, views
    from memprof.format import fmt_bytes

    parts: list[str] = []
    first = True

    def fig_html(fig: Any) -> str:
        nonlocal first
        out = pio.to_html(fig, full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})
        first = False
        return out

    for lab, m in zip(labels, models):
        v = views.verdict(m)
        at_peak = views.alive_at(m, m.peak_ms)
        top_df = at_peak.head(top)
        top_tbl = top_df.assign(size=[fmt_bytes(int(s)) for s in top_df["size"]],
                                alloc_ms=top_df["t0_ms"].round(3))[["size", "category", "phase", "alloc_ms", "site"]]
        parts += [
            f"<h2>{html.escape(lab)}</h2>",
            f"<p class='sub'>peak allocated {fmt_bytes(m.peak_bytes)} at {m.peak_ms:.3f} ms · peak reserved "
            f"{fmt_bytes(m.peak_reserved_bytes)} · {m.rep.n_events:,} events · {len(m.allocs):,} allocations</p>",
            fig_html(figures.plot_timeline(m)),
            f"<div class='card'><div class='verdict'>{html.escape(v['verdict'])}</div><p>{html.escape(v['explanation'])}</p>"
            + "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in v["remedies"]) + "</ul></div>",
            fig_html(figures.plot_category_bars(views.by_category(at_peak))),
            "<h3>analytic account</h3>", _table(views.analytic_account(m)),
            f"<h3>top {top} allocations alive at the peak</h3>", _table(top_tbl),
        ]
    if len(models) > 1:
        curves = []
        for lab, m in zip(labels, models):
            x, y = views.step_view(m.t_alloc, m.allocated, None, None, 1500)
            curves.append((lab, x - views.align_offset(m), y))
        parts = [
            "<h2>diff</h2>", fig_html(figures.plot_compare(curves)),
            _table(views.compare_summary(models, labels)),
            "<h3>alive at the peak by category</h3>", _table(views.diff_by(models, labels, "category")),
            "<h3>by site</h3>", _table(views.diff_by(models, labels, "site").head(25)),
        ] + parts
    style = ("body{font-family:system-ui,sans-serif;margin:20px;color:#222}.sub{color:#555}"
             ".card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:8px 0}.verdict{font-weight:600;font-size:18px}"
             "table.t{border-collapse:collapse;font:12px monospace}table.t td,table.t th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}")
    title = "memprof report: " + " vs ".join(labels)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


def run(args: argparse.Namespace) -> int:
    paths = [args.snapshot] + ([args.other] if args.other else [])
    models = [_model(p, args.device) for p in paths]
    out = Path(args.output)
    try:
        out.write_text(render(models, [Path(p).name if Path(p).name != Path(paths[0]).name or i == 0 else p for i, p in enumerate(paths)], args.top), encoding="utf-8")
    except OSError as e:
        raise MemprofError(f"{out}: cannot write ({e.strerror or e})") from None
    print(f"memprof: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0
