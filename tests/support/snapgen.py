"""Build small raw snapshot dicts with known answers, in torch's own shape.

    g = SnapGen()
    with g.phase("forward", 0):
        a = g.alloc(1024, site="model.py:10:forward")
    g.free(a)
    raw = g.raw()          # {'segments', 'device_traces', 'external_annotations'}
    snap = columns_from_raw(raw)

Time advances by ``step_us`` per entry unless given. Frees are written as
free_requested + free_completed pairs, as the CUDA caching allocator writes them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from memprof.snapshot.meta import phase_label


class SnapGen:
    def __init__(self, t0: int = 1_000_000, step_us: int = 10, base_addr: int = 0x7F0000000000) -> None:
        self.t = t0
        self.step_us = step_us
        self.next_addr = base_addr
        self.trace: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.live: dict[int, int] = {}
        self._frames: dict[str, list[dict[str, Any]]] = {}
        self.user_metadata: str | None = None

    def frames(self, site: str) -> list[dict[str, Any]]:
        if site not in self._frames:
            fn, line, name = site.split(":")
            self._frames[site] = [
                {"filename": "/usr/lib/python3.11/site-packages/torch/_tensor.py", "line": 1, "name": "__torch_function__"},
                {"filename": f"/home/u/{fn}", "line": int(line), "name": name},
            ]
        return self._frames[site]

    def tick(self, dt: int | None = None) -> int:
        self.t += self.step_us if dt is None else dt
        return self.t

    def _entry(self, action: str, addr: int, size: int, site: str | None, dt: int | None) -> dict[str, Any]:
        e: dict[str, Any] = {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": self.tick(dt)}
        if site:
            e["frames"] = self.frames(site)
        if self.user_metadata:
            e["user_metadata"] = self.user_metadata
        self.trace.append(e)
        return e

    def alloc(self, size: int, site: str = "model.py:1:f", dt: int | None = None, addr: int | None = None) -> int:
        if addr is None:
            addr = self.next_addr
            self.next_addr += max(512, (size + 511) // 512 * 512)
        self._entry("alloc", addr, size, site, dt)
        self.live[addr] = size
        return addr

    def free(self, addr: int, dt: int | None = None) -> None:
        size = self.live.pop(addr)
        e = self._entry("free_requested", addr, size, None, dt)
        self.trace.append({**e, "action": "free_completed"})

    def segment(self, size: int, dt: int | None = 0) -> None:
        self._entry("segment_alloc", self.next_addr, size, None, dt)

    def oom(self, size: int, device_free: int) -> None:
        self.trace.append({"action": "oom", "addr": 0, "size": size, "stream": 0, "time_us": self.tick(), "device_free": device_free})

    def annotate(self, name: str, stage: str) -> None:
        self.annotations.append({"device": 0, "stage": stage, "name": name, "time_us": self.tick(1)})

    @contextlib.contextmanager
    def phase(self, phase: str, iteration: int | None, annotate: bool = True, metadata: bool = False) -> Iterator[None]:
        label = phase_label(phase, iteration)
        if annotate:
            self.annotate(label, "START")
        if metadata:
            self.user_metadata = label
        try:
            yield
        finally:
            if annotate:
                self.annotate(label, "END")
            if metadata:
                self.user_metadata = None

    def preexisting(self, size: int, site: str = "model.py:1:init") -> int:
        """An allocation alive before the window and at the end: an active block in a segment."""
        addr = self.next_addr
        rounded = max(512, (size + 511) // 512 * 512)
        self.next_addr += rounded
        self.segments.append(
            {"device": 0, "address": addr, "total_size": rounded, "stream": 0, "segment_type": "large",
             "allocated_size": rounded, "active_size": rounded, "requested_size": size,
             "blocks": [{"address": addr, "size": rounded, "requested_size": size, "state": "active_allocated",
                         "frames": self.frames(site)}]}
        )
        return addr

    def raw(self) -> dict[str, Any]:
        return {"segments": self.segments, "device_traces": [self.trace], "external_annotations": self.annotations,
                "allocator_settings": {}}


def sawtooth(gen: SnapGen, iterations: int, n_up: int, size: int, up_dt: int, down_dt: int,
             leak: int = 0, annotate: bool = True, gap_dt: int = 100) -> list[int]:
    """Each iteration: ``n_up`` allocs of ``size`` (``up_dt`` apart) then frees in reverse (``down_dt`` apart).

    With ``leak`` > 0 each iteration keeps one extra allocation of that size. Returns the leaked addrs.
    """
    leaked = []
    for it in range(iterations):
        gen.tick(gap_dt)
        ctx = gen.phase("step", it) if annotate else contextlib.nullcontext()
        with ctx:
            addrs = [gen.alloc(size, site=f"model.py:{10 + k}:forward", dt=up_dt) for k in range(n_up)]
            if leak:
                leaked.append(gen.alloc(leak, site="model.py:99:leak", dt=up_dt))
            for a in reversed(addrs):
                gen.free(a, dt=down_dt)
    return leaked


# --- TraceBuilder: explicit addresses, used by the loader and replay tests ---

FRAMES_FWD = [{"filename": "/home/u/model.py", "line": 10, "name": "forward"}, {"filename": "/home/u/train.py", "line": 5, "name": "<module>"}]
FRAMES_BWD: list[dict[str, Any]] = []


class TraceBuilder:
    """Builds a device trace with increasing time_us; each free is a request+completion pair."""

    def __init__(self, start_us: int = 1_000, step_us: int = 10) -> None:
        self.t = start_us
        self.step = step_us
        self.entries: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def _add(self, action: str, addr: int, size: int, frames: list | None = None, **kw: Any) -> dict[str, Any]:
        e = {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": self.t, **kw}
        if frames is not None:
            e["frames"] = frames
        self.entries.append(e)
        self.t += self.step
        return e

    def alloc(self, addr: int, size: int, frames: list | None = FRAMES_FWD) -> "TraceBuilder":
        self._add("alloc", addr, size, frames)
        return self

    def free(self, addr: int, size: int, frames: list | None = FRAMES_FWD) -> "TraceBuilder":
        self._add("free_requested", addr, size, frames)
        self._add("free_completed", addr, size, frames)
        return self

    def segment(self, addr: int, size: int) -> "TraceBuilder":
        self._add("segment_alloc", addr, size, [])
        return self

    def phase(self, name: str, stage: str, device: int = 0) -> "TraceBuilder":
        self.annotations.append({"device": device, "stage": stage, "name": name, "time_us": self.t})
        self.t += self.step
        return self

    def snapshot(self, segments: list | None = None) -> dict[str, Any]:
        return {"segments": segments or [], "device_traces": [self.entries], "external_annotations": self.annotations}


def two_stream_trace() -> dict[str, Any]:
    """x (100 B) is used on a side stream (record_stream): its free is requested at t2 but completes
    only at t5, after y (60 B) and z (40 B) were allocated. Held peak 200, torch's counter peaks at 160."""
    b = TraceBuilder()
    b.alloc(0x1000, 100)
    b.alloc(0x2000, 60)
    b._add("free_requested", 0x1000, 100)   # torch.cuda.memory_allocated drops here
    b.alloc(0x3000, 40)                     # held: 100 + 60 + 40
    b.free(0x2000, 60)
    b._add("free_completed", 0x1000, 100)   # the side stream's work completed: the block is reusable
    return b.snapshot()
