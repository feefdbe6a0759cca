"""Replay a snapshot's trace exactly as PyTorch's memory viewer does.

Semantics follow ``torch/utils/viz/MemoryViz.js`` (``annotate_snapshot`` and
``process_alloc_data``):

* ``free_requested`` immediately followed by ``free_completed`` of the same address
  is one free, at the request. A lone ``free_requested`` keeps the memory alive; the
  later ``free_completed`` frees it. (``free``, the viewer's merged name, is a free too.)
* An alloc is paired with the next free of its address. An alloc followed by another
  alloc of the same address is never freed (it stays alive to the end).
* A free with no alloc before it is an allocation alive before the recorded window
  (e.g. the ring buffer wrapped, or history was enabled late); it is alive from the start.
* ``active_allocated`` blocks in the snapshot's segments that the trace never allocated
  are alive for the whole window.
* The peak is the largest total after any action (as the viewer's ``max_size``).

Everything is vectorised: sorting by address pairs allocs with frees, and the
timeline is a cumulative sum of signed sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memprof.load import (
    A_ALLOC,
    A_FREE,
    A_FREE_DONE,
    A_FREE_REQ,
    A_OOM,
    A_SEG_ALLOC,
    A_SEG_FREE,
    A_SEG_MAP,
    A_SEG_UNMAP,
    Snapshot,
)

#: ``source`` codes in the allocations table.
SOURCE_TRACE, SOURCE_FREE_ONLY, SOURCE_BLOCK = 0, 1, 2
SOURCES = ("trace", "alive_before_window", "snapshot_block")


@dataclass
class Replay:
    """The replayed allocator state of one device.

    ``allocations`` — one row per allocation:
        addr, size (requested bytes), stream, stack_id,
        alloc_idx (event index of the alloc; -1 when alive before the window),
        free_idx (event index of the free; -1 when still alive at the end),
        alloc_us, free_us (float, NaN when unknown: before/after the window),
        alive_at_start, alive_at_end (bool), source (0 trace, 1 freed without a recorded
        alloc, 2 active block in the snapshot never allocated in the trace).
    ``timeline`` — one row per trace event that changed allocated bytes, plus a first row for
        the state before the window: idx (-1 for that first row), time_us, delta, allocated.
    ``reserved`` — one row per segment event plus a first row: idx, time_us, delta, reserved.
    """

    device: int
    n_events: int
    allocations: pd.DataFrame
    timeline: pd.DataFrame
    reserved: pd.DataFrame
    peak_bytes: int
    peak_idx: int
    peak_time_us: float
    peak_reserved_bytes: int
    peak_reserved_time_us: float
    start_us: float
    end_us: float
    oom_events: pd.DataFrame

    def alive_at(self, idx: int) -> pd.DataFrame:
        """Allocations alive just after event ``idx`` (-1: before the first event)."""
        a = self.allocations
        born = a["alloc_idx"].to_numpy() <= idx
        alive = (a["free_idx"].to_numpy() > idx) | (a["free_idx"].to_numpy() < 0)
        return a[born & alive]

    def at_peak(self) -> pd.DataFrame:
        """Allocations alive at the peak, largest first."""
        return self.alive_at(self.peak_idx).sort_values("size", ascending=False, kind="stable")

    @property
    def duration_us(self) -> float:
        return float(self.end_us - self.start_us)


def free_events(action: np.ndarray, addr: np.ndarray) -> np.ndarray:
    """Boolean mask of events that free memory, after merging request+completion pairs.

    A ``free_requested`` directly followed by the ``free_completed`` of the same address
    becomes one free at the request; the completion is then dropped.
    """
    n = len(action)
    is_req = action == A_FREE_REQ
    is_done = action == A_FREE_DONE
    merged = np.zeros(n, dtype=bool)
    if n > 1:
        merged[:-1] = is_req[:-1] & is_done[1:] & (addr[:-1] == addr[1:])
    dropped = np.zeros(n, dtype=bool)
    dropped[1:] = merged[:-1]
    return merged | (is_done & ~dropped) | (action == A_FREE)


def _prepend(first: float, rest: np.ndarray, dtype: type) -> np.ndarray:
    """``[first, *rest]`` as one new array (no intermediate copies)."""
    out = np.empty(len(rest) + 1, dtype=dtype)
    out[0] = first
    out[1:] = rest
    return out


def replay(snap: Snapshot, device: int = 0) -> Replay:
    """Replay one device's trace into allocations and timelines."""
    ev = snap.device_events(device)
    action = ev["action"].to_numpy()
    addr = ev["addr"].to_numpy()
    size = ev["size"].to_numpy()
    stream = ev["stream"].to_numpy()
    stack = ev["stack_id"].to_numpy()
    t_us = ev["time_us"].to_numpy().astype(np.float64)
    n = len(action)

    is_alloc = action == A_ALLOC
    is_free = free_events(action, addr)
    rel = np.flatnonzero(is_alloc | is_free)
    # Sort relevant events by (addr, position): neighbours in this order are consecutive uses of one address.
    order = rel[np.lexsort((rel, addr[rel]))]
    o_addr = addr[order]
    o_alloc = is_alloc[order]
    same_next = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        same_next[:-1] = o_addr[:-1] == o_addr[1:]
    # An alloc is freed by the next event at its address if that event is a free.
    next_is_free = np.zeros(len(order), dtype=bool)
    next_is_free[:-1] = same_next[:-1] & ~o_alloc[1:]
    # A free whose previous event at its address is not an alloc frees memory from before the window.
    prev_is_alloc = np.zeros(len(order), dtype=bool)
    prev_is_alloc[1:] = same_next[:-1] & o_alloc[:-1]

    a_pos = np.flatnonzero(o_alloc)
    alloc_idx = order[a_pos]
    free_idx = np.where(next_is_free[a_pos], order[np.minimum(a_pos + 1, len(order) - 1)], -1)
    orphan_pos = np.flatnonzero(~o_alloc & ~prev_is_alloc)
    orphan_idx = order[orphan_pos]

    # Allocations alive at the end, by address: the last event at that address is an alloc.
    last_at_addr = np.ones(len(order), dtype=bool)
    last_at_addr[:-1] = ~same_next[:-1]
    alive_end_addrs = o_addr[last_at_addr & o_alloc]
    # free the sort temporaries before building tables (peak memory on million-event traces)
    del rel, order, o_addr, o_alloc, same_next, next_is_free, prev_is_alloc, a_pos, orphan_pos, last_at_addr, is_alloc, is_free

    blk = snap.blocks
    blk = blk[(blk["device"].to_numpy() == device) & (blk["state"].to_numpy() == "active_allocated")]
    blk = blk[~np.isin(blk["addr"].to_numpy(), alive_end_addrs)]
    seg_stream = snap.segments["stream"].to_numpy()

    n_t, n_o, n_b = len(alloc_idx), len(orphan_idx), len(blk)
    allocations = pd.DataFrame(
        {
            "addr": np.concatenate([addr[alloc_idx], addr[orphan_idx], blk["addr"].to_numpy()]),
            "size": np.concatenate([size[alloc_idx], size[orphan_idx], blk["requested_size"].to_numpy()]),
            "stream": np.concatenate([stream[alloc_idx], stream[orphan_idx], seg_stream[blk["segment"].to_numpy()] if n_b else np.zeros(0, np.int64)]),
            "stack_id": np.concatenate([stack[alloc_idx], stack[orphan_idx], blk["stack_id"].to_numpy()]).astype(np.int32),
            "alloc_idx": np.concatenate([alloc_idx, np.full(n_o + n_b, -1)]).astype(np.int64),
            "free_idx": np.concatenate([free_idx, orphan_idx, np.full(n_b, -1)]).astype(np.int64),
            "source": np.concatenate([np.full(n_t, SOURCE_TRACE), np.full(n_o, SOURCE_FREE_ONLY), np.full(n_b, SOURCE_BLOCK)]).astype(np.int8),
        }
    )
    ai = allocations["alloc_idx"].to_numpy()
    fi = allocations["free_idx"].to_numpy()
    allocations["alloc_us"] = np.where(ai >= 0, t_us[np.maximum(ai, 0)] if n else np.nan, np.nan)
    allocations["free_us"] = np.where(fi >= 0, t_us[np.maximum(fi, 0)] if n else np.nan, np.nan)
    allocations["alive_at_start"] = ai < 0
    allocations["alive_at_end"] = fi < 0
    allocations = allocations.sort_values(["alloc_idx", "free_idx"], kind="stable", ignore_index=True)

    # Allocated-bytes timeline: +size at allocs, -size at frees, starting from what was alive before.
    sizes = allocations["size"].to_numpy()
    initial = int(sizes[allocations["alloc_idx"].to_numpy() < 0].sum())
    d_idx = np.concatenate([allocations["alloc_idx"].to_numpy(), allocations["free_idx"].to_numpy()])
    d_val = np.concatenate([sizes, -sizes])
    keep = d_idx >= 0
    d_idx, d_val = d_idx[keep], d_val[keep]
    o = np.argsort(d_idx, kind="stable")
    d_idx, d_val = d_idx[o], d_val[o]
    del keep, o
    allocated = initial + np.cumsum(d_val)
    timeline = pd.DataFrame(
        {
            "idx": _prepend(-1, d_idx, np.int64),
            "time_us": _prepend(t_us[0] if n else 0.0, t_us[d_idx], np.float64),
            "delta": _prepend(initial, d_val, np.int64),
            "allocated": _prepend(initial, allocated, np.int64),
        },
        copy=False,
    )
    del d_val
    if len(allocated):
        k = int(np.argmax(allocated))
        peak_bytes, peak_idx, peak_t = int(allocated[k]), int(d_idx[k]), float(t_us[d_idx[k]])
    else:
        peak_bytes, peak_idx, peak_t = initial, -1, float(t_us[0]) if n else 0.0

    reserved = _reserved_timeline(snap, device, action, size, t_us)
    r = reserved["reserved"].to_numpy()
    rk = int(np.argmax(r))
    oom = ev[action == A_OOM][["idx", "size", "device_free", "time_us", "stack_id"]].reset_index(drop=True)
    return Replay(
        device=device,
        n_events=n,
        allocations=allocations,
        timeline=timeline,
        reserved=reserved,
        peak_bytes=peak_bytes,
        peak_idx=peak_idx,
        peak_time_us=peak_t,
        peak_reserved_bytes=int(r[rk]),
        peak_reserved_time_us=float(reserved["time_us"].iloc[rk]),
        start_us=float(t_us[0]) if n else 0.0,
        end_us=float(t_us[-1]) if n else 0.0,
        oom_events=oom,
    )


def _reserved_timeline(snap: Snapshot, device: int, action: np.ndarray, size: np.ndarray, t_us: np.ndarray) -> pd.DataFrame:
    """Reserved bytes: segments alive at the end, walked back through segment events."""
    seg = snap.segments
    end_reserved = int(seg.loc[seg["device"].to_numpy() == device, "total_size"].sum())
    plus = (action == A_SEG_ALLOC) | (action == A_SEG_MAP)
    minus = (action == A_SEG_FREE) | (action == A_SEG_UNMAP)
    idx = np.flatnonzero(plus | minus)
    delta = np.where(plus[idx], size[idx], -size[idx]).astype(np.int64)
    start = end_reserved - int(delta.sum())
    if snap.info.get("legacy_segment_list") or start < 0:
        # No trace of segments (legacy form) or an inconsistent one: start from what the events imply.
        start = max(start, 0)
    res = start + np.cumsum(delta)
    n = len(action)
    return pd.DataFrame(
        {
            "idx": np.concatenate([[-1], idx]).astype(np.int64),
            "time_us": np.concatenate([[t_us[0] if n else 0.0], t_us[idx]]),
            "delta": np.concatenate([[start], delta]).astype(np.int64),
            "reserved": np.concatenate([[start], res]).astype(np.int64),
        }
    )
