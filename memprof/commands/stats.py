"""``memprof stats SNAPSHOT``: what is in a snapshot, its peak and what is alive then."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from memprof.commands import add_report_options
from memprof.format import fmt_bytes, fmt_us
from memprof.load import load
from memprof.meta import read_meta
from memprof.replay import Replay, replay


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="summary of a snapshot: entries, peak, what is alive at the peak")
    p.add_argument("snapshot", help="snapshot file (.pickle, .pickle.gz or .json)")
    add_report_options(p, top=10, top_help="how many allocations alive at the peak to list")
    return p


def wrapped(snap: Any, meta: dict[str, Any], device: int) -> bool:
    """True when the trace filled its ring buffer (``max_entries``), so its start was overwritten."""
    counts = snap.info.get("entries_per_device") or [0]
    max_entries = (meta.get("record") or {}).get("max_entries") or snap.info.get("max_entries")
    return bool(max_entries) and counts[device] >= int(max_entries)


def stats_dict(snap: Any, rep: Replay, meta: dict[str, Any], top: int) -> dict[str, Any]:
    at_peak = rep.at_peak().head(top)
    sites = snap.site_labels(at_peak["stack_id"].to_numpy(), at_peak["alloc_idx"].to_numpy())
    return {
        "snapshot": snap.source,
        "device": rep.device,
        "entries": int(rep.n_events),
        "devices": int(snap.n_devices),
        "duration_us": rep.duration_us,
        "has_time": bool(snap.info.get("has_time", True)),
        "has_frames": bool(snap.info.get("has_frames", False)),
        "peak_allocated_bytes": int(rep.peak_bytes),
        "peak_time_us": rep.peak_time_us,
        "peak_idx": int(rep.peak_idx),
        "peak_reserved_bytes": int(rep.peak_reserved_bytes),
        "peak_reserved_time_us": rep.peak_reserved_time_us,
        "allocations": int(len(rep.allocations)),
        "alive_before_window": int((rep.allocations["alloc_idx"] < 0).sum()),
        "wrapped": wrapped(snap, meta, rep.device),
        "oom_events": int(len(rep.oom_events)),
        "allocator_peak_bytes": meta.get("peak_allocated_bytes"),
        **simulated_counters(snap, rep.device),
        "top_at_peak": [
            {"size": int(s), "frame": str(f), "alloc_us": None if a != a else float(a), "stack_id": int(k)}
            for s, f, a, k in zip(at_peak["size"], sites, at_peak["alloc_us"], at_peak["stack_id"])
        ],
        "unknown_actions": snap.info.get("unknown_actions", []),
    }


def simulated_counters(snap: Any, device: int) -> dict[str, Any]:
    """torch.cuda.max_memory_allocated/reserved over the window, from the allocator model."""
    from memprof.simulator import trace_agreement

    sim, agree = trace_agreement(snap, device)
    return {"simulated_max_memory_allocated": sim.max_allocated, "simulated_max_memory_reserved": sim.max_reserved,
            "simulation_reproduces_trace": agree}


def render(d: dict[str, Any]) -> str:
    lines = [
        f"{d['snapshot']}  (device {d['device']} of {d['devices']})",
        f"  entries          {d['entries']:,}" + ("" if d["has_time"] else "  (no timestamps: times are entry indices)"),
        f"  duration         {fmt_us(d['duration_us'])}",
        f"  peak allocated   {fmt_bytes(d['peak_allocated_bytes'])}  ({d['peak_allocated_bytes']:,} B) "
        f"at +{fmt_us(d['_peak_rel_us'])}",
        f"  peak reserved    {fmt_bytes(d['peak_reserved_bytes'])}",
        f"  allocations      {d['allocations']:,}  ({d['alive_before_window']:,} alive before the recorded window)",
        f"  trace wrapped    {'YES: the ring buffer filled, the earliest events are lost' if d['wrapped'] else 'no'}",
    ]
    if d.get("allocator_peak_bytes"):
        ap = d["allocator_peak_bytes"]
        diff = (d["peak_allocated_bytes"] - ap) / ap * 100 if ap else 0.0
        lines.append(f"  allocator peak   {fmt_bytes(ap)} (torch.cuda.max_memory_allocated; replay differs by {diff:+.2f}%)")
    if d.get("simulated_max_memory_allocated") is not None:
        lines.append(f"  simulated peaks  {fmt_bytes(d['simulated_max_memory_allocated'])} allocated, "
                     f"{fmt_bytes(d['simulated_max_memory_reserved'])} reserved "
                     "(the caching allocator replayed: torch.cuda.max_memory_allocated/reserved since the window began)")
    if d["oom_events"]:
        lines.append(f"  OUT OF MEMORY    {d['oom_events']} oom event(s) in the trace")
    if d["unknown_actions"]:
        lines.append(f"  note             unknown trace actions ignored: {', '.join(d['unknown_actions'])}")
    if d["top_at_peak"]:
        lines.append("  largest allocations alive at the peak:")
        for t in d["top_at_peak"]:
            lines.append(f"    {fmt_bytes(t['size']):>11}  {t['frame']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    snap = load(args.snapshot, use_cache=not args.no_cache)
    device = snap.default_device() if args.device is None else args.device
    snap.check_device(device)
    rep = replay(snap, device)
    d = stats_dict(snap, rep, read_meta(args.snapshot), args.top)
    if args.json:
        json.dump(d, sys.stdout)
        sys.stdout.write("\n")
    else:
        d["_peak_rel_us"] = d["peak_time_us"] - rep.start_us
        print(render(d))
    return 0
