"""``memprof.record(path)``: record your own loop (context manager)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import torch

from memprof.meta import write_meta
from memprof.recorder.core import Recording
from memprof.recorder.runner import OOM_ERRORS, base_meta
from memprof.recorder.snapshot_io import write_snapshot
from memprof.workloads import resolve_device


@contextlib.contextmanager
def record(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    max_entries: int = 1_000_000,
    stacks: str = "python",
    compress: bool | None = None,
    backend: str | None = None,
    workload: dict[str, Any] | None = None,
    command: str | None = None,
) -> Iterator[Recording]:
    """Record everything between ``with`` and its end into ``path`` (+ ``.meta.json``).

    ``device``: cuda, mps or cpu (default: cuda if available, else mps, else cpu). On CUDA the
    allocator's history is recorded; on CPU torch.profiler's memory events; on MPS a dispatch
    tracker. The snapshot is written even when the body raises (status ``oom`` or ``error``);
    the exception then propagates.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    rec = Recording(dev, max_entries=max_entries, stacks=stacks, backend=backend).start()
    meta = base_meta(dev)
    meta.update(
        workload=workload or {"kind": "callable"},
        command=command or " ".join([os.path.basename(sys.executable)] + sys.argv),
        status="ok",
        record={"max_entries": max_entries, "stacks": stacks, "context": "all", "backend": rec.backend,
                "history_kwargs": rec.history_kwargs},
    )  # fmt: skip
    try:
        yield rec
    except OOM_ERRORS as e:
        meta["status"], meta["error"] = "oom", str(e).splitlines()[0] if str(e) else "out of memory"
        raise
    except BaseException as e:
        if not isinstance(e, SystemExit) or e.code not in (0, None):
            meta["status"], meta["error"] = "error", f"{type(e).__name__}: {e}"
        raise
    finally:
        snap = rec.stop()
        meta["peak_allocated_bytes"], meta["peak_reserved_bytes"] = rec.peaks()
        meta["timings_ms"], meta["cpu_timings_ms"] = rec.timings()
        meta["phases"] = list(rec.timer.ranges)
        write_snapshot(path, snap, compress)
        write_meta(path, meta)
