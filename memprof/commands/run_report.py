"""``memprof stats|explain|diff`` on a run folder (``RUN/rank{R}.pickle.gz``, one per torchrun rank).

The stats, explain and diff commands hand a folder here. Run-level reports read the ranks'
summaries only (:mod:`memprof.analysis.ranks`); ``explain RUN --rank R`` and ``diff RUN --ranks A B`` open
the full snapshots of the ranks asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from memprof.errors import MemprofError
from memprof.units import fmt_bytes, fmt_us
from memprof.analysis.ranks import run_dict
from memprof.snapshot.runs import rank_files


def rank_file(run: str, rank: int) -> Path:
    files = rank_files(run)
    if rank not in files:
        raise MemprofError(f"{run}: no snapshot for rank {rank} (ranks: {', '.join(map(str, files)) or 'none'})")
    return files[rank]


def _b(v: Any) -> str:
    return fmt_bytes(v) if v is not None else "-"


def render_ranks(d: dict[str, Any]) -> list[str]:
    lines = [f"{d['run']}  ({d['world_size']} ranks)", "",
             f"  {'rank':>4}  {'status':<10} {'peak alloc':>11} {'peak reserved':>13} {'peak at':>10}  host"]
    for r in d["ranks"]:
        at = fmt_us(r["peak_time_us"]) if r["peak_time_us"] is not None else "-"
        lines.append(f"  {r['rank']:>4}  {r['status']:<10} {_b(r['peak_allocated_bytes']):>11} {_b(r['peak_reserved_bytes']):>13}"
                     f" {at:>10}  {r.get('host') or ''}" + (f"   {r['error']}" if r.get("error") and r["status"] != "ok" else ""))
    return lines


def render_imbalance(im: dict[str, Any] | None, top: int) -> list[str]:
    if not im:
        return ["", "IMBALANCE  no rank has a readable snapshot"]
    ratio = f"{im['ratio']:.3f}x" if im["ratio"] is not None else "inf"
    lines = ["", f"IMBALANCE  rank {im['heaviest_rank']} peaks at {fmt_bytes(im['heaviest_bytes'])}, rank {im['lightest_rank']} at "
             f"{fmt_bytes(im['lightest_bytes'])}: {ratio}, {fmt_bytes(im['spread_bytes'])} more"]
    if im["by_category"]:
        lines.append(f"  held by rank {im['heaviest_rank']} at its peak beyond rank {im['lightest_rank']}'s, by category:")
        for c in im["by_category"]:
            lines.append(f"    {c['category']:<16} {fmt_bytes(c['lightest_bytes']):>10} -> {fmt_bytes(c['heaviest_bytes']):>10}  +{fmt_bytes(c['delta'])}")
    if im["by_site"]:
        lines.append("  by source line:")
        for s in im["by_site"][:top]:
            lines.append(f"    +{fmt_bytes(s['delta']):>10}  {s['site']}")
    return lines


def _emit(d: dict[str, Any], text: list[str], as_json: bool) -> int:
    if as_json:
        json.dump(d, sys.stdout)
        sys.stdout.write("\n")
    else:
        print("\n".join(text))
    return 0


def stats(args: argparse.Namespace) -> int:
    """``memprof stats RUN``: every rank's peak and status, and the imbalance."""
    d = run_dict(args.snapshot, top=args.top)
    return _emit(d, render_ranks(d) + render_imbalance(d["imbalance"], args.top), args.json)


def wants_run(args: argparse.Namespace) -> bool:
    """True when ``explain`` was given a run folder; ``--rank`` without one is an error."""
    from memprof.snapshot.runs import is_run

    if is_run(args.snapshot):
        return True
    if getattr(args, "rank", None) is not None:
        raise MemprofError("--rank needs a run folder (RUN/rank{R}.pickle.gz)")
    return False


def explain(args: argparse.Namespace, explain_one: Any) -> int:
    """``memprof explain RUN``: the ranks, the imbalance and what it consists of; ``--rank R``: the
    full explanation of that rank's snapshot (``explain_one`` with ``snapshot`` set to its file)."""
    if getattr(args, "rank", None) is not None:
        one = argparse.Namespace(**vars(args))
        one.snapshot, one.rank = str(rank_file(args.snapshot, args.rank)), None
        return explain_one(one)
    d = run_dict(args.snapshot, top=args.top)
    lines = render_ranks(d) + render_imbalance(d["imbalance"], args.top)
    bad = [r for r in d["ranks"] if r["status"] != "ok"]
    if bad:
        lines += ["", "RANKS NOT OK"] + [f"  rank {r['rank']}: {r['status']}: {r.get('error') or ''}" for r in bad]
    im = d["imbalance"]
    if im:
        lines += ["", f"Open one rank: memprof explain {args.snapshot} --rank {im['heaviest_rank']}; "
                      f"compare two: memprof diff {args.snapshot} --ranks {im['lightest_rank']} {im['heaviest_rank']}"]
    return _emit(d, lines, args.json)


def diff_paths(args: argparse.Namespace) -> tuple[str, str]:
    """The two snapshot files ``diff`` compares: ``A B``, or ``RUN --ranks A B``."""
    ranks = getattr(args, "ranks", None)
    if ranks:
        if args.b is not None:
            raise MemprofError("give either two snapshots or one run folder with --ranks A B")
        return str(rank_file(args.a, ranks[0])), str(rank_file(args.a, ranks[1]))
    if args.b is None:
        raise MemprofError("diff needs two snapshots, or a run folder and --ranks A B")
    return args.a, args.b
