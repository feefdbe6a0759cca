"""Build a CUDA-style snapshot dict from a list of allocation operations.

Used where there is no allocator history (CPU via torch.profiler, MPS via the dispatch
tracker). Each op is ``(time_us, addr, signed_size, frames)``: positive size allocates,
negative frees. Storages alive before the window (``before``: addr -> bytes) are freed when
the window frees their address, when ``freed_at`` says so (a weakref finalizer saw the last
tensor die), or just before a new allocation reuses their address; otherwise they become
``active_allocated`` blocks of the final ``segments``.

The trace uses the allocator's vocabulary: ``segment_alloc`` + ``alloc``, and
``free_requested`` + ``free_completed`` + ``segment_free`` (no cache: reserved equals allocated).
"""

from __future__ import annotations

from typing import Any, Iterable

Op = tuple[int, int, int, list[dict[str, Any]]]


def build_snapshot(
    ops: Iterable[Op],
    before: dict[int, int] | None = None,
    freed_at: dict[int, int] | None = None,
    annotations: list[dict[str, Any]] | None = None,
    source: str = "",
) -> dict[str, Any]:
    before_alive = dict(before or {})
    extra: list[Op] = [(t, a, -before_alive[a], []) for a, t in (freed_at or {}).items() if a in before_alive]
    all_ops = sorted(list(ops) + extra, key=lambda o: o[0])
    trace: list[dict[str, Any]] = []
    live: dict[int, tuple[int, list[dict[str, Any]]]] = {}

    def emit_free(t: int, addr: int, size: int, frames: list[dict[str, Any]]) -> None:
        for action in ("free_requested", "free_completed", "segment_free"):
            trace.append({"action": action, "addr": addr, "size": size, "stream": 0, "time_us": t, "frames": frames})

    for t, addr, size, frames in all_ops:
        if size > 0:
            if addr in before_alive:
                emit_free(t, addr, before_alive.pop(addr), [])
            if addr in live:  # a free we never saw (e.g. outside the profiler's view)
                emit_free(t, addr, live.pop(addr)[0], [])
            for action in ("segment_alloc", "alloc"):
                trace.append({"action": action, "addr": addr, "size": size, "stream": 0, "time_us": t, "frames": frames})
            live[addr] = (size, frames)
        elif size < 0:
            if addr in live:
                n, _ = live.pop(addr)
            elif addr in before_alive:
                n = before_alive.pop(addr)
            else:
                continue  # a free of memory we know nothing about: no size to account
            emit_free(t, addr, n, frames)

    blocks: dict[int, tuple[int, list[dict[str, Any]]]] = {a: (n, []) for a, n in before_alive.items()}
    blocks.update(live)
    segments = [
        {
            "device": 0, "address": a, "total_size": n, "stream": 0, "segment_type": "large",
            "allocated_size": n, "active_size": n, "requested_size": n, "frames": fr,
            "blocks": [{"address": a, "size": n, "requested_size": n, "state": "active_allocated", "frames": fr}],
        }
        for a, (n, fr) in sorted(blocks.items())
    ]  # fmt: skip
    return {
        "segments": segments,
        "device_traces": [trace],
        "external_annotations": sorted(annotations or [], key=lambda x: x["time_us"]),
        "allocator_settings": {"memprof_source": source},
    }
