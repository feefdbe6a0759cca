"""A line-by-line port of PyTorch's MemoryViz.js (the replay's reference)."""

from __future__ import annotations

from typing import Any


def viewer_reference(snapshot: dict[str, Any], device: int) -> tuple[int, list[int]]:
    """A line-by-line Python port of MemoryViz.js annotate_snapshot + process_alloc_data
    (plot_segments=False). Returns (max_size, total after each action)."""
    trace = []
    for t in snapshot["device_traces"][device]:
        t = dict(t)
        if t["action"] == "free_completed" and trace:
            prev = trace[-1]
            if prev["action"] == "free_requested" and prev["addr"] == t["addr"]:
                prev["action"] = "free"
                continue
        trace.append(t)
    # annotate blocks' addresses as the viewer does
    elements, initially, actions, addr_to_alloc = [], [], [], {}
    for e in trace:
        if e["action"] == "alloc":
            elements.append(e)
            addr_to_alloc[e["addr"]] = len(elements) - 1
            actions.append(len(elements) - 1)
        elif e["action"] in ("free", "free_completed"):
            if e["addr"] in addr_to_alloc:
                actions.append(addr_to_alloc.pop(e["addr"]))
            else:
                elements.append(e)
                initially.append(len(elements) - 1)
                actions.append(len(elements) - 1)
    for seg in snapshot["segments"]:
        if seg.get("device", 0) != device:
            continue
        addr = seg["address"]
        for b in seg["blocks"]:
            b_addr = b.get("address", addr)
            if b["state"] == "active_allocated" and b_addr not in addr_to_alloc:
                elements.append({"size": b.get("requested_size", b["size"])})
                initially.append(len(elements) - 1)
            addr = b_addr + b["size"]
    total = sum(elements[i]["size"] for i in initially)
    live = set(initially)
    # memprof counts the state before the first event (the viewer starts max_size at 0)
    totals, max_size = [], total
    for a in actions:
        if a in live:
            live.remove(a)
            total -= elements[a]["size"]
        else:
            live.add(a)
            total += elements[a]["size"]
        totals.append(total)
        max_size = max(max_size, total)
    return max_size, totals
