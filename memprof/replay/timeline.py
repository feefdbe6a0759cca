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
* ``active_allocated`` (and ``active_pending_free``) blocks in the snapshot's segments that the
  trace never allocated are alive for the whole window.
* The peak is the largest total after any action *or before the first one*: a trace that begins
  by freeing memory allocated before the window peaks at its starting level (the viewer's
  ``max_size`` starts from 0 and misses it).

Two measures of "allocated", because streams make them differ:

* **held** (``allocated``, ``peak_bytes``): memory a tensor holds until the allocator can reuse
  it, including blocks awaiting free: after ``record_stream`` a freed block stays unusable until
  the other stream's work completes (``free_completed``). This is what the viewer draws.
* **torch-counted** (``torch_allocated``, ``peak_torch_bytes``): PyTorch's own counter
  (``torch.cuda.memory_allocated`` / ``max_memory_allocated``) drops at ``free_requested``.
  It counts blocks (requests rounded up to 512 B), so ``peak_torch_bytes`` is in block bytes and
  equals ``torch.cuda.max_memory_allocated`` for the window. ``awaiting_free`` (requested bytes) is
  the memory freed by torch's count but not yet reusable.

The held measure is in the trace's requested bytes, as the viewer draws it.

Private pools (CUDA graphs, ``torch.cuda.MemPool``): each allocation's pool is the
``segment_pool_id`` of the snapshot segment holding its address ('(0, 0)' — the default pool —
when no segment at dump time holds it); :func:`pool_totals` sums them per pool.

A wrapped ring buffer (``_record_memory_history(max_entries=N)`` overflowed) is inferred from
the trace itself when no metadata says N: see :func:`trace_begins_mid_run`.

Everything is vectorised: sorting by address pairs allocs with frees, and the
timeline is a cumulative sum of signed sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memprof.snapshot.tables import A_ALLOC, A_FREE, A_FREE_DONE, A_FREE_REQ, A_OOM, A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP, Snapshot

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
        alloc, 2 active block in the snapshot never allocated in the trace),
        torch_free_idx (event index where torch's own counter drops it: the ``free_requested``
        when the free waited for another stream, else free_idx; -1 alive at the end; -2 never
        counted in the window: a block already awaiting free when the window began),
        pool (the segment_pool_id of the segment holding it, '(0, 0)' when unknown),
        block_size (bytes its block occupies: the request rounded up to 512 B, or its snapshot
        block when alive at dump time).
    ``timeline`` — one row per trace event that changed allocated bytes (held or torch-counted),
        plus a first row for the state before the window: idx (-1 for that first row), time_us,
        delta, allocated (held, incl. blocks awaiting free; requested bytes), awaiting_free (requested
        bytes freed by torch's count but still held: ``allocated - awaiting_free`` is torch's semantics
        in requested bytes), torch_allocated (as ``torch.cuda.memory_allocated`` counts it: torch's
        semantics in block bytes, see block_size).
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
    peak_torch_bytes: int
    peak_torch_idx: int
    peak_torch_time_us: float
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
    def has_trace(self) -> bool:
        """False when the trace is empty: only the state at dump time is known."""
        return self.n_events > 0

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
    out: np.ndarray = np.empty(len(rest) + 1, dtype=dtype)
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
    order = rel[np.argsort(addr[rel], kind="stable")]  # stable: positions stay in order within one address
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
    bst = blk["state"].to_numpy()
    blk = blk[(blk["device"].to_numpy() == device) & ((bst == "active_allocated") | (bst == "active_pending_free"))]
    blk = blk[~np.isin(blk["addr"].to_numpy(), alive_end_addrs)]
    blk_pending = blk["state"].to_numpy() == "active_pending_free"
    seg_stream = snap.segments["stream"].to_numpy()

    n_t, n_o, n_b = len(alloc_idx), len(orphan_idx), len(blk)
    # Rows in the order of (alloc_idx, free_idx) without sorting: the snapshot's blocks (-1, -1)
    # in their order, the orphan frees (-1, free) by event index, then the trace's allocations by
    # event index (each alloc event is one row: a scatter by rank among the alloc events).
    o_orphan = np.argsort(orphan_idx, kind="stable")
    rank = np.zeros(n, dtype=np.int64)
    alloc_events = np.sort(alloc_idx) if n_t else alloc_idx
    rank[alloc_events] = np.arange(n_t)
    o_trace = np.empty(n_t, dtype=np.int64)
    o_trace[rank[alloc_idx]] = np.arange(n_t)
    del rank
    alloc_idx, free_idx, orphan_idx = alloc_events, free_idx[o_trace], orphan_idx[o_orphan]
    src_blocks = np.arange(n_b)
    b_addr = blk["addr"].to_numpy()
    raw = pd.DataFrame({"addr": np.concatenate([addr[alloc_idx], addr[orphan_idx], b_addr]),
                        "size": np.concatenate([size[alloc_idx], size[orphan_idx], blk["requested_size"].to_numpy()]),
                        "free_idx": np.concatenate([free_idx, orphan_idx, np.full(n_b, -1, dtype=np.int64)])}, copy=False)
    bsize = _block_sizes(raw, snap, device, n_t + n_o, blk["size"].to_numpy())
    perm = np.concatenate([n_t + n_o + src_blocks, n_t + np.arange(n_o), np.arange(n_t)])  # blocks, orphans, trace
    del raw, o_trace, o_orphan
    cols = {
        "addr": np.concatenate([b_addr, addr[orphan_idx], addr[alloc_idx]]),
        "size": np.concatenate([blk["requested_size"].to_numpy(), size[orphan_idx], size[alloc_idx]]).astype(np.int64, copy=False),
        "stream": np.concatenate([seg_stream[blk["segment"].to_numpy()] if n_b else np.zeros(0, np.int64),
                                  stream[orphan_idx], stream[alloc_idx]]),
        "stack_id": np.concatenate([blk["stack_id"].to_numpy(), stack[orphan_idx], stack[alloc_idx]]).astype(np.int32),
        "alloc_idx": np.concatenate([np.full(n_b + n_o, -1, dtype=np.int64), alloc_idx]).astype(np.int64, copy=False),
        "free_idx": np.concatenate([np.full(n_b, -1, dtype=np.int64), orphan_idx, free_idx]).astype(np.int64, copy=False),
        "source": np.concatenate([np.full(n_b, SOURCE_BLOCK), np.full(n_o, SOURCE_FREE_ONLY), np.full(n_t, SOURCE_TRACE)]).astype(np.int8),
    }
    del alloc_idx, free_idx, orphan_idx
    ai, fi = cols["alloc_idx"], cols["free_idx"]
    cols["alloc_us"] = np.where(ai >= 0, t_us[np.maximum(ai, 0)] if n else np.nan, np.nan)
    cols["free_us"] = np.where(fi >= 0, t_us[np.maximum(fi, 0)] if n else np.nan, np.nan)
    cols["alive_at_start"] = ai < 0
    cols["alive_at_end"] = fi < 0
    cols["block_size"] = bsize[perm]
    pending = np.concatenate([blk_pending, np.zeros(n_t + n_o, dtype=bool)])
    cols["torch_free_idx"] = _torch_free_idx(action, addr, ai, fi, cols["addr"], pending)
    cols["pool"] = pool_of(snap, device, cols["addr"])
    allocations = pd.DataFrame(cols, copy=False)
    del cols, bsize, perm, pending

    # Allocated-bytes timelines: +size at allocs, -size at frees, starting from what was alive before.
    sizes = allocations["size"].to_numpy()
    bsizes = allocations["block_size"].to_numpy()
    tfi = allocations["torch_free_idx"].to_numpy()
    waits = (tfi != fi) & ((tfi >= 0) | (tfi == -2))  # freed by torch's count before the memory came back
    initial = int(sizes[ai < 0].sum())
    initial_torch = int(bsizes[(ai < 0) & (tfi != -2)].sum())
    initial_wait = int(sizes[tfi == -2].sum())
    # Every allocation changes all measures at its alloc and its free; one that waited for another
    # stream also at its free_requested (torch's count drops, the wait starts) - few rows. Each
    # alloc and each free is its own event (no two rows share one), so the changes land by scatter.
    req = np.flatnonzero(waits & (tfi >= 0))
    a_ok, f_ok = ai >= 0, fi >= 0
    touched = np.zeros(n, dtype=bool)
    touched[ai[a_ok]] = True
    touched[fi[f_ok]] = True
    touched[tfi[req]] = True
    d_idx = np.flatnonzero(touched)
    del touched
    timeline_cols = {}
    a_at, f_at = ai[a_ok], fi[f_ok]
    ch = np.empty(n, dtype=np.int64)  # one buffer for the three measures (fresh memory costs page faults)
    for name, first, on_alloc, on_free, on_req in (
        ("allocated", initial, sizes, -sizes, np.zeros(len(req), dtype=np.int64)),
        ("awaiting_free", initial_wait, None, np.where(waits, -sizes, 0), sizes[req]),
        ("torch_allocated", initial_torch, bsizes, np.where(waits, 0, -bsizes), -bsizes[req]),
    ):
        ch.fill(0)
        if on_alloc is not None:
            ch[a_at] = on_alloc[a_ok]
        ch[f_at] += on_free[f_ok]
        np.add.at(ch, tfi[req], on_req)
        col = np.empty(len(d_idx) + 1, dtype=np.int64)
        col[0] = first
        np.cumsum(ch, out=ch)
        np.take(ch, d_idx, out=col[1:])
        col[1:] += first
        timeline_cols[name] = col
    del ch, a_at, f_at
    held = timeline_cols["allocated"]
    delta = np.empty_like(held)
    delta[0] = initial
    np.subtract(held[1:], held[:-1], out=delta[1:])
    timeline = pd.DataFrame(
        {
            "idx": _prepend(-1, d_idx, np.int64),
            "time_us": _prepend(t_us[0] if n else 0.0, t_us[d_idx], np.float64),
            "delta": delta,
            **timeline_cols,
        },
        copy=False,
    )
    del timeline_cols, delta, d_idx
    # The peak includes the state before the first event (row 0); the first maximum wins.
    held = timeline["allocated"].to_numpy()
    k = int(np.argmax(held))
    peak_bytes, peak_idx, peak_t = int(held[k]), int(timeline["idx"].iloc[k]), float(timeline["time_us"].iloc[k])
    tc = timeline["torch_allocated"].to_numpy()
    kt = int(np.argmax(tc))
    peak_torch = (int(tc[kt]), int(timeline["idx"].iloc[kt]), float(timeline["time_us"].iloc[kt]))

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
        peak_torch_bytes=peak_torch[0],
        peak_torch_idx=peak_torch[1],
        peak_torch_time_us=peak_torch[2],
        peak_reserved_bytes=int(r[rk]),
        peak_reserved_time_us=float(reserved["time_us"].iloc[rk]),
        start_us=float(t_us[0]) if n else 0.0,
        end_us=float(t_us[-1]) if n else 0.0,
        oom_events=oom,
    )


def _block_sizes(a: pd.DataFrame, snap: Snapshot, device: int, n_trace: int, snapshot_blocks: np.ndarray) -> np.ndarray:
    """Bytes each allocation's block occupies, as torch's counters count them.

    The request rounded up to 512 B (at least 512), as the caching allocator rounds it; for an
    allocation still alive at dump time, the size of its block in the snapshot (which also holds
    an unsplit remainder). ``snapshot_blocks``: sizes of the rows after ``n_trace`` (snapshot blocks).
    """
    size = a["size"].to_numpy()
    out = np.maximum(ROUND, (size + ROUND - 1) // ROUND * ROUND).astype(np.int64)
    out[n_trace:] = snapshot_blocks
    blk = snap.blocks
    st = blk["state"].to_numpy()
    blk = blk[(blk["device"].to_numpy() == device) & ((st == "active_allocated") | (st == "active_pending_free"))]
    alive = np.flatnonzero(a["free_idx"].to_numpy()[:n_trace] < 0)
    if len(blk) and len(alive):
        m = pd.Series(blk["size"].to_numpy(), index=blk["addr"].to_numpy())
        m = m[~m.index.duplicated()]
        found = m.reindex(a["addr"].to_numpy()[alive]).to_numpy()
        ok = ~np.isnan(found)
        out[alive[ok]] = found[ok].astype(np.int64)
    return out


ROUND = 512


def _torch_free_idx(action: np.ndarray, addr: np.ndarray, alloc_idx: np.ndarray, free_idx: np.ndarray,
                    a_addr: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Where torch's counter drops each allocation: at a ``free_requested`` that preceded its free.

    The first ``free_requested`` of the allocation's address after its alloc (and before its free,
    when it has one) is the moment ``torch.cuda.memory_allocated`` falls; without one, the free
    itself. A block awaiting free at dump time with no request in the trace was requested before
    the window: -2 (never counted). Vectorised with a forward as-of join by address.
    """
    out = free_idx.copy()
    # Only a request NOT directly followed by its completion differs from the free itself.
    is_req = action == A_FREE_REQ
    lone = is_req.copy()
    if len(action) > 1:
        lone[:-1] &= ~((action[1:] == A_FREE_DONE) & (addr[1:] == addr[:-1]))
    req = np.flatnonzero(lone)
    if len(req) and len(a_addr):
        left = pd.DataFrame({"start": alloc_idx, "addr": a_addr, "row": np.arange(len(a_addr))}).sort_values("start", kind="stable")
        right = pd.DataFrame({"req": req, "addr": addr[req]})
        m = pd.merge_asof(left, right, left_on="start", right_on="req", by="addr", direction="forward",
                          allow_exact_matches=False)
        r = m["req"].to_numpy()
        rows = m["row"].to_numpy()
        found = ~np.isnan(r)
        r = np.where(found, r, -1).astype(np.int64)
        fi = free_idx[rows]
        use = found & ((fi < 0) | (r < fi))
        out[rows[use]] = r[use]
        pending_rows = pending[rows] & ~use
        out[rows[pending_rows]] = -2
    else:
        out[pending] = -2
    return out


def pool_of(snap: Snapshot, device: int, addrs: np.ndarray) -> pd.Categorical:
    """The memory pool ('(0, 0)' default; a CUDA graph's or MemPool's id otherwise) holding each address.

    Pools are known for segments alive when the snapshot was taken; other addresses get '(0, 0)'.
    """
    seg = snap.segments
    seg = seg[seg["device"].to_numpy() == device].sort_values("address", kind="stable")
    names = sorted(set(seg["pool_id"].astype(str)) | {DEFAULT_POOL})
    codes = np.full(len(addrs), names.index(DEFAULT_POOL), dtype=np.int16)
    if len(seg) and len(addrs) and len(names) > 1:
        start = seg["address"].to_numpy()
        end = start + seg["total_size"].to_numpy()
        k = np.searchsorted(start, addrs, side="right") - 1
        kk = np.clip(k, 0, len(start) - 1)
        inside = (k >= 0) & (addrs < end[kk])
        seg_code = np.searchsorted(np.array(names, dtype=object), seg["pool_id"].astype(str).to_numpy().astype(object))
        codes[inside] = seg_code[kk[inside]]
    return pd.Categorical.from_codes(codes, categories=names)


DEFAULT_POOL = "(0, 0)"


def pool_totals(snap: Snapshot, rep: Replay) -> pd.DataFrame:
    """Per memory pool: what the snapshot's segments hold and what was alive at the peak.

    Columns: pool (str; '(0, 0)' is the default pool, others are CUDA graph or MemPool private
    pools), segments, reserved (bytes of its segments at dump time), allocated (bytes of its
    allocated blocks at dump time), at_peak (requested bytes alive in it at the held peak),
    allocations (number of allocations in the window attributed to it).
    """
    seg = snap.segments[snap.segments["device"].to_numpy() == rep.device]
    blk = snap.blocks[(snap.blocks["device"].to_numpy() == rep.device)]
    blk_pool = seg["pool_id"].reindex(blk["segment"].to_numpy()).to_numpy() if len(blk) else np.zeros(0, dtype=object)
    alloc_b = np.where(blk["state"].to_numpy() == "active_allocated", blk["size"].to_numpy(), 0)
    a = rep.allocations
    alive = rep.alive_at(rep.peak_idx)
    pools = sorted(set(seg["pool_id"]) | set(a["pool"]) | {DEFAULT_POOL})
    rows = []
    for p in pools:
        rows.append({
            "pool": str(p),
            "segments": int((seg["pool_id"] == p).sum()),
            "reserved": int(seg.loc[seg["pool_id"] == p, "total_size"].sum()),
            "allocated": int(alloc_b[blk_pool == p].sum()) if len(blk) else 0,
            "at_peak": int(alive.loc[alive["pool"] == p, "size"].sum()),
            "allocations": int((a["pool"] == p).sum()),
        })
    out = pd.DataFrame(rows, columns=["pool", "segments", "reserved", "allocated", "at_peak", "allocations"])
    return out[(out[["segments", "allocations"]].sum(axis=1) > 0) | (out["pool"] == DEFAULT_POOL)].reset_index(drop=True)


def private_pool_allocated(rep: Replay) -> np.ndarray:
    """Held bytes in private pools (every pool but the default '(0, 0)') at each row of ``rep.timeline``.

    All zeros when nothing lives in a private pool. The timeline's ``allocated`` includes these bytes.
    """
    a = rep.allocations
    priv = (a["pool"] != DEFAULT_POOL).to_numpy()  # categorical: compared by code, no 10M strings built
    tl_idx = rep.timeline["idx"].to_numpy()
    if not priv.any():
        return np.zeros(len(tl_idx), dtype=np.int64)
    size = a["size"].to_numpy()[priv]
    ai, fi = a["alloc_idx"].to_numpy()[priv], a["free_idx"].to_numpy()[priv]
    initial = int(size[ai < 0].sum())
    d_idx = np.concatenate([ai, fi])
    d_val = np.concatenate([size, -size])
    keep = d_idx >= 0
    d_idx, d_val = d_idx[keep], d_val[keep]
    o = np.argsort(d_idx, kind="stable")
    cum = initial + np.cumsum(d_val[o])
    k = np.searchsorted(d_idx[o], tl_idx, side="right") - 1
    return np.where(k >= 0, cum[np.maximum(k, 0)] if len(cum) else initial, initial).astype(np.int64)


def trace_begins_mid_run(snap: Snapshot, rep: Replay, max_entries: int | None = None) -> dict[str, object]:
    """Whether the recorded window starts after the work began (a wrapped ring buffer or late start).

    Evidence, from the trace alone: ``frees_before_window`` (frees of memory the trace never
    allocated), ``entries`` against ``max_entries`` when known; when unknown, a trace length that
    is a round ring size (a multiple of 1000 or a power of two, >= 1000) while the trace starts by freeing
    memory allocated before it. Keys: wrapped (bool: the ring buffer filled), begins_mid_run
    (bool), frees_before_window (int), bytes_before_window (int), entries, max_entries (int or
    None), reason (str).
    """
    n = int(rep.n_events)
    a = rep.allocations
    orphans = a[a["source"].to_numpy() == SOURCE_FREE_ONLY]
    n_orph, b_orph = int(len(orphans)), int(orphans["size"].sum())
    round_ring = n >= 1000 and (n % 1000 == 0 or _is_power(n, 2))  # max_entries is a round number
    if max_entries:
        wrapped = n >= int(max_entries)
        reason = (f"the trace holds {n:,} entries, the ring buffer's size (max_entries={int(max_entries):,}): its "
                  "earliest entries were overwritten" if wrapped else "")
    else:
        wrapped = round_ring and n_orph > 0
        reason = (f"the trace holds exactly {n:,} entries (a ring buffer's size) and frees {n_orph:,} allocation(s) "
                  "it never saw allocated: the ring buffer wrapped" if wrapped else "")
    begins = wrapped or n_orph > 0
    if begins and not reason:
        reason = (f"the trace frees {n_orph:,} allocation(s) ({b_orph:,} B) made before its first entry: history "
                  "was enabled after the work began (or its start was overwritten)")
    return {"wrapped": bool(wrapped), "begins_mid_run": bool(begins), "frees_before_window": n_orph,
            "bytes_before_window": b_orph, "entries": n, "max_entries": int(max_entries) if max_entries else None,
            "reason": reason}


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


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
