"""What if the same requests met another allocator configuration or a smaller card: the model
that ``memprof whatif`` prints and the dashboard's what-if panel shows.

``whatif_dict`` returns one dict: ``snapshot``, ``device``, ``recorded`` (the recorded settings and
counters, and the model's replay of them), ``device_memory``, ``start`` ("recorded": the same
settings and card, replayed from the recorded cache; "cold": from an empty allocator),
``baseline`` (the recorded settings from the same start) and the simulation's
:meth:`memprof.allocator.model.SimResult.to_dict`.
"""

from __future__ import annotations

from typing import Any

from memprof.allocator.model import AllocConf, requests_from_snapshot, simulate
from memprof.replay.timeline import replay


def whatif_dict(snap: Any, device: int, alloc_conf: str | None, device_memory: int | None,
                meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recorded vs simulated counters; ``simulated`` is :meth:`SimResult.to_dict`."""
    req, rec_conf = requests_from_snapshot(snap, device)
    # like PYTORCH_CUDA_ALLOC_CONF: the settings given, torch's defaults for the rest ("" = defaults)
    conf = AllocConf.parse(alloc_conf) if alloc_conf is not None else rec_conf
    base = simulate(req, rec_conf, exact_releases=True)
    same = conf == rec_conf and device_memory is None
    # another configuration or device: start from an empty allocator (the recording's cache was
    # shaped by the recorded configuration), allocating what was alive before the window first
    sim = base if same else simulate(req.cold(), conf, device_memory=device_memory, recorded_releases=False)
    # the recorded settings from the same empty start: what the change itself buys
    baseline = base if same else simulate(req.cold(), rec_conf, recorded_releases=False)
    rep = replay(snap, device)
    meta = meta or {}
    out = {
        "snapshot": snap.source,
        "device": device,
        "recorded": {
            "alloc_conf": rec_conf.describe(),
            "max_memory_allocated": meta.get("peak_allocated_bytes"),
            "max_memory_reserved": meta.get("peak_reserved_bytes"),
            "trace_peak_reserved_bytes": int(rep.peak_reserved_bytes),
            "simulated_max_memory_allocated": base.max_allocated,
            "simulated_max_memory_reserved": base.max_reserved,
        },
        "device_memory": device_memory,
        "start": "recorded" if same else "cold",
        "baseline": {"simulated_max_memory_allocated": baseline.max_allocated,
                     "simulated_max_memory_reserved": baseline.max_reserved},
        **sim.to_dict(),
    }
    return out
