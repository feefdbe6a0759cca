"""Allocator-bound or compute-bound? A verdict with its numbers, a plain explanation and remedies.

A memory trace's ``time_us`` is CPU issue time: when the host asked the allocator for memory.
It cannot say how long the GPU worked. The recorder measures that on one profiled step
(``meta['gpu_busy_ms']``: the summed durations of the kernels, memcpys and memsets launched in
each phase, :mod:`memprof.recorder.busy`). GPU utilisation = busy time / host span of the step
(which runs until the GPU is drained):

* below ``HOST_BOUND_BELOW``: the GPU idles most of the step waiting for the host, so the
  CPU-side path (allocations, kernel launches, Python) sets the pace: allocator/host-bound —
  seed 004's symmetric sawtooth;
* from ``GPU_BOUND_FROM`` (with the CUDA-event time of the step ~ its host span): the GPU works
  the whole time and the host waits for it: compute-bound;
* in between: inconclusive, with the numbers.

CUDA-event time per phase (``meta['timings_ms']``) is kept as a secondary number only: an event
pair measures the time between two points on the stream, idle gaps included, so in a host-bound
run it is ~ the host span whatever the GPU did. Without busy time (metadata from older memprof
versions) the verdict falls back to event time / host span and says it cannot tell idle from busy.
The ramp symmetry of the sawtooth supports the reading but never decides it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from memprof.analysis.phases import FINE_PHASES
from memprof.replay.timeline import Replay

#: GPU busy (or, for old metadata, event) time / host span below this: the GPU idles most of the phase -> allocator-bound.
HOST_BOUND_BELOW = 0.6
#: At or above this: the GPU is busy the whole phase -> compute-bound.
GPU_BOUND_FROM = 0.85
#: rise/fall ratios inside [1/SYMMETRIC, SYMMETRIC] count as symmetric ramps.
SYMMETRIC = 1.5

REMEDIES_HOST = [
    "Give the GPU more work per launch: a bigger batch (or longer sequences) costs the host the same number of "
    "allocations and launches but keeps the GPU busy longer.",
    "Capture the step in a CUDA graph (torch.cuda.graphs, or torch.compile(mode='reduce-overhead')): one launch "
    "replays every kernel with its memory already planned, so the per-tensor allocator work disappears.",
    "torch.compile the model: fused kernels mean fewer launches and fewer temporary tensors to allocate and free.",
    "Make fewer small allocations: reuse buffers, use in-place ops (out=, add_), avoid .clone()/.contiguous() in loops.",
    "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True so growing memory extends a segment instead of calling "
    "cudaMalloc for new ones.",
]
REMEDIES_GPU = [
    "The GPU is the bottleneck, so host-side tricks will not help much: use faster kernels (bf16/TF32 matmuls, "
    "fused attention such as F.scaled_dot_product_attention / FlashAttention).",
    "torch.compile can still fuse element-wise ops and save memory bandwidth.",
    "If memory, not time, is the limit: activation checkpointing or a smaller batch trade time for memory.",
]
REMEDIES_MISSING = [
    "Record with `memprof record` (it measures each phase's GPU busy time on a profiled step and writes it to the "
    "snapshot's .meta.json) and run `memprof explain` again.",
]
#: The run ran out of memory before its profiled step: there is no timing to judge, and re-recording it will not help.
REMEDIES_OOM = [
    "This run ran out of memory before memprof could time and profile a step, so there is no busy time to judge; "
    "the out-of-memory report says what to change. Record a configuration that fits to get the timing verdict.",
]
#: A CPU or MPS run: its memory is exact, but "who sets the pace" needs a GPU's own clock.
REMEDIES_NOT_CUDA = [
    "The bytes of this run are exact; whether the allocator or the arithmetic sets the pace is a question about a "
    "GPU: record the same workload on a CUDA device (`memprof record ... --device cuda`) to get each phase's busy time.",
]
#: Said whenever the verdict rests on CUDA-event time instead of measured busy time.
EVENTS_CAVEAT = (" Caution: these numbers come from CUDA events, and an event pair's elapsed time includes the "
                 "GPU's idle gaps while it waits for the host, so they cannot tell an idle GPU from a busy one "
                 "(a host-bound run can look compute-bound). Re-record with this memprof version (`memprof "
                 "record`), which measures the GPU's busy time per phase on a profiled step.")


@dataclass
class Verdict:
    """``verdict`` is 'allocator-bound', 'compute-bound' or 'inconclusive'."""

    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    remedies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "numbers": self.numbers, "explanation": self.explanation, "remedies": self.remedies}


def _timing_mean(t: Any) -> float | None:
    if isinstance(t, dict):
        v = t.get("mean")
        if v is None and t.get("samples"):
            v = float(np.mean(t["samples"]))
    else:
        v = t
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f >= 0 else None


def phase_cpu_ms(phases: pd.DataFrame, meta: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Mean host-side span (ms) per phase name, and where it came from.

    ``meta['cpu_timings_ms']`` first when the GPU timings came with it (the recorder times the
    same unrecorded steps on both sides, so recording overhead does not skew the comparison);
    else the trace's phase ranges (annotations, user_metadata or meta phases; warm-up left out).
    """
    cpu = meta.get("cpu_timings_ms") or {}
    out = {str(k): m for k, v in cpu.items() if (m := _timing_mean(v)) is not None}
    if out and meta.get("timings_ms"):
        return out, "meta cpu_timings_ms"
    p = phases[phases["source"].isin(["annotations", "user_metadata", "meta"]) & (phases["phase"] != "warmup")]
    if len(p):
        dur = (p["end_us"] - p["start_us"]) / 1000.0
        return {str(k): float(v) for k, v in dur.groupby(p["phase"]).mean().items()}, f"trace ({p['source'].iloc[0]})"
    return out, "meta cpu_timings_ms"


def allocator_bound_verdict(rep: Replay, phases: pd.DataFrame, meta: dict[str, Any] | None,
                            iterations: pd.DataFrame | None = None) -> Verdict:
    """Decide whether the host-side allocation/launch path or the GPU sets the pace.

    With measured busy time (``meta['gpu_busy_ms']``) see :func:`busy_verdict`. Otherwise (old
    metadata, basis 'cuda events') ``numbers`` holds: per_phase {phase: {cpu_ms, gpu_ms, gpu_busy}}, gpu_ms, cpu_ms, gpu_busy
    (GPU time / CPU span over the compared phases), cpu_source, rise_fall_ratio (median over
    iterations), rise_allocs_per_ms, fall_frees_per_ms, symmetric_ramps, n_iterations, and the
    thresholds used.
    """
    meta = meta or {}
    if iterations is None:
        from memprof.analysis.sawtooth import iterations as _its

        iterations = _its(rep, phases)
    nums: dict[str, Any] = {"host_bound_below": HOST_BOUND_BELOW, "gpu_bound_from": GPU_BOUND_FROM,
                            "n_iterations": int(len(iterations))}
    if len(iterations):
        rf = iterations["rise_fall_ratio"].to_numpy(dtype=np.float64)
        rf = rf[np.isfinite(rf)]
        nums["rise_fall_ratio"] = float(np.median(rf)) if len(rf) else None
        nums["rise_allocs_per_ms"] = float(np.nanmedian(iterations["rise_allocs_per_ms"])) if iterations["rise_allocs_per_ms"].notna().any() else None
        nums["fall_frees_per_ms"] = float(np.nanmedian(iterations["fall_frees_per_ms"])) if iterations["fall_frees_per_ms"].notna().any() else None
    else:
        nums["rise_fall_ratio"] = nums["rise_allocs_per_ms"] = nums["fall_frees_per_ms"] = None
    rfr = nums["rise_fall_ratio"]
    symmetric = None if rfr is None else bool(1 / SYMMETRIC <= rfr <= SYMMETRIC)
    nums["symmetric_ramps"] = symmetric
    ramp_text = "" if rfr is None else (
        f" The sawtooth's rise takes {rfr:.2f}x as long as its fall"
        + (" (symmetric ramps: the host allocates and frees at about the same pace)" if symmetric else
           " (asymmetric ramps)") + "."
    )

    gpu = {str(k): m for k, v in (meta.get("timings_ms") or {}).items() if (m := _timing_mean(v)) is not None}
    dev_type = str((meta.get("device") or {}).get("type", "cuda"))
    if dev_type != "cuda":
        gpu = {}  # on cpu/mps the recorder's "GPU" timings are host times: nothing to compare
    cpu, cpu_source = phase_cpu_ms(phases, meta)
    nums["cpu_source"] = cpu_source
    if dev_type == "cuda":
        v = busy_verdict(meta, nums, gpu, ramp_text, symmetric)
        if v is not None:
            return v
    nums["basis"] = "cuda events" if dev_type == "cuda" else "host timers"  # a CPU run has no CUDA events
    common = [p for p in FINE_PHASES if p in gpu and p in cpu] or [p for p in gpu if p in cpu]
    if not gpu or not common:
        missing = []
        if dev_type != "cuda":
            missing.append(f"a CUDA device (this run was on {dev_type}, so there is no separate GPU time)")
        elif not gpu:
            missing.append("the GPU busy time of each phase (meta['gpu_busy_ms'], from a profiled step) or at least its "
                           "CUDA-event time (meta['timings_ms'])")
        if not cpu:
            missing.append("the host-side span of each phase (record_function phase annotations or meta['cpu_timings_ms'])")
        if gpu and cpu and not common:
            missing.append(f"phases with both timings (GPU: {sorted(gpu)}, host: {sorted(cpu)})")
        return Verdict(
            "inconclusive", nums,
            "A memory trace only shows when the host (CPU) asked for memory, not when the GPU did the work, so it "
            "cannot say by itself which side is slow. Missing: " + "; ".join(missing) + "." + ramp_text
            + " Symmetric ramps hint at an allocator-bound loop, but they are not proof on their own.",
            list(REMEDIES_OOM) if meta.get("status") == "oom" else list(REMEDIES_MISSING) if dev_type == "cuda" else list(REMEDIES_NOT_CUDA),
        )
    per = {p: {"cpu_ms": cpu[p], "gpu_ms": gpu[p], "gpu_busy": (gpu[p] / cpu[p]) if cpu[p] > 0 else None} for p in common}
    g_ms, c_ms = sum(gpu[p] for p in common), sum(cpu[p] for p in common)
    busy = g_ms / c_ms if c_ms > 0 else float("inf")
    nums.update(per_phase=per, gpu_ms=g_ms, cpu_ms=c_ms, gpu_busy=busy)
    head = (f"Over {', '.join(common)}, the host took {c_ms:.2f} ms to issue the work and the CUDA events around it "
            f"measured {g_ms:.2f} ms on the GPU ({busy:.0%} of the host's time).")
    if busy < HOST_BOUND_BELOW:
        agree = "" if symmetric is None else (" This agrees with the symmetric ramps." if symmetric else
                                             " (The ramps are not symmetric, so part of the time is elsewhere.)")
        return Verdict(
            "allocator-bound", nums,
            head + " The GPU finishes each piece of work quickly and then waits for the host to allocate the next "
            "tensor and launch the next kernel: the CPU-side allocation and launch path sets the pace, not the GPU's "
            "arithmetic." + ramp_text + agree + EVENTS_CAVEAT,
            list(REMEDIES_HOST),
        )
    if busy >= GPU_BOUND_FROM:
        agree = "" if symmetric is None else (" (Symmetric ramps alone would have suggested the host; the timings "
                                             "outweigh them.)" if symmetric else " This agrees with the slow rise and faster fall.")
        return Verdict(
            "compute-bound", nums,
            head + " The events span (nearly) all of the time the host spends, which fits a GPU that works the whole "
            "time while the host gets ahead and waits for it (the GPU's work setting the pace)." + ramp_text + agree + EVENTS_CAVEAT,
            list(REMEDIES_GPU),
        )
    return Verdict(
        "inconclusive", nums,
        head + f" That is between the two clear cases (below {HOST_BOUND_BELOW:.0%}: the GPU waits for the host; "
        f"from {GPU_BOUND_FROM:.0%}: the host waits for the GPU), so both sides matter." + ramp_text + EVENTS_CAVEAT,
        list(REMEDIES_HOST[:2]) + list(REMEDIES_GPU[:1]),
    )


def _ms_map(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {str(k): m for k, v in d.items() if (m := _timing_mean(v)) is not None}


def busy_verdict(meta: dict[str, Any], nums: dict[str, Any], events: dict[str, float], ramp_text: str,
                 symmetric: bool | None) -> Verdict | None:
    """The verdict from measured GPU busy time (``meta['gpu_busy_ms']``), or None without it.

    Adds to ``nums``: basis 'gpu busy time', gpu_utilization (busy / elapsed time of the step: its
    CUDA-event time on unprofiled steps, else the profiled host span), span_ms,
    busy_ms, host_ms, kernel_launches, launches_per_ms, mean_kernel_us, event_over_host (CUDA-event
    time / unprofiled host time of the step: secondary, idle gaps included), profile_steps, and
    per_phase {phase: {busy_ms, host_ms, utilization, launches, launches_per_ms, mean_kernel_us,
    event_ms, cpu_ms}}.
    """
    busy, host = _ms_map(meta.get("gpu_busy_ms")), _ms_map(meta.get("profiled_host_ms"))
    launches = _ms_map(meta.get("kernel_launches"))
    if not busy or not host:
        return None
    whole = "step" if "step" in busy and "step" in host else None
    fine = [p for p in FINE_PHASES if p in busy and p in host] or [p for p in busy if p in host and p != "step"]
    if whole is None and not fine:
        return None
    honest = _ms_map(meta.get("cpu_timings_ms"))

    def stats(ps: list[str]) -> dict[str, Any]:
        b, h, n = sum(busy[p] for p in ps), sum(host[p] for p in ps), sum(launches.get(p, 0.0) for p in ps)
        ev = sum(events[p] for p in ps) if all(p in events for p in ps) else None
        c = sum(honest[p] for p in ps) if all(p in honest for p in ps) else None
        # The denominator is how long the phase really took: its CUDA-event time on unprofiled steps
        # (start to end on the GPU's timeline, idle gaps included). The profiled step's host span is
        # inflated by the profiler's own per-op cost, so it is only the fallback.
        span = ev if ev else h
        return {"busy_ms": b, "host_ms": h, "span_ms": span, "span_source": "cuda events" if ev else "profiled host",
                "utilization": (b / span) if span > 0 else None, "launches": n,
                "launches_per_ms": (n / span) if span > 0 else None, "mean_kernel_us": (1000.0 * b / n) if n else None,
                "event_ms": ev, "cpu_ms": c}

    per = {p: stats([p]) for p in fine + ([whole] if whole else [])}
    tot = per[whole] if whole else stats(fine)
    util = tot["utilization"]
    if util is None:
        return None
    ev_ratio = (tot["event_ms"] / tot["cpu_ms"]) if tot["event_ms"] is not None and tot["cpu_ms"] else None
    nums.update(basis="gpu busy time", per_phase=per, gpu_utilization=util, busy_ms=tot["busy_ms"], span_ms=tot["span_ms"],
                host_ms=tot["host_ms"], kernel_launches=tot["launches"], launches_per_ms=tot["launches_per_ms"],
                mean_kernel_us=tot["mean_kernel_us"], event_over_host=ev_ratio,
                profile_steps=(meta.get("gpu_busy_profile") or {}).get("steps"))
    scope = "the step" if whole else ", ".join(fine)
    phase_txt = "; ".join(f"{p} {v['busy_ms']:.2f} of {v['span_ms']:.2f} ms ({v['utilization']:.0%})"
                          for p, v in per.items() if p != "step" and v["utilization"] is not None)
    took = ("measured with CUDA events on unprofiled steps" if tot["span_source"] == "cuda events"
            else "the profiled step's host span, which the profiler itself lengthens")
    head = (f"The GPU was busy (kernels, copies; from a profiled step) {tot['busy_ms']:.2f} ms of the "
            f"{tot['span_ms']:.2f} ms that {scope} took ({took}): GPU utilisation {util:.0%}."
            + (f" Per phase, busy of elapsed time: {phase_txt}." if phase_txt else ""))
    if tot["launches"]:
        head += (f" The host launched {tot['launches']:.0f} kernels ({tot['launches_per_ms']:.1f} per ms), "
                 f"{tot['mean_kernel_us']:.1f} us of GPU work each on average"
                 + (" — many tiny kernels: the launch path sets the pace." if tot["mean_kernel_us"] < 20 and util < GPU_BOUND_FROM
                    else ".") )
    ev_txt = "" if ev_ratio is None else (
        f" (Secondary: CUDA events measured {tot['event_ms']:.2f} ms against {tot['cpu_ms']:.2f} ms of unprofiled "
        f"host time, {ev_ratio:.0%}; event time includes the GPU's idle gaps, so it is not busy time.)")
    if util < HOST_BOUND_BELOW:
        agree = "" if symmetric is None else (" The symmetric ramps agree." if symmetric else
                                             " (The ramps are not symmetric; the busy time decides.)")
        return Verdict(
            "allocator-bound", nums,
            head + " The GPU sits idle most of the time, waiting for the host to allocate the next tensor and launch "
            "the next kernel: the CPU-side allocation and launch path sets the pace, not the GPU's arithmetic."
            + ramp_text + agree + ev_txt,
            list(REMEDIES_HOST),
        )
    if util >= GPU_BOUND_FROM and (ev_ratio is None or ev_ratio >= GPU_BOUND_FROM):
        agree = "" if symmetric is None else (" (Symmetric ramps alone would have suggested the host; the busy time "
                                             "outweighs them.)" if symmetric else " This agrees with the slow rise and faster fall.")
        return Verdict(
            "compute-bound", nums,
            head + " The GPU works for (nearly) the whole step and the host waits for it: the GPU's work sets the pace."
            + ramp_text + agree + ev_txt,
            list(REMEDIES_GPU),
        )
    why = (f"between the two clear cases (below {HOST_BOUND_BELOW:.0%}: the GPU waits for the host; from "
           f"{GPU_BOUND_FROM:.0%}: the host waits for the GPU), so both sides matter" if util < GPU_BOUND_FROM else
           f"high, but the CUDA events measured only {ev_ratio:.0%} of the unprofiled host time, so the profiled "
           "step may not be typical")
    return Verdict("inconclusive", nums, head + f" That is {why}." + ramp_text + ev_txt,
                   list(REMEDIES_HOST[:2]) + list(REMEDIES_GPU[:1]))
