"""``memprof.record(path)``: record your own loop (context manager)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

import torch

from memprof.snapshot.meta import write_meta
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
    live: bool | int = False,
) -> Iterator[Recording]:
    """Record everything between ``with`` and its end into ``path`` (+ ``.meta.json``).

    ``device``: cuda, mps or cpu (default: cuda if available, else mps, else cpu). On CUDA the
    allocator's history is recorded; on CPU torch.profiler's memory events; on MPS a dispatch
    tracker. The snapshot is written even when the body raises (status ``oom`` or ``error``);
    the exception then propagates. A window that recorded nothing has status ``empty``.

    In a torchrun worker (``RANK``/``WORLD_SIZE`` set) the snapshot goes to the run folder
    ``<path without suffix>/rank{RANK}.pickle[.gz]`` with the rank in its metadata (``dist``), a
    bare ``cuda`` means the local rank's GPU, and a
    SIGTERM from torchrun (another rank failed) still writes it (status ``terminated``). The rank's small summary
    (:mod:`memprof.analysis.ranks`) is written by ``memprof record`` when torchrun ends, else by the first
    command that reads the run.

    ``live``: True (port 8765) or a port number: publish allocated / reserved bytes, the phase, the
    iteration and the per-phase growth on 127.0.0.1 while recording (:mod:`memprof.live`; the Live page
    of ``memprof serve`` follows it and links to the snapshot when the run ends; under torchrun rank R
    publishes on port + R).
    """
    from memprof.recorder import dist

    info = dist.rank_env()
    dev = device if isinstance(device, torch.device) else resolve_device(dist.device_name(device, info))
    path = dist.output_path(path, compress)
    pub = live_view(live, dev, command)
    rec = Recording(dev, max_entries=max_entries, stacks=stacks, backend=backend).start()
    meta = base_meta(dev)
    meta.update(
        workload=workload or {"kind": "callable"},
        command=command or " ".join([os.path.basename(sys.executable)] + sys.argv),
        status="ok",
        record={"max_entries": max_entries, "stacks": stacks, "context": "all", "backend": rec.backend,
                "history_kwargs": rec.history_kwargs},
    )  # fmt: skip
    done = threading.Lock()

    def finish(status: str | None = None) -> None:
        if not done.acquire(blocking=False):
            return  # written already (by the SIGTERM path or the normal end)
        if status is not None and meta["status"] == "ok":
            meta["status"], meta["error"] = status, "the launcher terminated this rank (SIGTERM), e.g. after another rank failed"
        snap = rec.stop(sync=status is None)
        meta["peak_allocated_bytes"], meta["peak_reserved_bytes"] = rec.peaks()
        if status is None:  # resolving CUDA events waits for the device: not when terminated
            meta["timings_ms"], meta["cpu_timings_ms"] = rec.timings()
        meta["phases"] = list(rec.timer.ranges)
        dist.finalize_status(meta, snap)
        write_snapshot(path, snap, compress)
        write_meta(path, meta)

    term = dist.TermDump(finish) if info is not None else None
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
        if term is not None:
            term.hold()  # a SIGTERM now waits for this write (then is delivered by close)
        try:
            finish()
        finally:
            if term is not None:
                term.close()
        if pub is not None:  # the Live page links to the snapshot from this last message
            pub.stop(status=meta["status"], snapshot=str(path))


def live_view(live: bool | int, device: torch.device, command: str | None) -> Any:
    """The publisher ``live`` asks for, started (None when off, or when one already runs in this process)."""
    if live is False or live is None:
        return None
    from memprof.live import DEFAULT_PORT
    from memprof.recorder import publish
    from memprof.recorder.core import current

    if publish.ACTIVE is not None:
        return None

    def iteration() -> int | None:
        rec = current()
        return rec.iteration if rec is not None else None

    return publish.start(device, DEFAULT_PORT if live is True else int(live), command=command or "", iteration=iteration)
