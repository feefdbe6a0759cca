"""``memprof explain SNAPSHOT``: the iterations, the verdict, what fills the peak, fragmentation, OOM."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import numpy as np

from memprof.commands import add_report_options
from memprof.escape import printable
from memprof.units import fmt_bytes, fmt_us


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("explain", help="why memory peaks where it does, and whether the allocator sets the pace")
    p.add_argument("snapshot", help="snapshot file (.pickle, .pickle.gz or .json); its .meta.json is read when present")
    p.add_argument("--rank", type=int, default=None, help="SNAPSHOT is a run folder (RUN/rank{R}.pickle.gz): explain this rank")
    add_report_options(p, top=8, top_help="how many source lines to list at the peak")
    p.add_argument("--no-predict", action="store_true",
                   help="skip the out-of-memory prediction (memprof predict for built-in workloads; the allocator model's "
                        "search on traces of up to 150,000 events, bounds above that)")
    return p


def _num(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return v


def explain_dict(an: Any, top: int = 8) -> dict[str, Any]:
    """Everything ``memprof explain --json`` prints, as plain JSON values."""
    from memprof.analysis.fragmentation import fragmentation_summary

    its = an.iterations
    peak = an.peak
    pd_ = peak.to_dict(top)
    return {
        "snapshot": an.snap.source,
        "device": an.rep.device,
        "history": bool(an.rep.has_trace),
        "window": _window(an),
        "state": {"allocated_bytes": int(an.snap.state_totals()["allocated"].get(an.rep.device, 0)),
                  "reserved_bytes": int(an.snap.state_totals()["reserved"].get(an.rep.device, 0))},
        "phase_source": str(an.phases["source"].iloc[0]) if len(an.phases) else None,
        "phases": [{k: _num(v) for k, v in r.items()} for r in an.phases.to_dict("records")],
        "iterations": [{k: _num(v) for k, v in r.items()} for r in its.to_dict("records")],
        "leak": {k: _num(v) for k, v in an.leak.items()},
        "verdict": an.verdict.to_dict(),
        "peak_bytes": int(an.rep.peak_bytes),
        "peak_torch_bytes": int(an.rep.peak_torch_bytes),
        "max_awaiting_free_bytes": int(an.rep.timeline["awaiting_free"].max()),
        "pools": _pools(an),
        "peak_us": float(an.rep.peak_time_us),
        "peak_by_category": pd_["by_category"],
        "peak_by_site": pd_["by_site"],
        "peak_by_phase": pd_["by_phase"],
        "peak_by_module": pd_["by_module"],
        "analytic": {"items": pd_["analytic"], "expected_bytes": pd_["expected_bytes"],
                     "difference_bytes": pd_["difference_bytes"], "formula": pd_["formula"]},
        "predicted_oom": pd_["predicted_oom"],
        "fragmentation": fragmentation_summary(an.fragmentation, an.rep),
        "oom": an.oom,
        "device_type": str((an.meta.get("device") or {}).get("type", "cuda")),
    }


def render(d: dict[str, Any], start_us: float) -> str:
    v = d["verdict"]
    lines = [f"{d['snapshot']}  (device {d['device']})", ""]
    if not d["history"]:
        return "\n".join(lines + _render_state(d))
    its = d["iterations"]
    if d["window"]["begins_mid_run"]:
        lines += [f"NOTE  the trace begins mid-run: {d['window']['reason']}", ""]
    lines.append(f"ITERATIONS  ({len(its)}, phases from {d['phase_source']})")
    for it in its[:8]:
        lines.append(f"  #{it['iteration']:<3} peak {fmt_bytes(it['peak_bytes']):>10} at +{fmt_us(it['peak_us'] - start_us):>9}"
                     f"   rise {fmt_us(it['rise_us']):>9}  fall {fmt_us(it['fall_us']):>9}"
                     f"   rise/fall {it['rise_fall_ratio']:.2f}" if it["rise_fall_ratio"] is not None else
                     f"  #{it['iteration']:<3} peak {fmt_bytes(it['peak_bytes']):>10}")
    if len(its) > 8:
        lines.append(f"  ... {len(its) - 8} more")
    lines.append(f"  leak: {d['leak']['explanation']}")
    lines += ["", f"VERDICT  {v['verdict'].upper()}", f"  {v['explanation']}"]
    for r in v["remedies"]:
        lines.append(f"  - {r}")
    lines += ["", f"PEAK  {fmt_bytes(d['peak_bytes'])} at +{fmt_us(d['peak_us'] - start_us)}"]
    if d["max_awaiting_free_bytes"]:
        lines.append(f"  memory held, incl. up to {fmt_bytes(d['max_awaiting_free_bytes'])} awaiting free on another stream "
                     f"(record_stream); allocated as torch counts it (max_memory_allocated): {fmt_bytes(d['peak_torch_bytes'])}")
    for p in d["pools"]:
        lines.append(f"  pool {p['pool']:<10} {fmt_bytes(p['at_peak']):>10} at the peak, {fmt_bytes(p['reserved']):>10} reserved"
                     + ("  (default pool)" if p["pool"] == "(0, 0)" else "  (private: CUDA graph or MemPool)"))
    total = max(d["peak_bytes"], 1)
    for c, b in d["peak_by_category"].items():
        lines.append(f"  {c:<16} {fmt_bytes(b):>10}  {b / total:6.1%}")
    if d["peak_by_site"]:
        lines.append("  largest source lines:")
        for s in d["peak_by_site"]:
            lines.append(f"    {fmt_bytes(s['bytes']):>10}  {s['share']:6.1%}  x{s['count']:<4} {s['site']}")
    mods = [m for m in d.get("peak_by_module") or [] if m["module"] != "<no module>"]
    if mods:
        lines.append("  largest modules:")
        for m in mods[:5]:
            cats = ", ".join(f"{c} {fmt_bytes(b)}" for c, b in sorted(m["by_category"].items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"    {fmt_bytes(m['bytes']):>10}  {m['bytes'] / total:6.1%}  {m['module']}  ({cats})")
    a = d["analytic"]
    if a["expected_bytes"]:
        lines.append(f"  expected from the shapes: {fmt_bytes(a['expected_bytes'])} ({a['formula']}); "
                     f"measured - expected = {fmt_bytes(a['difference_bytes'])}")
        for k, b in a["items"].items():
            lines.append(f"    {fmt_bytes(b):>10}  {k}")
    po = d["predicted_oom"]
    if po and po.get("source") == "simulator":
        lines.append(f"  device memory needed: {fmt_bytes(po['device_memory_needed'])}; {po['note']}")
    elif po and po.get("source") == "bounds":
        lines += [f"  device memory needed: {po['note']}", f"    exact figure: {po['exact']}"]
    elif po:
        rng = f"{po['max_fitting_reserved']:,} to " if po.get("max_fitting_reserved") else ""
        lines.append(f"  out of memory predicted above {po['parameter']} = {rng}{po['max_fitting']:,} "
                     f"(device {fmt_bytes(po['device_total_bytes'])}); {po['note']}")
    f = d["fragmentation"]
    if f:
        r = f["at_peak_reserved"]
        lines += ["", f"RESERVED  {fmt_bytes(r['reserved'])} at its peak: {fmt_bytes(r['allocated'])} allocated, "
                      f"{fmt_bytes(r['rounding_waste'])} rounding waste, {fmt_bytes(r['free_cached'])} "
                      + ("free in the cache" if d.get("device_type", "cuda") == "cuda" else "reserved but free")
                      + ("" if f["reserved_complete"] else " (the trace misses segment events: reserved is a lower bound)")]
    if d["oom"]:
        lines += ["", "OUT OF MEMORY", f"  {d['oom']['explanation']}"]
    return "\n".join(lines)


SEARCH_MAX_EVENTS = 150_000
"""Above this many trace events explain gives bounds for the device memory needed instead of
the allocator model's search (11 s at 1M events; explain of the 10M benchmark file took 98 s with it)."""


def predicted_oom(an: Any) -> dict[str, Any] | None:
    """Built-in workloads: where ``memprof predict`` says the recorded device runs out; any other
    snapshot: the least device memory the allocator model needs for its requests."""
    from memprof.units import fmt_bytes
    from memprof.allocator.model import min_device_memory, requests_from_snapshot

    w = an.meta.get("workload") or {}
    if w.get("kind") in ("attention", "transformer"):
        from memprof.predict.core import workload_oom

        r = workload_oom(an.meta)
        if r is not None:
            return r
    total = (an.meta.get("device") or {}).get("total_memory_bytes")
    rep = an.rep
    if rep.n_events > SEARCH_MAX_EVENTS:
        # the search replays the whole stream ~10 times (~1.6 us a request each): past this size
        # explain states the bounds the replay already has and leaves the search to whatif
        return {"parameter": "device_memory", "max_fitting": None, "first_failing": None,
                "device_total_bytes": total, "device_memory_needed": None, "source": "bounds",
                "device_memory_at_least": int(rep.peak_torch_bytes),
                "recorded_reserved_peak": int(rep.peak_reserved_bytes),
                "note": f"at least {fmt_bytes(rep.peak_torch_bytes)} (the most allocated at once); the run reserved "
                        f"{fmt_bytes(rep.peak_reserved_bytes)} at its peak",
                "exact": f"memprof whatif {shlex.quote(printable(str(an.snap.source)))} --min-device-memory "
                         f"(the allocator model's search replays the {rep.n_events:,} events ~10 times)"}
    req, conf = requests_from_snapshot(an.snap, rep.device)
    if not len(req):
        return None
    need = min_device_memory(req, conf)
    return {"parameter": "device_memory", "max_fitting": None, "first_failing": None,
            "device_total_bytes": total, "device_memory_needed": need, "source": "simulator",
            "note": f"the allocator model needs {fmt_bytes(need)} of device memory for these requests "
                    f"(from an empty cache, {conf.describe()} settings)"}


def _window(an: Any) -> dict[str, Any]:
    """Whether the trace begins mid-run (wrapped ring buffer or late start); see trace_begins_mid_run."""
    from memprof.replay.timeline import trace_begins_mid_run

    return trace_begins_mid_run(an.snap, an.rep, (an.meta.get("record") or {}).get("max_entries"))


def _pools(an: Any) -> list[dict[str, Any]]:
    """Per-pool totals when the snapshot has private pools (CUDA graphs, MemPool); [] otherwise."""
    from memprof.replay.timeline import pool_totals

    pt = pool_totals(an.snap, an.rep)
    return [{k: (str(v) if k == "pool" else int(v)) for k, v in r.items()} for r in pt.to_dict("records")] if len(pt) > 1 else []


def _render_state(d: dict[str, Any]) -> list[str]:
    """No history recorded: what the snapshot does hold, said plainly (no iterations, no verdict)."""
    st = d["state"]
    lines = ["STATE AT DUMP TIME  (no allocation history was recorded: the trace is empty, so there are no",
             "  iterations, no peak over time and no verdict; record with torch.cuda.memory._record_memory_history()",
             "  or `memprof record` to see how memory got here)",
             f"  allocated {fmt_bytes(st['allocated_bytes'])} in blocks ({fmt_bytes(d['peak_bytes'])} requested), "
             f"reserved {fmt_bytes(st['reserved_bytes'])}"]
    if d["peak_by_site"]:
        lines.append("  largest source lines of the live blocks:")
        for s in d["peak_by_site"]:
            lines.append(f"    {fmt_bytes(s['bytes']):>10}  {s['share']:6.1%}  x{s['count']:<4} {s['site']}")
    f = d["fragmentation"]
    if f:
        r = f["at_peak_reserved"]
        lines.append(f"  reserved: {fmt_bytes(r['allocated'])} allocated, {fmt_bytes(r['rounding_waste'])} rounding waste, "
                     f"{fmt_bytes(r['free_cached'])} free in the cache")
    if d["oom"]:
        lines += ["", "OUT OF MEMORY", f"  {d['oom']['explanation']}"]
    return lines


def run(args: argparse.Namespace) -> int:
    from memprof.analysis import analyze
    from memprof.snapshot.load import load
    from memprof.snapshot.meta import read_meta
    from memprof.commands import run_report

    if run_report.wants_run(args):  # a torchrun run folder: the ranks, or one rank (--rank) through this same run()
        return run_report.explain(args, run)
    snap = load(args.snapshot, use_cache=not args.no_cache)
    an = analyze(snap, device=args.device, meta=read_meta(args.snapshot))
    d = explain_dict(an, args.top)
    if not getattr(args, "no_predict", False):
        d["predicted_oom"] = predicted_oom(an) or d["predicted_oom"]
    if args.json:
        json.dump(d, sys.stdout, default=_num)
        sys.stdout.write("\n")
    else:
        print(render(d, an.rep.start_us))
    return 0
