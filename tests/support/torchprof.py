"""Record a tiny training loop on CPU with torch.profiler and turn its memory events into a snapshot.

torch.profiler's memory profiler (``torch.profiler._memory_profiler``) gives every tensor
allocation a category (PARAMETER, OPTIMIZER_STATE, GRADIENT, ACTIVATION, TEMPORARY, INPUT);
tests compare memprof's categories with them. Only tests import this (it imports torch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from memprof.snapshot.meta import phase_label


def _addrs(tensors: Any) -> list[list[int]]:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[int(st.data_ptr())] = int(st.nbytes())
    return [[p, n] for p, n in seen.items()]


def record_tiny_training(iterations: int = 3, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any], list[str | None]]:
    """(raw snapshot dict, meta, torch's category for each trace entry (None for frees))."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for i in range(iterations):
            with record_function(phase_label("forward", i)):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            with record_function(phase_label("backward", i)):
                loss.backward()
            with record_function(phase_label("optimizer", i)):
                opt.step()
                opt.zero_grad(set_to_none=True)
            del loss
    mp = prof._memory_profile()
    from torch.profiler._memory_profiler import Action

    trace: list[dict[str, Any]] = []
    cats: list[str | None] = []
    preexisting: dict[int, int] = {}
    destroyed: set[int] = set()
    for t, action, (key, version), size in mp.timeline:
        addr = int(key.storage.ptr)
        cat = mp._categories.get(key, version)
        name = cat.name.lower() if cat is not None else None
        if action == Action.PREEXISTING:
            preexisting[addr] = int(size)
            continue
        tu = int(t // 1000)
        if action == Action.CREATE:
            trace.append({"action": "alloc", "addr": addr, "size": int(size), "stream": 0, "time_us": tu})
            cats.append(name)
        elif action == Action.DESTROY:
            if addr in preexisting:
                destroyed.add(addr)
            for a in ("free_requested", "free_completed"):
                trace.append({"action": a, "addr": addr, "size": int(size), "stream": 0, "time_us": tu})
                cats.append(None)
    order = sorted(range(len(trace)), key=lambda i: trace[i]["time_us"])  # stable: keeps request/completion pairs
    trace = [trace[i] for i in order]
    cats = [cats[i] for i in order]
    segments = [
        {"device": 0, "address": a, "total_size": max(512, (n + 511) // 512 * 512), "stream": 0,
         "blocks": [{"address": a, "size": max(512, (n + 511) // 512 * 512), "requested_size": n, "state": "active_allocated"}]}
        for a, n in preexisting.items() if a not in destroyed and n > 0
    ]
    annotations = []
    for e in prof.profiler.kineto_results.events():
        try:
            name = e.name()
        except UnicodeDecodeError:  # torch occasionally hands back undecodable names for Python-tracer events
            continue
        if name.startswith("memprof/") and "(" not in name:
            annotations.append({"device": 0, "stage": "START", "name": name, "time_us": e.start_ns() // 1000})
            annotations.append({"device": 0, "stage": "END", "name": name, "time_us": (e.start_ns() + e.duration_ns()) // 1000})
    meta = {
        "parameter_addrs": _addrs(model.parameters()),
        "optimizer_state_addrs": _addrs(v for st in opt.state.values() for v in st.values()),
        "input_addrs": _addrs([x, y]),
        "workload": {"kind": "script"},
    }
    raw = {"segments": segments, "device_traces": [trace], "external_annotations": annotations, "allocator_settings": {}}
    return raw, meta, cats
