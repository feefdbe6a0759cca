"""Recording windows and phases: the engine under ``memprof record`` and the Python API.

``Recording`` starts and stops one backend:

* ``cuda``: the caching allocator's history (the real thing),
* ``profiler``: torch.profiler memory events turned into the same schema (CPU),
* ``dispatch``: a TorchDispatchMode storage tracker (MPS, or any device),

and times phases: CUDA events (GPU time) and ``perf_counter`` (host time) per phase and per
step. ``phase(name, iteration)`` marks a phase with ``record_function`` (it lands in the
snapshot's ``external_annotations``) and, on CUDA, ``_set_memory_metadata`` (every trace entry
then carries the label).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
import warnings
import weakref
from typing import Any, Iterator

import torch

from memprof.recorder import publish
from memprof.snapshot.meta import phase_label
from memprof.recorder import cuda as cuda_backend

_ACTIVE: list["Recording"] = []


def summarize(samples: list[float]) -> dict[str, Any]:
    """{mean, std, n, samples} of milliseconds (std 0 for one sample)."""
    return {
        "mean": statistics.fmean(samples) if samples else None,
        "std": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "n": len(samples),
        "samples": [round(s, 6) for s in samples],
    }


class PhaseTimer:
    """GPU time (CUDA events) and host time (perf_counter) per phase, resolved lazily."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.gpu: dict[str, list[tuple[Any, Any]]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.ranges: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def time(self, name: str, iteration: int | None = None) -> Iterator[None]:
        ev0 = ev1 = None
        if self.cuda:
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev0.record()
        pub = publish.ACTIVE  # the live view's phase hook; None (one attribute read) when it is off
        if pub is not None:
            pub.enter(name, iteration)
        t0, w0 = time.perf_counter(), time.time_ns() // 1000
        try:
            yield
        finally:
            if pub is not None:
                pub.exit(name, iteration)
            if self.cuda:
                assert ev0 is not None and ev1 is not None  # made above when self.cuda
                ev1.record()
                self.gpu.setdefault(name, []).append((ev0, ev1))
            self.cpu.setdefault(name, []).append((time.perf_counter() - t0) * 1000.0)
            self.ranges.append({"name": name, "iteration": iteration, "start_us": w0, "end_us": time.time_ns() // 1000})

    def timings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(GPU ms per phase, host ms per phase); without CUDA the GPU side is the host time."""
        if self.cuda:
            torch.cuda.synchronize()
            gpu = {k: summarize([a.elapsed_time(b) for a, b in v]) for k, v in self.gpu.items()}
        else:
            gpu = {k: summarize(v) for k, v in self.cpu.items()}
        return gpu, {k: summarize(v) for k, v in self.cpu.items()}


def backend_for(device: torch.device, backend: str | None = None) -> str:
    if backend:
        return backend
    return {"cuda": "cuda", "cpu": "profiler"}.get(device.type, "dispatch")


def live_tensors(device_type: str) -> list[torch.Tensor]:
    """Every tensor of ``device_type`` reachable from Python now (for storages alive before a window)."""
    out: list[torch.Tensor] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objs = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objs:
        try:
            if True and obj.device.type == device_type and not obj.is_meta:
                out.append(obj)
        except (RuntimeError, NotImplementedError, ReferenceError):
            continue
    return out


class PreexistingTracker:
    """Storages alive when a window starts, and when the last known tensor of each dies.

    The CPU allocator does not report frees of blocks allocated before profiling began,
    so memprof watches those tensors itself with weakref finalizers.
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.freed_at: dict[int, int] = {}
        self.active = True
        for t in tensors:
            # A DTensor (FSDP2): its local shard holds the storage. The shard object itself, not a
            # to_local() alias, whose death would look like the storage's.
            t = getattr(t, "_local_tensor", t)
            try:
                st = t.untyped_storage()
                ptr = int(st.data_ptr())
            except (RuntimeError, NotImplementedError):
                continue
            if not ptr:
                continue
            self.sizes[ptr] = max(self.sizes.get(ptr, 0), int(st.nbytes()))
            self.refs[ptr] = self.refs.get(ptr, 0) + 1
            weakref.finalize(t, self._dead, ptr)

    def _dead(self, ptr: int) -> None:
        if not self.active:
            return
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.freed_at[ptr] = time.time_ns() // 1000


class Recording:
    """One recorded window on one device. Use :func:`record` or the runner, not directly."""

    def __init__(
        self,
        device: torch.device,
        max_entries: int = 1_000_000,
        stacks: str = "python",
        context: str = "all",
        backend: str | None = None,
        alive_before: list[torch.Tensor] | None = None,
    ) -> None:
        self.device = device
        self.backend = backend_for(device, backend)
        self.max_entries = int(max_entries)
        self.stacks = stacks
        self.context = context
        self.alive_before = alive_before
        self.timer = PhaseTimer(device)
        self.iteration = 0
        self.history_kwargs: dict[str, Any] = {}
        self.has_metadata = False
        self._prof: Any = None
        self._tracker: Any = None
        self._pre: Any = None
        self._snapshot: dict[str, Any] | None = None
        self._namer: Any = None
        self.profiler_peak_bytes: int | None = None
        self.started = False

    # -- window --------------------------------------------------------------------------
    def start(self) -> "Recording":
        from memprof.recorder.naming import Namer, install_compile_map

        install_compile_map()  # before the window: only when inductor is loaded already
        self._namer = Namer(self.device.type).start()
        if self.backend == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.history_kwargs = cuda_backend.start_history(self.max_entries, self.stacks, self.context, self.device)
        else:
            self._pre = PreexistingTracker(self.alive_before if self.alive_before is not None else live_tensors(self.device.type))
            self.alive_before = None  # hold no references to the caller's tensors
            if self.backend == "profiler":
                from memprof.recorder import cpu

                self._prof = cpu.start_profiler()
            elif self.backend == "dispatch":
                from memprof.recorder.dispatch import StorageTracker

                self._tracker = StorageTracker(self.device.type, self._pre.sizes)
                self._tracker.__enter__()
            else:
                raise ValueError(f"unknown backend {self.backend!r}")
        self.started = True
        _ACTIVE.append(self)
        return self

    def stop(self, sync: bool = True) -> dict[str, Any]:
        """End the window and return the snapshot dict (also when a step raised).

        ``sync=False`` skips waiting for the device (a rank terminated while a collective waits
        on a dead peer would wait forever)."""
        if self._snapshot is not None:
            return self._snapshot
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        names = self._namer.stop() if self._namer is not None else None
        self._namer = None
        if self.backend == "cuda":
            if self.has_metadata:
                cuda_backend.set_metadata("")
            try:
                if sync:
                    torch.cuda.synchronize(self.device)
            except RuntimeError:
                pass
            self._snapshot = cuda_backend.snapshot()
            cuda_backend.stop_history()
        else:
            from memprof.recorder.synth import build_snapshot

            if self.backend == "profiler":
                from memprof.recorder import cpu

                cpu.stop_profiler(self._prof)
                self._pre.active = False
                ops, ann = cpu.profiler_ops(self._prof, self.device.type)
                self.profiler_peak_bytes = cpu.profiler_timeline_peak(self._prof, self.device.type)
                source = "torch.profiler memory events"
                self._prof = None
            else:
                self._tracker.__exit__(None, None, None)
                self._tracker.active = self._pre.active = False
                ops, ann, source = self._tracker.ops, self._annotations(), f"dispatch tracker ({self.device.type})"
                self._tracker = None
            self._snapshot = build_snapshot(ops, self._pre.sizes, self._pre.freed_at, ann, source)
        if names is not None:
            from memprof.recorder.naming import KEY, map_compiled_frames

            names["compiled_sites"] = map_compiled_frames(self._snapshot)
            self._snapshot[KEY] = names
        return self._snapshot

    def _annotations(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in self.timer.ranges:
            label = phase_label(r["name"], r["iteration"])
            out.append({"device": 0, "stage": "START", "name": label, "time_us": r["start_us"]})
            out.append({"device": 0, "stage": "END", "name": label, "time_us": r["end_us"]})
        return sorted(out, key=lambda a: a["time_us"])

    def peaks(self) -> tuple[int | None, int | None]:
        """(peak allocated, peak reserved) by the allocator's own counters, when it has them."""
        if self.backend == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), int(torch.cuda.max_memory_reserved(self.device))
        if self.backend == "profiler":
            return self.profiler_peak_bytes, self.profiler_peak_bytes
        return None, None

    # -- phases --------------------------------------------------------------------------
    def step(self) -> int:
        """Advance the iteration counter used by :func:`phase` without an explicit iteration."""
        self.iteration += 1
        return self.iteration

    @contextlib.contextmanager
    def phase(self, name: str, iteration: int | None = None) -> Iterator[None]:
        it = self.iteration if iteration is None else iteration
        label = phase_label(name, it)
        meta = self.backend == "cuda" and cuda_backend.set_metadata(label)
        self.has_metadata = self.has_metadata or bool(meta)
        try:
            with torch.profiler.record_function(label), self.timer.time(name, it):
                yield
        finally:
            if meta:
                cuda_backend.set_metadata("")

    def timings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.timer.timings()


def current() -> Recording | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def phase(name: str, iteration: int | None = None) -> Iterator[None]:
    """Mark a phase (``memprof/<name>/<iteration>``) of the active recording; a plain
    ``record_function`` range when none is active."""
    rec = current()
    if rec is None:
        with torch.profiler.record_function(phase_label(name, iteration)):
            yield
        return
    with rec.phase(name, iteration):
        yield
