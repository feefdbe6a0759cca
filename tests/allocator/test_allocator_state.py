"""Allocator state after any event: segments and blocks, checked against the replay and a hand-built trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memprof.allocator import state as A
from memprof.snapshot.columns import columns_from_raw
from memprof.snapshot.load import load
from memprof.replay.timeline import replay

ROOT = Path(__file__).resolve().parents[2]
S1, S2 = 0x1000, 0x100000


def _e(action: str, addr: int, size: int, t: int) -> dict:
    return {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": 1000 + t, "frames": []}


def _raw() -> dict:
    trace = [
        _e("segment_alloc", S2, 8192, 0),
        _e("alloc", S2, 1024, 1),
        _e("alloc", S2 + 1024, 2048, 2),
        _e("free_requested", S2 + 1024, 2048, 3),  # its stream's work not done yet: still holds memory
        _e("alloc", S1, 512, 4),
        _e("free_completed", S2 + 1024, 2048, 5),
        _e("free_requested", S2, 1024, 6),
        _e("free_completed", S2, 1024, 7),
        _e("segment_free", S2, 8192, 8),
    ]
    seg = {"device": 0, "address": S1, "total_size": 4096, "allocated_size": 512, "active_size": 512, "requested_size": 512,
           "stream": 0, "segment_type": "small", "segment_pool_id": (0, 0),
           "blocks": [{"address": S1, "size": 512, "requested_size": 512, "state": "active_allocated", "frames": []},
                      {"address": S1 + 512, "size": 3584, "requested_size": 0, "state": "inactive", "frames": []}]}
    return {"segments": [seg], "device_traces": [trace]}


def test_hand_built_trace_segments_blocks_and_pending_frees() -> None:
    snap = columns_from_raw(_raw())
    rep = replay(snap, 0)
    lt = A.segment_lifetimes(snap, 0)
    assert sorted(zip(lt["addr"], lt["born"], lt["dies"])) == [(S1, -1, -1), (S2, 0, 8)]
    # before the first event: only the segment that outlived the window, empty
    st = A.state_at(snap, rep, -1, lt)
    assert list(st.segments["addr"]) == [S1] and len(st.blocks) == 0 and list(st.free_ranges["size"]) == [4096]
    # after the free request of the 2 KiB block: it still holds memory, marked as awaiting its free
    st = A.state_at(snap, rep, 3, lt)
    s2 = st.segments.set_index("addr").loc[S2]
    assert s2["allocated"] == 3072 and s2["awaiting_free"] == 2048 and s2["free"] == 8192 - 3072 and s2["largest_free"] == 8192 - 3072
    b = st.blocks.set_index("addr")
    assert b.loc[S2 + 1024, "awaiting_free"] and not b.loc[S2, "awaiting_free"] and b.loc[S2 + 1024, "offset"] == 1024
    assert [tuple(r) for r in st.free_ranges[st.free_ranges["seg"] == s2["seg"]][["offset", "size"]].to_numpy()] == [(3072, 5120)]
    # once completed, the block is gone; after segment_free, the segment too
    st = A.state_at(snap, rep, 5, lt)
    assert set(st.blocks["addr"]) == {S2, S1}
    st = A.state_at(snap, rep, 8, lt)
    assert list(st.segments["addr"]) == [S1] and list(st.blocks["addr"]) == [S1] and st.segments["free"].iloc[0] == 4096 - 512
    assert "segment_free" in A.describe_event(snap, 0, 8) and "0x100000" in A.describe_event(snap, 0, 8)
    assert st.segments["rounding_waste"].iloc[0] == 0  # the snapshot's block asked for all of its 512 bytes


def test_rounding_waste_known_for_blocks_alive_at_the_end() -> None:
    raw = _raw()
    seg = raw["segments"][0]
    seg["blocks"][0]["requested_size"] = 500  # 512-byte block for a 500-byte request: 12 bytes of rounding
    raw["device_traces"][0][4]["size"] = 500  # the trace records the request
    snap = columns_from_raw(raw)
    rep = replay(snap, 0)
    st = A.state_at(snap, rep, 8)
    assert st.segments.set_index("addr").loc[S1, "rounding_waste"] == 12
    assert A.state_at(snap, rep, 3).segments.set_index("addr").loc[S2, "rounding_waste"] == 0  # freed blocks: unknown, 0


@pytest.mark.parametrize("name", ["transformer-small-train-eager-bf16", "attention-naive-s28672-d64-b8-oom", "script-train_tiny"])
def test_state_agrees_with_the_replay_at_every_sampled_event(name: str) -> None:
    snap = load(ROOT / "snapshots" / "h100" / f"{name}.pickle.gz")
    rep = replay(snap, snap.default_device())
    lt = A.segment_lifetimes(snap, rep.device)
    tl, rs = rep.timeline, rep.reserved
    for idx in sorted({-1, 0, rep.peak_idx, rep.n_events // 3, rep.n_events - 1}):
        st = A.state_at(snap, rep, idx, lt)
        # reserved = the segments alive; allocated = the blocks alive (the replay's own running totals)
        res = int(rs["reserved"].to_numpy()[np.searchsorted(rs["idx"].to_numpy(), idx, side="right") - 1])
        alloc = int(tl["allocated"].to_numpy()[np.searchsorted(tl["idx"].to_numpy(), idx, side="right") - 1])
        assert int(st.segments["size"].sum()) == res, idx
        assert int(st.blocks["size"].sum()) == alloc, idx
        # every block inside its segment; blocks + free ranges tile each segment exactly
        assert (st.blocks["seg"] >= 0).all()
        seg = st.segments.set_index("seg")
        assert (st.blocks["offset"] + st.blocks["size"] <= st.blocks["seg"].map(seg["size"])).all()
        covered = st.blocks.groupby("seg")["size"].sum().add(st.free_ranges.groupby("seg")["size"].sum(), fill_value=0)
        assert (covered.reindex(seg.index, fill_value=0) == seg["size"]).all()
