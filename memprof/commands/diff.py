"""``memprof diff A B``: how run B's memory differs from run A's (peak, categories, source lines)."""

from __future__ import annotations

import argparse
import json
import sys

from memprof.commands import add_report_options
from memprof.units import fmt_bytes


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("diff", help="compare two snapshots: peak, categories and source lines at the peak")
    p.add_argument("a", help="snapshot A (the baseline), or a run folder with --ranks")
    p.add_argument("b", nargs="?", default=None, help="snapshot B (compared with A)")
    add_report_options(p, top=10, top_help="how many source lines to list")
    p.add_argument("--ranks", type=int, nargs=2, metavar=("A", "B"), help="with a run folder: compare rank B with rank A")
    return p


def _sign(n: int) -> str:
    return ("+" if n > 0 else "") + fmt_bytes(n)


def render(d: dict, a: str, b: str) -> str:
    pa, pb = d["peak_a_bytes"], d["peak_b_bytes"]
    rel = f" ({d['peak_delta_bytes'] / pa:+.1%})" if pa else ""
    lines = [f"A: {a}", f"B: {b}", "",
             f"PEAK  A {fmt_bytes(pa)}  B {fmt_bytes(pb)}  B-A {_sign(d['peak_delta_bytes'])}{rel}", "",
             "BY CATEGORY AT THE PEAK"]
    for c in d["by_category"]:
        lines.append(f"  {c['category']:<16} {fmt_bytes(c['a_bytes']):>10} -> {fmt_bytes(c['b_bytes']):>10}  {_sign(c['delta']):>11}")
    if d["by_site"]:
        lines += ["", "SOURCE LINES THAT CHANGED AT THE PEAK"]
        for s in d["by_site"]:
            lines.append(f"  {_sign(s['delta']):>11}  {s['status']:<11} {s['site']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from memprof.analysis import analyze
    from memprof.commands.run_report import diff_paths

    a, b = diff_paths(args)  # A B, or RUN --ranks A B (those two ranks' snapshots)
    an_a = analyze(a, device=args.device, use_cache=not args.no_cache)
    an_b = analyze(b, device=args.device, use_cache=not args.no_cache)
    d = an_a.diff(an_b).to_dict(args.top)
    if args.json:
        json.dump(d, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(render(d, a, b))
    return 0
