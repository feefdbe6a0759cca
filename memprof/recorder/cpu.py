"""CPU: build a CUDA-style snapshot dict from ``torch.profiler`` memory events.

The CPU allocator keeps no history, but the profiler (``profile_memory=True``) reports every
allocation and free with its address, size and time, and ``with_stack=True`` gives the Python
calls around it. This module turns those into the snapshot schema torch's
``_snapshot()`` writes, so memprof (and torch's own ``_memory_viz``) read it unchanged
(:mod:`memprof.recorder.synth` builds the dict; ``time_us`` is on the epoch clock, Python
frames innermost first; ``record_function`` ranges of user scope become
``external_annotations``).

The CPU allocator does not report frees of blocks allocated before profiling began; the
recorder tracks those tensors itself (weakref finalizers) and passes them to ``synth``.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from memprof.recorder.synth import Op

Frame = dict[str, Any]


def start_profiler() -> profile:
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True, record_shapes=True)
    prof.__enter__()
    return prof


def stop_profiler(prof: profile) -> None:
    prof.__exit__(None, None, None)


def _frames(node: Any) -> list[Frame]:
    """Python frames around an event, innermost first: the caller of each Python call."""
    out: list[Frame] = []
    p = node.parent
    while p is not None:
        if p.tag in (_EventType.PyCall, _EventType.PyCCall):
            c = p.extra_fields.caller
            out.append({"filename": _text(lambda: c.file_name), "line": int(c.line_number), "name": _text(lambda: c.function_name)})
        p = p.parent
    return out


def _text(get: Any, default: str = "??") -> str:
    # torch's profiler now and then hands back undecodable bytes for a Python-tracer string
    # (seen with torch 2.13 CPU: UnicodeDecodeError); one bad name must not lose the recording.
    try:
        return str(get())
    except UnicodeDecodeError:
        return default


def _walk(roots: Iterable[Any]) -> Iterable[Any]:
    stack = list(roots)[::-1]
    while stack:
        e = stack.pop()
        yield e
        stack.extend(list(e.children)[::-1])


def profiler_ops(prof: profile, device_type: str = "cpu") -> tuple[list[Op], list[dict[str, Any]]]:
    """(allocation ops, record_function annotations) of one profiled window, in time order.

    Ops are ``(time_us, addr, signed_size, frames)`` for :func:`memprof.recorder.synth.build_snapshot`.
    """
    # set by start_profiler / stop_profiler (the profile was entered and exited)
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    roots = prof.profiler.kineto_results.experimental_event_tree()
    ops: list[Op] = []
    ann: list[dict[str, Any]] = []
    for e in _walk(roots):
        if e.tag == _EventType.Allocation:
            ef = e.extra_fields
            if ef.device.type != device_type or not ef.alloc_size:
                continue
            ops.append((int(e.start_time_ns) // 1000, int(ef.ptr), int(ef.alloc_size), _frames(e)))
        elif e.tag == _EventType.TorchOp and str(e.extra_fields.scope).endswith("USER_SCOPE"):
            name = _text(lambda: e.name, "")
            if not name:
                continue
            ann.append({"device": 0, "stage": "START", "name": name, "time_us": int(e.start_time_ns) // 1000})
            ann.append({"device": 0, "stage": "END", "name": name, "time_us": int(e.end_time_ns) // 1000})
    ops.sort(key=lambda o: o[0])
    ann.sort(key=lambda a: a["time_us"])
    return ops, ann


def profiler_timeline_peak(prof: profile, device: str = "cpu") -> int | None:
    """Peak total bytes of torch.profiler's own memory timeline (``MemoryProfileTimeline``), or None."""
    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        _times, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
    except Exception:  # noqa: BLE001 - private API; absence is not an error
        return None
    if not sizes:
        return None
    return int(max(sum(s) for s in sizes))
