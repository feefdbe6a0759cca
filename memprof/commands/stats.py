"""``memprof stats SNAPSHOT``: what is in a snapshot, its peak and what is alive then."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from memprof.commands import add_report_options
from memprof.escape import printable
from memprof.units import fmt_bytes, fmt_us
from memprof.snapshot.tables import A_OOM
from memprof.snapshot.load import load
from memprof.snapshot.meta import read_meta
from memprof.replay.timeline import Replay, pool_totals, replay, trace_begins_mid_run


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="summary of a snapshot: entries, peak, what is alive at the peak")
    p.add_argument("snapshot", help="snapshot file (.pickle, .pickle.gz or .json), or a run folder RUN/rank{R}.pickle.gz")
    add_report_options(p, top=10, top_help="how many allocations alive at the peak to list")
    return p


def window(snap: Any, rep: Replay, meta: dict[str, Any]) -> dict[str, Any]:
    """Whether the trace begins mid-run (ring buffer wrapped, or history enabled late); see trace_begins_mid_run."""
    max_entries = (meta.get("record") or {}).get("max_entries") or snap.info.get("max_entries")
    return trace_begins_mid_run(snap, rep, max_entries)


def devices_table(snap: Any) -> list[dict[str, Any]]:
    """Every device that holds memory or trace entries: entries, oom events, state at dump time."""
    counts = list(snap.info.get("entries_per_device") or [])
    totals = snap.state_totals()
    ev = snap.events
    ooms = ev.loc[ev["action"].to_numpy() == A_OOM, "device"].value_counts().to_dict() if len(ev) else {}
    out = []
    for d in range(max(snap.n_devices, 1)):
        n = counts[d] if d < len(counts) else 0
        t = totals.loc[d].to_dict() if d in totals.index else {}
        if not n and not t:
            continue
        out.append({"device": d, "entries": int(n), "oom_events": int(ooms.get(d, 0)),
                    **{k: int(t.get(k, 0)) for k in ("allocated", "reserved", "active", "pending_free", "segments", "pools")}})
    return out


def stats_dict(snap: Any, rep: Replay, meta: dict[str, Any], top: int) -> dict[str, Any]:
    at_peak = rep.at_peak().head(top)
    sites = snap.site_labels(at_peak["stack_id"].to_numpy(), at_peak["alloc_idx"].to_numpy())
    if not rep.has_trace:  # no history: a block without frames is simply unattributed
        sites[at_peak["stack_id"].to_numpy() < 0] = "<no stack recorded for this block>"
    win = window(snap, rep, meta)
    pools = pool_totals(snap, rep)
    devs = devices_table(snap)
    return {
        "snapshot": snap.source,
        "device": rep.device,
        "entries": int(rep.n_events),
        "devices": int(snap.n_devices),
        "duration_us": rep.duration_us,
        "has_time": bool(snap.info.get("has_time", True)),
        "has_frames": bool(snap.info.get("has_frames", False)),
        "history": bool(rep.has_trace),
        "state_allocated_bytes": next((r["allocated"] for r in devs if r["device"] == rep.device), 0),
        "peak_allocated_bytes": int(rep.peak_bytes),
        "peak_time_us": rep.peak_time_us,
        "peak_idx": int(rep.peak_idx),
        "peak_torch_allocated_bytes": int(rep.peak_torch_bytes),
        "peak_torch_time_us": rep.peak_torch_time_us,
        "max_awaiting_free_bytes": int(rep.timeline["awaiting_free"].max()),
        "peak_reserved_bytes": int(rep.peak_reserved_bytes),
        "peak_reserved_time_us": rep.peak_reserved_time_us,
        "allocations": int(len(rep.allocations)),
        "alive_before_window": int((rep.allocations["alloc_idx"] < 0).sum()),
        "wrapped": bool(win["wrapped"]),
        "window": win,
        "oom_events": int(len(rep.oom_events)),
        "devices_with_memory": devs,
        "oom_devices": [d["device"] for d in devs if d["oom_events"]],
        "pools": pools.to_dict("records") if len(pools) > 1 else [],
        "allocator_peak_bytes": meta.get("peak_allocated_bytes"),
        "device_type": str((meta.get("device") or {}).get("type", "cuda")),
        **simulated_counters(snap, rep.device, int(rep.n_events)),
        "top_at_peak": [
            {"size": int(s), "frame": str(f), "alloc_us": None if a != a else float(a), "stack_id": int(k)}
            for s, f, a, k in zip(at_peak["size"], sites, at_peak["alloc_us"], at_peak["stack_id"])
        ],
        "unknown_actions": snap.info.get("unknown_actions", []),
    }


SIM_MAX_EVENTS = 250_000
"""Above this many trace events stats leaves the allocator model out and names the command that
runs it (on the 10M-entry benchmark file stats took 39.8 s with the model, 5.8 s without)."""


def simulated_counters(snap: Any, device: int, n_events: int = 0) -> dict[str, Any]:
    """torch.cuda.max_memory_allocated/reserved over the window, from the allocator model."""
    from memprof.allocator.model import trace_agreement

    if n_events > SIM_MAX_EVENTS:
        return {"simulated_max_memory_allocated": None, "simulated_max_memory_reserved": None,
                "simulation_reproduces_trace": None,
                "simulation_skipped": f"{n_events:,} events: memprof whatif {shlex.quote(printable(str(snap.source)))} replays them"}
    sim, agree = trace_agreement(snap, device)
    return {"simulated_max_memory_allocated": sim.max_allocated, "simulated_max_memory_reserved": sim.max_reserved,
            "simulation_reproduces_trace": agree}


def _render_state(d: dict[str, Any]) -> list[str]:
    """An empty trace: the state the segments hold at dump time, said plainly."""
    return [
        f"{d['snapshot']}  (device {d['device']} of {d['devices']})",
        "  history          NONE: no allocation history was recorded (the trace is empty); below is the state",
        "                   when the snapshot was taken. Record with torch.cuda.memory._record_memory_history()",
        "                   (or `memprof record`) to see how memory got there.",
        f"  allocated        {fmt_bytes(d['state_allocated_bytes'])}  ({d['state_allocated_bytes']:,} B in allocated blocks, as "
        f"torch.cuda.memory_allocated counts; {d['peak_allocated_bytes']:,} B requested by the live tensors)",
        f"  reserved         {fmt_bytes(d['peak_reserved_bytes'])}",
        f"  segments         {_row(d).get('segments', 0):,} holding {d['allocations']:,} live blocks"
        + (f" ({fmt_bytes(_row(d)['pending_free'])} awaiting free on another stream)" if _row(d).get("pending_free") else ""),
    ]


def _row(d: dict[str, Any]) -> dict[str, Any]:
    return next((r for r in d["devices_with_memory"] if r["device"] == d["device"]), {})


def render(d: dict[str, Any]) -> str:
    if not d["history"]:
        lines = _render_state(d)
    else:
        lines = [
            f"{d['snapshot']}  (device {d['device']} of {d['devices']})",
            f"  entries          {d['entries']:,}" + ("" if d["has_time"] else "  (no timestamps: times are entry indices)"),
            f"  duration         {fmt_us(d['duration_us'])}",
            f"  peak allocated   {fmt_bytes(d['peak_allocated_bytes'])}  ({d['peak_allocated_bytes']:,} B) "
            f"at +{fmt_us(d['_peak_rel_us'])}  (requested bytes held, incl. blocks awaiting free on another stream)",
        ]
        if d.get("device_type", "cuda") == "cuda":  # CUDA caching-allocator semantics: meaningless for a CPU run
            lines.append(f"  peak as torch    {fmt_bytes(d['peak_torch_allocated_bytes'])}  ({d['peak_torch_allocated_bytes']:,} B; "
                         "allocated as torch.cuda.max_memory_allocated counts it: blocks of 512 B, freed at free_requested)")
        if d["max_awaiting_free_bytes"] > 0:
            lines.append(f"  awaiting free    up to {fmt_bytes(d['max_awaiting_free_bytes'])} freed but held until another stream's work completed")
        w = d["window"]
        lines += [
            f"  peak reserved    {fmt_bytes(d['peak_reserved_bytes'])}",
            f"  allocations      {d['allocations']:,}  ({d['alive_before_window']:,} alive before the recorded window)",
            f"  trace wrapped    {'YES: ' + w['reason'] if d['wrapped'] else 'no'}",
        ]
        if w["begins_mid_run"] and not d["wrapped"]:
            lines.append(f"  window           the trace begins mid-run: {w['reason']}")
    devs = d["devices_with_memory"]
    if len(devs) > 1 or (devs and devs[0]["device"] != d["device"]):
        lines.append("  devices:")
        for r in devs:
            lines.append(f"    cuda:{r['device']}  {r['entries']:>9,} entries  allocated {fmt_bytes(r['allocated']):>10}  "
                         f"reserved {fmt_bytes(r['reserved']):>10}" + (f"  {r['oom_events']} OOM" if r["oom_events"] else "")
                         + ("   <- shown" if r["device"] == d["device"] else ""))
    if d["pools"]:
        lines.append("  memory pools (CUDA graphs / MemPool are private pools):")
        for p in d["pools"]:
            lines.append(f"    {p['pool']:<16} reserved {fmt_bytes(p['reserved']):>10}  allocated {fmt_bytes(p['allocated']):>10}  "
                         f"at the peak {fmt_bytes(p['at_peak']):>10}")
    if d.get("allocator_peak_bytes"):
        ap = d["allocator_peak_bytes"]
        diff = (d["peak_torch_allocated_bytes"] - ap) / ap * 100 if ap else 0.0
        src = ("torch.cuda.max_memory_allocated" if d.get("device_type", "cuda") == "cuda" else "the recorder's own count")
        lines.append(f"  allocator peak   {fmt_bytes(ap)} ({src} recorded beside the file; "
                     f"the replay as torch counts differs by {diff:+.2f}%)")
    if d["history"] and d.get("simulated_max_memory_allocated") is not None and d.get("device_type", "cuda") == "cuda":
        lines.append(f"  simulated peaks  {fmt_bytes(d['simulated_max_memory_allocated'])} allocated, "
                     f"{fmt_bytes(d['simulated_max_memory_reserved'])} reserved (the caching allocator replayed: "
                     "torch.cuda.max_memory_allocated/reserved since the window began"
                     + ("" if d.get("simulation_reproduces_trace") else "; it did not reproduce every recorded address") + ")")
    elif d["history"] and d.get("simulation_skipped") and d.get("device_type", "cuda") == "cuda":
        lines.append(f"  simulated peaks  not computed for {d['simulation_skipped']}")
    if d["oom_events"]:
        lines.append(f"  OUT OF MEMORY    {d['oom_events']} oom event(s) in the trace")
    for o in d["oom_devices"]:
        if o != d["device"]:
            lines.append(f"  OUT OF MEMORY    on cuda:{o} (not the device shown: use --device {o})")
    if d["unknown_actions"]:
        lines.append(f"  note             unknown trace actions ignored: {', '.join(d['unknown_actions'])}")
    if d["top_at_peak"]:
        lines.append("  largest allocations alive at the peak:" if d["history"] else "  largest live blocks:")
        for t in d["top_at_peak"]:
            lines.append(f"    {fmt_bytes(t['size']):>11}  {t['frame']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from memprof.snapshot.runs import is_run

    if is_run(args.snapshot):  # a torchrun run folder: every rank and the imbalance
        from memprof.commands import run_report

        return run_report.stats(args)
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
