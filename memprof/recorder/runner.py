"""Record a built-in workload: warm up, time with recording off, then record N steps."""

from __future__ import annotations

import datetime
import functools
import gc
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from memprof.version import __version__
from memprof.snapshot.meta import write_meta
from memprof.recorder.core import PhaseTimer, Recording
from memprof.recorder.dist import TermDump, finalize_status
from memprof.recorder.snapshot_io import empty_snapshot, write_snapshot
from memprof.workloads import Workload, storage_addrs

EXIT_OOM = 3
OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "index": device.index}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, total_memory_bytes=int(props.total_memory))
    elif device.type == "mps":
        info.update(name="Apple MPS", total_memory_bytes=None)
    else:
        info.update(name=platform.processor() or platform.machine(), total_memory_bytes=_host_memory())
    return info


def _host_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def base_meta(device: torch.device) -> dict[str, Any]:
    from memprof.recorder.dist import rank_env

    meta = {
        "memprof_version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_info(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    info = rank_env()
    if info is not None:  # a torchrun worker: its place in the run
        meta["dist"] = info
    return meta


def tensor_addrs(workload: Workload) -> dict[str, list[list[int]]]:
    t = workload.tensors()
    return {
        "parameter_addrs": storage_addrs(t.get("parameters", [])),
        "gradient_addrs": storage_addrs(t.get("gradients", [])),
        "optimizer_state_addrs": storage_addrs(t.get("optimizer_state", [])),
        "input_addrs": storage_addrs(t.get("inputs", [])),
    }


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=not enabled, leave=False)


def record_workload(
    workload: Workload,
    path: str | os.PathLike[str] | None,
    device: torch.device,
    steps: int = 3,
    warmup: int = 2,
    max_entries: int = 1_000_000,
    stacks: str = "python",
    compress: bool | None = None,
    command: str | None = None,
    progress: bool = True,
    backend: str | None = None,
    step_hook: Callable[[Workload, int], None] | None = None,
    profile_steps: int = 1,
) -> dict[str, Any]:
    """Run ``workload`` and write its snapshot (when ``path``) and metadata.

    Returns the metadata dict (also written beside the snapshot): status ``ok`` or ``oom``.
    ``step_hook(workload, i)`` runs before every step (tests use it to simulate failures).
    ``profile_steps`` steps after timing (recording off) run under torch.profiler to measure GPU
    busy time per phase (:mod:`memprof.recorder.busy`); 0 skips them. A profiler failure is
    written as ``gpu_busy_error`` and the run goes on.
    An OOM is caught: memory is freed, the snapshot (with the allocator's ``oom`` entry on
    CUDA) and metadata are written with status ``oom``; nothing is raised.
    """
    meta = base_meta(device)
    meta.update(
        workload={"kind": workload.kind, **workload.options},
        command=command,
        status="ok",
        record={"max_entries": max_entries, "stacks": stacks, "context": "all", "warmup_steps": warmup, "measured_steps": steps,
                "profiled_steps": profile_steps},
    )
    rec: Recording | None = None
    snap: dict[str, Any] | None = None
    n_profiled = profile_steps + 1 if profile_steps > 0 else 0  # + the profiler's warm-up step
    bar = _progress(warmup + n_profiled + (2 * steps if path else steps), workload.slug(), progress)
    stage = "setup"

    def on_sigterm(status: str) -> None:  # torchrun stops this rank (another one failed): keep what it recorded
        meta.update(status=status, error=f"the launcher terminated this rank (SIGTERM) during {stage}, e.g. after another rank failed")
        if path is not None:
            snap = rec.stop(sync=False) if rec is not None and rec.started else empty_snapshot()
            if rec is not None:
                meta["peak_allocated_bytes"], meta["peak_reserved_bytes"] = rec.peaks()
            write_snapshot(path, snap, compress)
            write_meta(path, meta)

    term = TermDump(on_sigterm) if meta.get("dist") and path is not None else None
    try:
        from memprof.recorder.naming import install_compile_map

        if workload.options.get("compile"):
            install_compile_map(force_import=True)  # torch.compile runs in warm-up: note the model's source lines then
        workload.setup(device)
        stage = "warm-up"
        for i in range(warmup):
            if step_hook:
                step_hook(workload, i)
            workload.step()
            bar.update()
        stage = "timing"
        timer = PhaseTimer(device)
        for i in range(steps):
            if step_hook:
                step_hook(workload, warmup + i)
            with timer.time("step", i):
                workload.step(functools.partial(timer.time, iteration=i))
            bar.update()
        meta["timings_ms"], meta["cpu_timings_ms"] = timer.timings()
        if profile_steps > 0:
            stage = "profiling"
            meta.update(_profile(workload, device, profile_steps, warmup + steps, step_hook, bar))
        if path is not None:
            stage = "recording"
            alive = [x for v in workload.tensors().values() for x in v] if device.type != "cuda" else None
            rec = Recording(device, max_entries=max_entries, stacks=stacks, backend=backend, alive_before=alive).start()
            del alive
            meta.update(tensor_addrs(workload))
            for i in range(steps):
                if step_hook:
                    step_hook(workload, warmup + steps + n_profiled + i)
                rec.iteration = i
                with rec.timer.time("step", i):
                    workload.step(rec.phase)
                bar.update()
            snap = rec.stop()
            meta["recorded_timings_ms"], meta["recorded_cpu_timings_ms"] = rec.timings()
            meta["phases"] = [r for r in rec.timer.ranges]
            meta["record"]["backend"] = rec.backend
            meta["record"]["history_kwargs"] = {k: v for k, v in rec.history_kwargs.items()}
            late = tensor_addrs(workload)  # gradients and optimizer state exist after the steps
            for k, v in late.items():
                meta[k] = [list(x) for x in {tuple(a) for a in meta.get(k, []) + v}]
    except OOM_ERRORS as e:
        meta["status"] = "oom"
        meta["error"] = f"out of memory during {stage}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        if rec is not None and rec.started:
            snap = rec.stop()
        elif path is not None and device.type == "cuda" and stage != "setup":
            snap = _record_oom_step(workload, device, max_entries, stacks)
    except BaseException:
        if term is not None:
            term.close()
        raise
    finally:
        bar.close()
        if term is not None:
            term.hold()  # a SIGTERM from here on waits for the write below (then is delivered by close)
    try:
        if rec is not None:
            pa, pr = rec.peaks()
            meta["peak_allocated_bytes"], meta["peak_reserved_bytes"] = pa, pr
        elif device.type == "cuda":
            meta["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
            meta["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        if isinstance(workload, object) and hasattr(workload, "n_params"):
            meta["workload"]["n_params"] = int(workload.n_params())
        workload.teardown()
        del rec
        free_memory(device)
        if path is not None:
            snap = snap if snap is not None else empty_snapshot()
            finalize_status(meta, snap)
            write_snapshot(path, snap, compress)
            write_meta(path, meta)
            meta["snapshot_path"] = str(Path(path))
        return meta
    finally:
        if term is not None:
            term.close()


def _profile(workload: Workload, device: torch.device, n: int, first: int,
             step_hook: Callable[[Workload, int], None] | None, bar: Any) -> dict[str, Any]:
    """GPU busy time per phase from ``n`` profiled steps, or ``{'gpu_busy_error': ...}``.

    Runs after the timed steps and before the recorded window, so neither the honest timings
    nor the snapshot see the profiler. An OOM is re-raised (the run's own OOM handling applies).
    """
    from memprof.recorder.busy import profile_steps

    def run_step(phase: Callable[[str], Any], i: int) -> None:
        if step_hook:
            step_hook(workload, i)
        workload.step(phase)
        bar.update()

    try:
        return profile_steps(run_step, device.type, n, first)
    except OOM_ERRORS:
        raise
    except Exception as e:  # noqa: BLE001 - CUPTI missing, profiler already running, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        return {"gpu_busy_error": f"{type(e).__name__}: {msg}".rstrip(": ")}


def _record_oom_step(workload: Workload, device: torch.device, max_entries: int, stacks: str) -> dict[str, Any] | None:
    """The OOM came before recording (warm-up or timing): free, then record one more step so
    the snapshot holds the allocator's ``oom`` entry and what led to it."""
    free_memory(device)
    rec = Recording(device, max_entries=max_entries, stacks=stacks).start()
    try:
        workload.step(rec.phase)
    except OOM_ERRORS:
        pass
    return rec.stop()
