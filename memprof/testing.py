"""Small, realistic synthetic snapshots for tests, demos and development (no torch, no GPU).

:func:`training_snapshot` writes the dict torch's ``_snapshot()`` returns for a few training
iterations of a toy model: parameters, forward activations freed in backward, gradients,
optimizer state created on the first step, temporaries, phase annotations
(``memprof/forward/0`` ...) and the matching ``.meta.json`` keys. :func:`write_demo_folder`
fills a folder with a handful of such snapshots and a sweep ``results.csv``.
"""

from __future__ import annotations

import csv
import pickle
import random
from pathlib import Path
from typing import Any

from memprof.snapshot.meta import phase_label, write_meta

_MB = 1 << 20


def _stack(rng: random.Random, layer: int, op: str) -> list[dict[str, Any]]:
    return [
        {"filename": "??", "line": 0, "name": "c10::cuda::CUDACachingAllocator::malloc"},
        {"filename": "/usr/lib/python3.11/site-packages/torch/nn/functional.py", "line": 2100 + layer, "name": op},
        {"filename": f"/home/user/model/block_{layer % 4}.py", "line": 10 + 7 * layer, "name": f"Block.{op}"},
        {"filename": "/home/user/train.py", "line": 42, "name": "train_step"},
    ]


def training_snapshot(
    iterations: int = 3, layers: int = 6, hidden_mb: int = 8, seed: int = 0, oom: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A snapshot dict and its metadata dict for ``iterations`` training steps.

    Sizes scale with ``hidden_mb``; ``oom=True`` ends the trace with an ``oom`` entry in the
    last backward pass.
    """
    rng = random.Random(seed)
    trace: list[dict[str, Any]] = []
    ann: list[dict[str, Any]] = []
    t = 1_700_000_000_000_000
    next_addr = 0x7F0000000000
    reserved: list[int] = []
    seg_room = 0

    def bump(us: int) -> None:
        nonlocal t
        t += us

    def alloc(size: int, frames: list[dict[str, Any]]) -> int:
        nonlocal next_addr, seg_room
        if size > seg_room:
            seg = max(20 * _MB, (size + 2 * _MB - 1) // (2 * _MB) * 2 * _MB)
            trace.append({"action": "segment_alloc", "addr": next_addr, "size": seg, "stream": 0, "time_us": t, "frames": frames})
            reserved.append(seg)
            seg_room += seg
        a = next_addr
        next_addr += (size + 511) // 512 * 512
        seg_room -= size
        trace.append({"action": "alloc", "addr": a, "size": size, "stream": 0, "time_us": t, "frames": frames})
        bump(rng.randint(5, 40))
        return a

    def free(a: int, size: int, frames: list[dict[str, Any]]) -> None:
        nonlocal seg_room
        seg_room += size  # the caching allocator reuses freed blocks
        trace.append({"action": "free_requested", "addr": a, "size": size, "stream": 0, "time_us": t, "frames": frames})
        trace.append({"action": "free_completed", "addr": a, "size": size, "stream": 0, "time_us": t, "frames": frames})
        bump(rng.randint(2, 20))

    def mark(stage: str, phase: str, it: int) -> None:
        ann.append({"device": 0, "stage": stage, "name": phase_label(phase, it), "time_us": t})

    h = hidden_mb * _MB
    params = [(alloc(h, _stack(rng, i, "Linear.__init__")), h) for i in range(layers)]
    inputs: list[tuple[int, int]] = []
    grads: list[tuple[int, int]] = []
    opt_state: list[tuple[int, int]] = []
    phases: list[dict[str, Any]] = []
    for it in range(iterations):
        start = t
        mark("START", "forward", it)
        x = (alloc(h // 2, _stack(rng, 0, "load_batch")), h // 2)
        inputs.append(x)
        acts: list[tuple[int, int, list[dict[str, Any]]]] = []
        for layer in range(layers):
            fr = _stack(rng, layer, "linear")
            size = h * rng.choice([1, 2, 3]) // 2
            acts.append((alloc(size, fr), size, fr))
            tmp_fr = _stack(rng, layer, "gelu")
            tmp = alloc(h // 4, tmp_fr)
            bump(rng.randint(50, 200))
            free(tmp, h // 4, tmp_fr)
        mark("END", "forward", it)
        phases.append({"name": "forward", "iteration": it, "start_us": start, "end_us": t})
        start = t
        mark("START", "backward", it)
        for layer in reversed(range(layers)):
            if oom and it == iterations - 1 and layer == layers // 2:
                trace.append({"action": "oom", "addr": 0, "size": 40 * h, "stream": 0, "time_us": t, "device_free": h, "frames": _stack(rng, layer, "backward")})
                mark("END", "backward", it)
                phases.append({"name": "backward", "iteration": it, "start_us": start, "end_us": t})
                snap, meta = _finish(trace, ann, reserved, params, phases, oom=True, iterations=iterations, layers=layers, hidden_mb=hidden_mb)
                meta["gradient_addrs"] = [[a, s] for a, s in grads]
                meta["optimizer_state_addrs"] = [[a, s] for a, s in opt_state]
                return snap, meta
            if it == 0:
                grads.append((alloc(h, _stack(rng, layer, "AccumulateGrad")), h))
            tmp_fr = _stack(rng, layer, "linear_backward")
            tmp = alloc(h, tmp_fr)
            bump(rng.randint(80, 300))
            a, size, fr = acts.pop()
            free(a, size, fr)
            free(tmp, h, tmp_fr)
        x_addr, x_size = inputs.pop()
        free(x_addr, x_size, _stack(rng, 0, "load_batch"))
        mark("END", "backward", it)
        phases.append({"name": "backward", "iteration": it, "start_us": start, "end_us": t})
        start = t
        mark("START", "optimizer", it)
        if it == 0:
            for layer in range(layers):
                fr = _stack(rng, layer, "Adam._init_group")
                opt_state.append((alloc(h, fr), h))
                opt_state.append((alloc(h, fr), h))
        for layer in range(layers):
            fr = _stack(rng, layer, "_multi_tensor_adam")
            tmp = alloc(h // 2, fr)
            bump(rng.randint(20, 60))
            free(tmp, h // 2, fr)
        mark("END", "optimizer", it)
        phases.append({"name": "optimizer", "iteration": it, "start_us": start, "end_us": t})
        bump(500)
    snap, meta = _finish(trace, ann, reserved, params, phases, oom=False, iterations=iterations, layers=layers, hidden_mb=hidden_mb)
    meta["gradient_addrs"] = [[a, s] for a, s in grads]
    meta["optimizer_state_addrs"] = [[a, s] for a, s in opt_state]
    return snap, meta


def _finish(trace: list[dict[str, Any]], ann: list[dict[str, Any]], reserved: list[int], params: list[tuple[int, int]],
            phases: list[dict[str, Any]], *, oom: bool, iterations: int, layers: int, hidden_mb: int) -> tuple[dict[str, Any], dict[str, Any]]:
    # Segments alive at the end: one per segment_alloc, no blocks detail (blocks are optional for replay).
    segs = [e for e in trace if e["action"] == "segment_alloc"]
    segments = [
        {"device": 0, "address": e["addr"], "total_size": e["size"], "allocated_size": 0, "active_size": 0,
         "requested_size": 0, "stream": 0, "segment_type": "large", "segment_pool_id": (0, 0), "is_expandable": False,
         "blocks": [{"address": e["addr"], "size": e["size"], "requested_size": 0, "state": "inactive"}]}
        for e in segs
    ]
    snap = {"segments": segments, "device_traces": [trace], "allocator_settings": {}, "external_annotations": ann}
    live: dict[int, int] = {}
    cur = peak = 0
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = e["size"]
            cur += e["size"]
            peak = max(peak, cur)
        elif e["action"] == "free_completed":
            cur -= live.pop(e["addr"], 0)
    fwd = [p["end_us"] - p["start_us"] for p in phases if p["name"] == "forward"]
    bwd = [p["end_us"] - p["start_us"] for p in phases if p["name"] == "backward"]

    def timing(xs: list[int]) -> dict[str, Any]:
        ms = [x / 1000 for x in xs] or [0.0]
        mean = sum(ms) / len(ms)
        std = (sum((m - mean) ** 2 for m in ms) / len(ms)) ** 0.5
        return {"mean": mean, "std": std, "n": len(ms), "samples": ms}

    meta = {
        "memprof_version": "0.1.0",
        "created": "2025-01-01T00:00:00",
        "workload": {"kind": "transformer", "layers": layers, "hidden_mb": hidden_mb, "iterations": iterations, "mode": "train"},
        "device": {"type": "cuda", "name": "Synthetic GPU", "total_memory_bytes": 80 << 30, "index": 0},
        "torch_version": "2.13.0",
        "status": "oom" if oom else "ok",
        "timings_ms": {"forward": timing(fwd), "backward": timing(bwd)},
        "peak_allocated_bytes": peak,
        "peak_reserved_bytes": sum(reserved),
        "parameter_addrs": [[a, s] for a, s in params],
        "phases": phases,
        "record": {"max_entries": 1_000_000, "stacks": "python", "context": "all"},
    }
    if oom:
        meta["error"] = "CUDA out of memory (synthetic)"
    return snap, meta


def write_snapshot(path: str | Path, snap: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Pickle a snapshot dict (protocol 4, as torch does) and write its metadata beside it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        pickle.dump(snap, f, protocol=4)
    if meta is not None:
        write_meta(p, meta)
    return p


def write_sweep(folder: str | Path) -> Path:
    """A ``results.csv`` like ``memprof sweep`` writes: attention impls over seq_len, with OOMs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for impl, k in (("eager", 1.0), ("sdpa", 0.45), ("compiled", 0.6)):
        for seq in (256, 512, 1024, 2048, 4096, 8192):
            quad = (seq / 1024) ** 2
            oom = impl == "eager" and seq >= 8192
            rows.append({
                "impl": impl, "seq_len": seq, "d": 64, "batch": 8,
                "forward_ms_mean": "" if oom else round(k * (0.2 + 1.1 * quad), 4), "forward_ms_std": "" if oom else round(0.02 * quad, 4),
                "backward_ms_mean": "" if oom else round(k * (0.5 + 2.3 * quad), 4), "backward_ms_std": "" if oom else round(0.04 * quad, 4),
                "peak_mb": "" if oom else round((40 + (600 * quad if impl == "eager" else 18 * seq / 1024)), 2),
                "status": "oom" if oom else "ok",
            })
    out = folder / "results.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def write_demo_folder(folder: str | Path) -> Path:
    """A folder of small snapshots (eager, a leaner variant, an OOM) and a sweep, for demos and tests."""
    folder = Path(folder)
    write_snapshot(folder / "train_eager.pickle", *training_snapshot(iterations=3, layers=6, hidden_mb=8, seed=1))
    snap, meta = training_snapshot(iterations=3, layers=6, hidden_mb=6, seed=2)
    meta["workload"]["mode"] = "train-checkpointed"
    write_snapshot(folder / "train_lean.pickle", snap, meta)
    write_snapshot(folder / "oom" / "train_oom.pickle", *training_snapshot(iterations=2, layers=8, hidden_mb=16, seed=3, oom=True))
    write_sweep(folder / "sweep_attention")
    return folder


def write_run(folder: str | Path, hidden_mb: list[int], iterations: int = 3, layers: int = 6, gz: bool = False) -> Path:
    """A torchrun-style run folder: ``rank{R}.pickle[.gz]`` + ``.meta.json`` (with ``dist``) per rank,
    rank R sized by ``hidden_mb[R]`` (ranks that differ). No summaries: readers compute them."""
    import gzip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = len(hidden_mb)
    for r, h in enumerate(hidden_mb):
        snap, meta = training_snapshot(iterations=iterations, layers=layers, hidden_mb=h, seed=r)
        meta["dist"] = {"rank": r, "local_rank": r % 8, "world_size": world, "group_rank": r // 8, "host": f"node{r // 8}",
                        "run_id": "synthetic"}
        p = folder / f"rank{r}.pickle{'.gz' if gz else ''}"
        with (gzip.open if gz else open)(p, "wb") as f:
            pickle.dump(snap, f, protocol=4)
        write_meta(p, meta)
    return folder
