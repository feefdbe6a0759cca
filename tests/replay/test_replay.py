"""Replay semantics against a direct port of PyTorch's MemoryViz.js process_alloc_data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memprof.snapshot.columns import columns_from_raw
from memprof.snapshot.load import load
from memprof.snapshot.read import read_raw
from memprof.replay.timeline import replay
from snapgen import TraceBuilder
from viewer import viewer_reference

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def held_totals(rep) -> list[int]:
    """The held-allocated total after each alloc or free (rows for torch-only changes dropped)."""
    a = rep.allocations
    held = np.union1d(a["alloc_idx"].to_numpy(), a["free_idx"].to_numpy())
    tl = rep.timeline.iloc[1:]
    return list(tl.loc[tl["idx"].isin(held), "allocated"])


def test_request_and_completion_pair_is_one_free_at_the_request():
    # GIVEN an alloc freed by an adjacent request+completion pair
    b = TraceBuilder().alloc(0x1000, 100).free(0x1000, 100)
    # WHEN replayed
    rep = replay(columns_from_raw(b.snapshot()), 0)
    # THEN the free happens at the request (index 1), and the completion (index 2) is not an event
    a = rep.allocations.iloc[0]
    assert (a.alloc_idx, a.free_idx) == (0, 1)
    assert list(rep.timeline["allocated"]) == [0, 100, 0]


def test_lone_free_requested_keeps_memory_alive_until_completion():
    b = TraceBuilder().alloc(0x1000, 100)
    b._add("free_requested", 0x1000, 100)  # e.g. record_stream: waits for another stream
    b.alloc(0x2000, 50)
    b._add("free_completed", 0x1000, 100)
    rep = replay(columns_from_raw(b.snapshot()), 0)
    assert rep.peak_bytes == 150
    first = rep.allocations.set_index("addr").loc[0x1000]
    assert first.free_idx == 3


def test_free_without_alloc_is_alive_from_the_start():
    b = TraceBuilder().alloc(0x1000, 10).free(0x9000, 500)  # 0x9000 allocated before recording
    rep = replay(columns_from_raw(b.snapshot()), 0)
    orphan = rep.allocations.set_index("addr").loc[0x9000]
    assert bool(orphan.alive_at_start) and orphan.alloc_idx == -1
    assert rep.timeline["allocated"].iloc[0] == 500
    assert rep.peak_bytes == 510


def test_active_blocks_never_allocated_in_trace_are_alive_throughout():
    seg = {"device": 0, "address": 0x10000, "total_size": 4096, "stream": 0, "blocks": [
        {"address": 0x10000, "size": 1024, "requested_size": 1000, "state": "active_allocated"},
        {"address": 0x10400, "size": 1024, "requested_size": 1024, "state": "active_allocated"},  # allocated in trace
        {"address": 0x10800, "size": 2048, "requested_size": 2048, "state": "inactive"},
    ]}
    b = TraceBuilder().alloc(0x10400, 1024).alloc(0x50000, 7).free(0x50000, 7)
    rep = replay(columns_from_raw(b.snapshot([seg])), 0)
    assert rep.peak_bytes == 1000 + 1024 + 7
    assert int((rep.allocations["source"] == 2).sum()) == 1
    assert rep.peak_reserved_bytes == 4096


def test_realloc_of_same_address_without_free_keeps_first_alive():
    b = TraceBuilder().alloc(0x1000, 100).alloc(0x1000, 30).free(0x1000, 30)
    rep = replay(columns_from_raw(b.snapshot()), 0)
    assert rep.timeline["allocated"].iloc[-1] == 100


def test_reserved_timeline_from_segment_events_and_segments_at_end():
    seg = {"device": 0, "address": 0x0, "total_size": 2 << 20, "stream": 0, "blocks": [{"size": 2 << 20, "state": "inactive"}]}
    b = TraceBuilder().segment(0x0, 2 << 20).alloc(0x0, 10)
    b._add("segment_alloc", 0x400000, 1 << 20, [])
    b._add("segment_free", 0x400000, 1 << 20, [])
    rep = replay(columns_from_raw(b.snapshot([seg])), 0)
    assert list(rep.reserved["reserved"]) == [0, 2 << 20, 3 << 20, 2 << 20]
    assert rep.peak_reserved_bytes == 3 << 20


def test_several_devices_are_replayed_separately():
    d0 = TraceBuilder().alloc(0x1, 5).entries
    d1 = TraceBuilder().alloc(0x1, 7).alloc(0x2, 9).entries
    snap = columns_from_raw({"segments": [], "device_traces": [d0, d1]})
    assert replay(snap, 0).peak_bytes == 5
    assert replay(snap, 1).peak_bytes == 16


def test_random_traces_match_the_viewer_reference():
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = TraceBuilder()
        live: dict[int, int] = {}
        for _ in range(300):
            r = rng.random()
            if r < 0.45 or not live:
                addr = int(rng.integers(1, 60)) * 4096
                size = int(rng.integers(1, 1000))
                b.alloc(addr, size)
                live[addr] = size
            elif r < 0.85:
                addr = list(live)[int(rng.integers(len(live)))]
                b.free(addr, live.pop(addr))
            elif r < 0.95:
                b._add("free_completed", int(rng.integers(1, 60)) * 4096, int(rng.integers(1, 100)))
            else:
                addr = list(live)[int(rng.integers(len(live)))]
                b._add("free_requested", addr, live[addr])
        raw = b.snapshot()
        ref_max, ref_totals = viewer_reference(raw, 0)
        rep = replay(columns_from_raw(raw), 0)
        assert rep.peak_bytes == ref_max
        assert held_totals(rep) == ref_totals


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.pickle.gz")), ids=lambda p: p.name)
def test_golden_gpu_snapshots(path: Path):
    """Real H100 recordings: replay follows the viewer exactly and lies within 1% of the allocator's peak."""
    golden = json.loads(path.with_name(path.name.replace(".pickle.gz", ".golden.json")).read_text())
    raw, _ = read_raw(path)
    ref_max, ref_totals = viewer_reference(raw, 0)
    rep = replay(load(path, use_cache=False), 0)
    assert rep.peak_bytes == ref_max
    assert held_totals(rep) == ref_totals
    allocator = golden["max_memory_allocated"]
    # the allocator counts rounded block sizes, the trace requested sizes: never above, within 1%
    assert rep.peak_bytes <= allocator
    assert (allocator - rep.peak_bytes) / allocator < 0.01
