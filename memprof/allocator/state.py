"""The caching allocator's segments and their blocks just after any trace event (PyTorch's
memory_viz "Allocator State History", as columns).

Truth and how it is rebuilt:

* Segments: the snapshot's ``segments`` are those alive when it was taken (the end). Walking the
  trace back undoes ``segment_alloc``/``segment_map`` (the segment did not exist before it) and
  ``segment_free``/``segment_unmap`` (it did). A segment freed in the window without a recorded
  ``segment_alloc`` existed from the start. The CUDA caching allocator's segment events carry the
  segment's base address and size (``CUDACachingAllocator.cpp``, ``TraceEntry::SEGMENT_ALLOC``).
* Blocks: the allocations :meth:`memprof.replay.timeline.Replay.alive_at` finds alive after the event,
  each placed in the segment whose ``[address, address + size)`` holds its address (blocks of a
  segment the trace never names sit in a pseudo-segment ``-1``).
* Awaiting free: a block whose ``free_requested`` came at or before the event but whose
  ``free_completed`` (the other stream's work done) had not yet: it still holds memory.
* Free bytes of a segment: its size minus its live blocks' sizes (cached, reusable by the same
  stream and pool; the gaps between blocks are listed as free ranges).
* Rounding waste: bytes a block holds beyond its request. The trace records only the request; the
  snapshot's blocks record both, so the waste is exact for blocks still alive when it was taken and
  counted as 0 (unknown) for the others: a lower bound.

Only snapshot columns and the replay are read; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memprof.snapshot.tables import A_FREE_REQ, A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP, ACTIONS, Snapshot
from memprof.replay.timeline import Replay


@dataclass
class AllocatorState:
    """The state after event ``idx`` (-1: before the first).

    ``segments`` — seg (0..), addr, size, stream, pool ('' when unknown), allocated (bytes of live
        blocks), awaiting_free (bytes of blocks whose free is pending on another stream),
        rounding_waste (known bytes beyond the requests, a lower bound), free
        (size - allocated - rounding_waste), n_blocks, largest_free (largest gap between blocks).
    ``blocks`` — seg (-1: no known segment), addr, offset (from the segment's start), size, row
        (index into the replay's allocations), awaiting_free (bool), stack_id, waste (known bytes beyond the request).
    ``free_ranges`` — seg, offset, size: the gaps of each segment not covered by a live block.
    """

    idx: int
    segments: pd.DataFrame
    blocks: pd.DataFrame
    free_ranges: pd.DataFrame


def segment_lifetimes(snap: Snapshot, device: int) -> pd.DataFrame:
    """Every segment the window saw: addr, size, stream, pool, born (event index of its
    segment_alloc/map, -1: before the window), dies (index of its segment_free/unmap, -1: alive at the end)."""
    ev = snap.device_events(device)
    act = ev["action"].to_numpy()
    addr, size = ev["addr"].to_numpy(), ev["size"].to_numpy()
    stream, idx = ev["stream"].to_numpy(), ev["idx"].to_numpy()
    seg = snap.segments[snap.segments["device"].to_numpy() == device]
    live: dict[int, list] = {}  # addr -> [size, stream, pool, born] of a segment alive at that point (walking forward)
    out: list[tuple] = []
    for i in np.flatnonzero(np.isin(act, (A_SEG_ALLOC, A_SEG_MAP, A_SEG_FREE, A_SEG_UNMAP))):
        a = int(addr[i])
        if act[i] in (A_SEG_ALLOC, A_SEG_MAP):
            if a in live:  # a second alloc of the same address: the first is gone (never freed in the trace)
                s, st, pool, born = live.pop(a)
                out.append((a, s, st, pool, born, int(idx[i])))
            live[a] = [int(size[i]), int(stream[i]), "", int(idx[i])]
        else:
            if a in live:
                s, st, pool, born = live.pop(a)
            else:
                s, st, pool, born = int(size[i]), int(stream[i]), "", -1
            out.append((a, s, st, pool, born, int(idx[i])))
    end_pool = dict(zip(seg["address"].astype(np.int64), seg["pool_id"].astype(str) if "pool_id" in seg else [""] * len(seg)))
    for a, s, st in zip(seg["address"].to_numpy(np.int64), seg["total_size"].to_numpy(np.int64), seg["stream"].to_numpy(np.int64)):
        a = int(a)
        if a in live:
            _, _, _, born = live.pop(a)
        else:
            born = -1
        out.append((a, int(s), int(st), end_pool.get(a, ""), born, -1))
    for a, (s, st, pool, born) in live.items():  # allocated in the window, not among the end's segments
        out.append((a, s, st, pool, born, -1))
    df = pd.DataFrame(out, columns=["addr", "size", "stream", "pool", "born", "dies"])
    return df.sort_values(["addr", "born"], kind="stable", ignore_index=True)


def state_at(snap: Snapshot, rep: Replay, idx: int, lifetimes: pd.DataFrame | None = None) -> AllocatorState:
    """Segments, blocks and free ranges just after event ``idx`` of ``rep.device``'s trace."""
    lt = segment_lifetimes(snap, rep.device) if lifetimes is None else lifetimes
    born, dies = lt["born"].to_numpy(), lt["dies"].to_numpy()
    seg = lt[(born <= idx) & ((dies < 0) | (dies > idx))].sort_values("addr", ignore_index=True)
    seg.insert(0, "seg", np.arange(len(seg)))
    al = rep.alive_at(idx)
    row = al.index.to_numpy()
    baddr, bsize = al["addr"].to_numpy(np.int64), al["size"].to_numpy(np.int64)
    saddr, ssize = seg["addr"].to_numpy(np.int64), seg["size"].to_numpy(np.int64)
    k = np.searchsorted(saddr, baddr, side="right") - 1
    inside = (k >= 0) & (baddr < saddr[np.maximum(k, 0)] + ssize[np.maximum(k, 0)]) if len(saddr) else np.zeros(len(baddr), bool)
    bseg = np.where(inside, k, -1)
    pending = _awaiting_free(snap, rep, al, idx)
    blocks = pd.DataFrame({
        "seg": bseg, "addr": baddr, "offset": np.where(bseg >= 0, baddr - saddr[np.maximum(bseg, 0)] if len(saddr) else 0, 0),
        "size": bsize, "row": row, "awaiting_free": pending, "stack_id": al["stack_id"].to_numpy(),
        "waste": _known_waste(snap, rep.device, al),
    }).sort_values(["seg", "offset"], ignore_index=True)
    inb = blocks[blocks["seg"] >= 0]
    alloc = inb.groupby("seg")["size"].sum()
    wait = inb[inb["awaiting_free"]].groupby("seg")["size"].sum()
    waste = inb.groupby("seg")["waste"].sum()
    nblk = inb.groupby("seg").size()
    free_ranges = _gaps(inb, seg)
    largest = free_ranges.groupby("seg")["size"].max() if len(free_ranges) else pd.Series(dtype=np.int64)
    seg = seg.drop(columns=["born", "dies"]).assign(
        allocated=seg["seg"].map(alloc).fillna(0).astype(np.int64),
        awaiting_free=seg["seg"].map(wait).fillna(0).astype(np.int64),
        rounding_waste=seg["seg"].map(waste).fillna(0).astype(np.int64),
        n_blocks=seg["seg"].map(nblk).fillna(0).astype(np.int64),
        largest_free=seg["seg"].map(largest).fillna(0).astype(np.int64),
    )
    seg["free"] = seg["size"] - seg["allocated"] - seg["rounding_waste"]
    return AllocatorState(idx, seg[["seg", "addr", "size", "stream", "pool", "allocated", "awaiting_free", "rounding_waste", "free",
                                    "n_blocks", "largest_free"]],
                          blocks, free_ranges)


def _known_waste(snap: Snapshot, device: int, alive: pd.DataFrame) -> np.ndarray:
    """Bytes each live block holds beyond what was asked for (the allocator's rounding up and
    unsplit remainders), where known: for blocks still alive when the snapshot was taken, the
    snapshot's block ``size - requested_size``; 0 for the others (their block size is not recorded)."""
    b = snap.blocks
    b = b[(b["state"].astype(str).to_numpy() == "active_allocated") & (b["device"].to_numpy() == device)
          & (b["requested_size"].to_numpy() > 0)]
    if not len(b) or not len(alive):
        return np.zeros(len(alive), np.int64)
    w = dict(zip(b["addr"].to_numpy(np.int64), (b["size"] - b["requested_size"]).to_numpy(np.int64)))
    end = alive["alive_at_end"].to_numpy() if "alive_at_end" in alive else np.ones(len(alive), bool)
    return np.array([w.get(int(a), 0) if e else 0 for a, e in zip(alive["addr"].to_numpy(), end)], dtype=np.int64)


def _awaiting_free(snap: Snapshot, rep: Replay, alive: pd.DataFrame, idx: int) -> np.ndarray:
    """For each live block: did a ``free_requested`` of its address come after its alloc and at or before ``idx``?"""
    if not len(alive):
        return np.zeros(0, bool)
    ev = snap.device_events(rep.device)
    req = ev[(ev["action"].to_numpy() == A_FREE_REQ) & (ev["idx"].to_numpy() <= idx)]
    if not len(req):
        return np.zeros(len(alive), bool)
    m = pd.DataFrame({"k": np.arange(len(alive)), "addr": alive["addr"].to_numpy(), "a": alive["alloc_idx"].to_numpy()}).merge(
        pd.DataFrame({"addr": req["addr"].to_numpy(), "r": req["idx"].to_numpy()}), on="addr")
    hit = np.zeros(len(alive), bool)
    hit[m.loc[m["r"] > m["a"], "k"].to_numpy()] = True
    return hit


def _gaps(blocks: pd.DataFrame, seg: pd.DataFrame) -> pd.DataFrame:
    """Free ranges (seg, offset, size) of each segment between its (sorted) live blocks."""
    out = []
    by = {s: g for s, g in blocks.groupby("seg")}
    for s, size in zip(seg["seg"], seg["size"]):
        g = by.get(s)
        pos = 0
        if g is not None:
            for off, sz in zip(g["offset"].to_numpy(), g["size"].to_numpy()):
                if off > pos:
                    out.append((s, pos, int(off - pos)))
                pos = max(pos, int(off + sz))
        if pos < size:
            out.append((s, pos, int(size - pos)))
    return pd.DataFrame(out, columns=["seg", "offset", "size"])


def describe_event(snap: Snapshot, device: int, idx: int) -> str:
    """One line for trace event ``idx``: its action, size, address and innermost frame."""
    from memprof.units import fmt_bytes

    ev = snap.device_events(device)
    if idx < 0 or idx >= len(ev):
        return "before the first event"
    e = ev.iloc[idx]
    act = ACTIONS[int(e["action"])] if 0 <= int(e["action"]) < len(ACTIONS) else "?"
    site = snap.site_labels(np.array([int(e["stack_id"])]))[0] if int(e["stack_id"]) >= 0 else ""
    addr = f" at 0x{int(e['addr']):x}" if int(e["addr"]) >= 0 else ""
    return f"{act} {fmt_bytes(int(e['size']))}{addr}" + (f" · {site}" if site else "") + f" · stream {int(e['stream'])}"
