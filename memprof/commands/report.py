"""``memprof report SNAPSHOT [B] -o report.html``: one self-contained offline HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from memprof.commands import count
from memprof.errors import MemprofError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write one self-contained HTML report (timeline, verdict, peak; with B, the diff)")
    p.add_argument("snapshot", help="snapshot file (A)")
    p.add_argument("b", nargs="?", default=None, help="second snapshot to compare with A")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--device", type=int, default=None, help="device index (default: most entries)")
    p.add_argument("--top", type=count, default=20, help="how many allocations/sites to list")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the columnar cache")
    return p


def run(args: argparse.Namespace) -> int:
    from memprof.analysis import analyze
    from memprof.present.figures_report import report_html
    from memprof.present.views import build_model

    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise MemprofError(f"{out}: is a folder")
    if not out.parent.resolve().is_dir():
        raise MemprofError(f"{out.parent}: no such folder")
    paths = [args.snapshot] + ([args.b] if args.b else [])
    ans = [analyze(p, device=args.device, use_cache=not args.no_cache) for p in paths]
    models = [(p, build_model(a.snap, a.rep, a.meta, analysis=a)) for p, a in zip(paths, ans)]
    diff = ans[0].diff(ans[1]).to_dict(args.top) if len(ans) == 2 else None
    try:
        out.write_text(report_html(models, diff, top=args.top), encoding="utf-8")
    except OSError as e:
        raise MemprofError(f"{out}: cannot write ({e.strerror})") from None
    print(f"memprof: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0
