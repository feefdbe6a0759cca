"""``memprof check SNAPSHOT_OR_RUN``: exit 0 within the limits, 1 with an explanation when not (for CI).

    memprof check run.pickle.gz --max-allocated 20GiB --max-reserved 24GiB
    memprof check run.pickle.gz --baseline baseline.pickle.gz --max-regression 5%
    memprof check RUN/ --max-allocated 70GiB          # every rank of a multi-rank run
"""

from __future__ import annotations

import argparse
import json
import sys

from memprof.errors import MemprofError
from memprof.units import fmt_bytes
from memprof.analysis.checks import Limits, Result, check, parse_percent
from memprof.units import parse_size

EXIT_FAIL = 1


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="exit 1 when a snapshot (or any rank of a run) exceeds memory limits or regressed",
                       description="Check peaks against limits or a baseline. Exit 0: within limits; 1: not (with an "
                                   "explanation of what grew, by category and source line); 2: bad input.")
    p.add_argument("target", metavar="SNAPSHOT_OR_RUN", help="a snapshot file, or a run folder of rank snapshots (RUN/rank{R}.pickle.gz)")
    p.add_argument("--max-allocated", metavar="SIZE", help="limit on peak allocated bytes (e.g. 20GiB, 512MiB, 1.5GB)")
    p.add_argument("--max-reserved", metavar="SIZE", help="limit on peak reserved bytes")
    p.add_argument("--baseline", metavar="OTHER", help="a snapshot (or run folder, matched by rank) to compare with")
    p.add_argument("--max-regression", metavar="PCT", help="allowed growth of the peaks over the baseline (default 5%% with --baseline)")
    p.add_argument("--device", type=int, default=None, help="device index (default: the device with most entries)")
    p.add_argument("--top", type=int, default=3, help="categories and source lines named in an explanation (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the columnar cache")
    return p


def limits_of(args: argparse.Namespace) -> Limits:
    lim = Limits(
        max_allocated=None if args.max_allocated is None else parse_size(args.max_allocated),
        max_reserved=None if args.max_reserved is None else parse_size(args.max_reserved),
        max_regression=None if args.max_regression is None else parse_percent(args.max_regression),
    )
    if lim.max_regression is not None and args.baseline is None:
        raise MemprofError("--max-regression needs --baseline OTHER")
    if args.baseline is not None and lim.max_regression is None:
        lim.max_regression = 0.05
    if lim.max_allocated is None and lim.max_reserved is None and args.baseline is None:
        raise MemprofError("nothing to check: give --max-allocated, --max-reserved or --baseline")
    return lim


def render(results: list[Result]) -> str:
    lines = []
    for r in results:
        status = "ok  " if r.ok else "FAIL"
        lines.append(f"{status} {r.m.label:<10} peak allocated {fmt_bytes(r.m.allocated_bytes):>10}  "
                     f"reserved {fmt_bytes(r.m.reserved_bytes):>10}  ({r.m.source})  {r.m.path}")
    bad = [r for r in results if not r.ok]
    if bad:
        lines.append("")
        lines += [r.why for r in bad]
    else:
        lines.append(f"memprof check: within limits ({len(results)} snapshot{'s' if len(results) != 1 else ''})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise MemprofError("--top must be >= 0")
    lim = limits_of(args)
    results = check(args.target, lim, args.baseline, device=args.device, top=args.top, use_cache=not args.no_cache)
    ok = all(r.ok for r in results)
    if args.json:
        json.dump({"ok": ok, "limits": {"max_allocated_bytes": lim.max_allocated, "max_reserved_bytes": lim.max_reserved,
                                        "max_regression": lim.max_regression},
                   "results": [r.to_dict() for r in results]}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(render(results))
    return 0 if ok else EXIT_FAIL
