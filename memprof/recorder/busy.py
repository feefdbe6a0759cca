"""GPU busy time per phase, from one profiled step (torch.profiler with CUPTI).

A CUDA event pair measures the time *between* two points on the GPU's stream, idle gaps
included: when the GPU waits for the host, event time ~ host time, whatever the GPU did. So
the recorder also profiles one step (after warm-up and timing, with the allocator history off)
and sums the durations of the kernels, memcpys and memsets launched in each phase.

Attribution is by time, not by the profiler's op tree: a device op belongs to every phase range
(``record_function(phase_label(...))`` on the main thread) that contains the host timestamp of
the runtime call that launched it (``cudaLaunchKernel`` & co., matched by CUPTI correlation id).
Kernels launched by autograd's backward thread during ``loss.backward()`` fall inside the
backward range by their timestamp. When no runtime call matches, the start of the linked CPU
op is used, and as a last resort the op's own device start time (counted in ``attribution``).

Only :func:`profile_steps` imports torch; :func:`attribute` is plain numpy.
"""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager, Iterable

import numpy as np

from memprof.snapshot.meta import parse_phase_label

#: Kineto activity types that are GPU work (their durations are GPU busy time).
DEVICE_WORK = {"kernel", "gpu_memcpy", "gpu_memset", "concurrent_kernel"}
#: Kineto activity types of host-side calls that launch device work.
RUNTIME = {"cuda_runtime", "cuda_driver", "privateuse1_runtime", "privateuse1_driver", "xpu_runtime", "mtia_runtime"}
RUNTIME_PREFIXES = ("cuda", "cu", "hip")


def attribute(ranges: list[tuple[str, int, int]], launch_ns: Iterable[int], duration_ns: Iterable[int]) -> dict[str, dict[str, float]]:
    """Per phase name: mean over its ranges of GPU busy ms, device-op launches and host span ms.

    ``ranges`` are ``(phase, start_ns, end_ns)`` on the host clock (several ranges of one phase,
    e.g. one per profiled step, are averaged); a device op counts in every range whose
    ``[start, end)`` holds its launch time (nested ranges such as ``step`` > ``forward`` both
    count it). Returns ``{phase: {busy_ms, launches, host_ms, n_ranges}}``.
    """
    t = np.asarray(list(launch_ns), dtype=np.int64)
    d = np.asarray(list(duration_ns), dtype=np.int64)
    acc: dict[str, list[float]] = {}
    for name, start, end in ranges:
        inside = (t >= start) & (t < end)
        a = acc.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        a[0] += float(d[inside].sum()) / 1e6
        a[1] += float(inside.sum())
        a[2] += (end - start) / 1e6
        a[3] += 1
    return {k: {"busy_ms": b / n, "launches": c / n, "host_ms": h / n, "n_ranges": int(n)} for k, (b, c, h, n) in acc.items()}


def _call(e: Any, name: str, default: Any = None) -> Any:
    fn = getattr(e, name, None)
    if fn is None:
        return default
    try:
        return fn()
    except (RuntimeError, TypeError, ValueError):
        return default


def _is_cpu(e: Any) -> bool:
    return str(_call(e, "device_type", "cpu")).lower().endswith("cpu")


def device_ops(events: list[Any]) -> tuple[list[tuple[str, int, int]], np.ndarray, np.ndarray, dict[str, int]]:
    """From Kineto events (``prof.profiler.kineto_results.events()``): the phase ranges, and each
    device op's launch time and duration (ns), and how many were attributed by which clock.

    Phase ranges are CPU events named ``memprof/<phase>/<iteration>``. Device work is every
    non-CPU event that is a kernel, memcpy or memset (by ``activity_type()`` where this torch
    has it; else every non-CPU event that is not a user annotation).
    """
    ranges: list[tuple[str, int, int]] = []
    runtime: dict[int, int] = {}
    ops: dict[int, int] = {}
    dev: list[Any] = []
    annotation_names: set[str] = set()
    for e in events:
        name = str(_call(e, "name", ""))
        kind = _call(e, "activity_type")
        kind = None if kind is None else str(kind).lower()
        if _is_cpu(e):
            start = int(_call(e, "start_ns", 0))
            parsed = parse_phase_label(name)
            if parsed is not None:
                end = _call(e, "end_ns")
                end = int(end) if end is not None else start + int(_call(e, "duration_ns", 0))
                ranges.append((parsed[0], start, end))
                annotation_names.add(name)
                continue
            corr = int(_call(e, "correlation_id", 0) or 0)
            is_runtime = kind in RUNTIME if kind is not None else name.startswith(RUNTIME_PREFIXES)
            if is_runtime:
                runtime.setdefault(corr, start)
            elif corr:
                ops.setdefault(corr, start)
        else:
            if kind is not None and kind not in DEVICE_WORK:
                continue
            if kind is None and (_call(e, "is_user_annotation", False) or parse_phase_label(name) is not None):
                continue
            dev.append(e)
    launch, dur = np.zeros(len(dev), dtype=np.int64), np.zeros(len(dev), dtype=np.int64)
    how = {"runtime": 0, "cpu_op": 0, "device_time": 0}
    for i, e in enumerate(dev):
        corr = int(_call(e, "correlation_id", 0) or 0)
        linked = int(_call(e, "linked_correlation_id", 0) or 0)
        dur[i] = int(_call(e, "duration_ns", 0) or 0)
        if corr in runtime:
            launch[i] = runtime[corr]
            how["runtime"] += 1
        elif linked in ops:
            launch[i] = ops[linked]
            how["cpu_op"] += 1
        else:
            launch[i] = int(_call(e, "start_ns", 0))
            how["device_time"] += 1
    ranges = [r for r in ranges if r[2] >= r[1]]
    return ranges, launch, dur, how


def profile_steps(
    run_step: Callable[[Callable[[str], ContextManager[Any]], int], None],
    device_type: str,
    steps: int = 1,
    first_iteration: int = 0,
) -> dict[str, Any]:
    """Profile ``steps`` calls of ``run_step(phase, i)`` and return the metadata keys.

    One more call runs first as the profiler's warm-up (traced, then discarded), so the
    profiler's own start-up costs do not inflate the measured host spans; ``run_step`` is thus
    called ``steps + 1`` times with iterations ``first_iteration ...``.

    ``phase(name)`` marks a phase with ``record_function(phase_label(name, i))``; each step is
    wrapped in a ``step`` range that ends after ``torch.cuda.synchronize()``, so the step's host
    span runs until the GPU has finished its work and ``gpu_utilization`` (step busy / step span)
    is a true fraction. Phase spans are host issue time only (no extra syncs inside the step).
    On a machine without CUDA the profile has no device events: zero busy time and launches.

    Returns ``gpu_busy_ms``, ``kernel_launches``, ``profiled_host_ms`` ({phase: value}, means per
    step), ``gpu_utilization`` (or None) and ``gpu_busy_profile`` (steps, activities,
    attribution counts, profiler wall ms); raises whatever the profiler raises.
    """
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    from memprof.snapshot.meta import phase_label

    cuda = device_type == "cuda" and torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    sync()
    # one discarded profiler warm-up step first: CUPTI / Kineto set-up costs land there
    sched = schedule(wait=0, warmup=1, active=steps, repeat=1)
    with profile(activities=acts, schedule=sched, record_shapes=False, profile_memory=False, with_stack=False) as prof:
        for k in range(steps + 1):
            it = first_iteration + k

            @contextlib.contextmanager
            def phase(name: str, _it: int = it) -> Any:
                with record_function(phase_label(name, _it)):
                    yield

            with record_function(phase_label("step", it)):
                run_step(phase, it)
                sync()
            prof.step()
    wall_ms = (time.perf_counter() - t0) * 1000.0
    ranges, launch, dur, how = device_ops(list(prof.profiler.kineto_results.events()))
    per = attribute(ranges, launch, dur)
    busy = {k: round(v["busy_ms"], 6) for k, v in per.items()}
    host = {k: round(v["host_ms"], 6) for k, v in per.items()}
    step_busy, step_host = busy.get("step"), host.get("step")
    return {
        "gpu_busy_ms": busy,
        "kernel_launches": {k: int(round(v["launches"])) for k, v in per.items()},
        "profiled_host_ms": host,
        "gpu_utilization": (step_busy / step_host) if cuda and step_busy is not None and step_host else None,
        "gpu_busy_profile": {
            "steps": steps, "warmup_steps": 1,
            "activities": [a.name for a in acts],
            "device_ops": int(len(dur)),
            "attribution": how,
            "profiler_wall_ms": round(wall_ms, 3),
        },
    }
