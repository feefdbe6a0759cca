"""Hand-built snapshot dicts for unit tests (the shape torch.cuda.memory._snapshot() returns)."""

from __future__ import annotations

from typing import Any

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
