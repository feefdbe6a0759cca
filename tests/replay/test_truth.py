"""What the allocator really held: the semantics of issue 9 on hand-built snapshots with known answers.

Each test builds a raw snapshot dict in torch's own shape (GIVEN), runs memprof (WHEN) and checks
the answer worked out by hand or by a plain-Python walk over the dict (THEN).
"""

from __future__ import annotations

import gzip
import json
import lzma
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memprof.analysis import analyze
from memprof.cli import main
from memprof.snapshot.columns import columns_from_raw
from memprof.snapshot.load import load
from memprof.replay.timeline import pool_totals, replay, trace_begins_mid_run
from snapgen import TraceBuilder, two_stream_trace

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def write(tmp_path: Path, name: str, raw: Any) -> Path:
    p = tmp_path / name
    p.write_bytes(pickle.dumps(raw, protocol=4))
    return p


# --- the state before the first event ---------------------------------------------------------


def test_peak_counts_the_state_before_a_first_free():
    # GIVEN a trace that begins by freeing 1 MiB allocated before the window, then allocates 10 B
    b = TraceBuilder().free(0x9000, MIB).alloc(0x1000, 10)
    # WHEN replayed
    rep = replay(columns_from_raw(b.snapshot()), 0)
    # THEN the peak is the starting level (the 1 MiB block), before the first event
    assert rep.peak_bytes == MIB and rep.peak_idx == -1
    assert list(rep.timeline["allocated"]) == [MIB, 0, 10]
    assert set(rep.at_peak()["addr"]) == {0x9000}


# --- two streams: held vs torch-counted --------------------------------------------------------


def test_two_streams_held_and_torch_counted():
    rep = replay(columns_from_raw(two_stream_trace()), 0)
    assert rep.peak_bytes == 200
    assert rep.peak_torch_bytes == 2 * 512  # torch counts blocks: each request rounded up to 512 B
    tl = rep.timeline.set_index("idx")
    assert tl.loc[2, "allocated"] == 160 and tl.loc[2, "torch_allocated"] == 512
    assert tl.loc[3, "awaiting_free"] == 100  # the band the timeline draws
    assert (tl["allocated"] - tl["awaiting_free"]).max() == 160  # torch's semantics in requested bytes
    assert tl["awaiting_free"].iloc[-1] == 0
    x = rep.allocations.set_index("addr").loc[0x1000]
    assert (x.torch_free_idx, x.free_idx) == (2, 6)


def test_stats_names_both_measures(tmp_path, capsys):
    p = write(tmp_path, "streams.pickle", two_stream_trace())
    assert main(["stats", str(p), "--json", "--no-cache"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["peak_allocated_bytes"], d["peak_torch_allocated_bytes"], d["max_awaiting_free_bytes"]) == (200, 1024, 100)
    assert main(["stats", str(p), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "incl. blocks awaiting free on another stream" in out and "max_memory_allocated" in out and "awaiting free    up to" in out


def test_block_awaiting_free_at_dump_time_is_held_but_not_counted():
    # GIVEN a block already awaiting free when the window began (its free_requested is older than the trace)
    seg = {"device": 0, "address": 0x10000, "total_size": 4096, "stream": 0, "blocks": [
        {"address": 0x10000, "size": 2048, "requested_size": 2000, "state": "active_pending_free"},
        {"address": 0x10800, "size": 2048, "state": "inactive"}]}
    b = TraceBuilder().alloc(0x50000, 7)
    rep = replay(columns_from_raw(b.snapshot([seg])), 0)
    assert rep.peak_bytes == 2007 and rep.peak_torch_bytes == 512
    assert rep.timeline["awaiting_free"].iloc[0] == 2000


# --- private pools -----------------------------------------------------------------------------


def test_private_pool_totals():
    segs = [
        {"device": 0, "address": 0x100000, "total_size": 2 * MIB, "stream": 0, "segment_pool_id": (0, 0), "blocks": [
            {"address": 0x100000, "size": MIB, "requested_size": MIB, "state": "active_allocated"},
            {"address": 0x200000, "size": MIB, "state": "inactive"}]},
        {"device": 0, "address": 0x800000, "total_size": 2 * MIB, "stream": 0, "segment_pool_id": (1, 7), "blocks": [
            {"address": 0x800000, "size": 2 * MIB, "requested_size": 2 * MIB - 100, "state": "active_allocated"}]},
    ]
    # a capture-time allocation in the graph's private pool, freed into it (stays reserved by the pool)
    b = TraceBuilder().alloc(0x800000, 2 * MIB - 100).alloc(0x900000, 512).free(0x900000, 512)
    snap = columns_from_raw(b.snapshot(segs))
    rep = replay(snap, 0)
    assert dict(zip(rep.allocations["addr"], rep.allocations["pool"]))[0x800000] == "(1, 7)"
    pt = pool_totals(snap, rep).set_index("pool")
    assert pt.loc["(1, 7)", "reserved"] == 2 * MIB and pt.loc["(0, 0)", "reserved"] == 2 * MIB
    assert pt.loc["(1, 7)", "allocated"] == 2 * MIB and pt.loc["(0, 0)", "allocated"] == MIB
    assert pt.loc["(1, 7)", "at_peak"] == 2 * MIB - 100 + 512
    assert pt["at_peak"].sum() == rep.peak_bytes
    assert snap.state_totals().loc[0, "pools"] == 2


# --- a wrapped ring buffer, inferred from the trace ---------------------------------------------


def ring_trace(n: int, orphan: bool) -> dict[str, Any]:
    b = TraceBuilder()
    if orphan:
        b._add("free_completed", 0xF000, 4096)  # memory allocated before the first surviving entry
    while len(b.entries) < n:
        b._add("alloc", 0x1000, 8)
        if len(b.entries) < n:
            b._add("free_completed", 0x1000, 8)
    return b.snapshot()


@pytest.mark.parametrize("n,orphan,wrapped,mid", [(1000, True, True, True), (4096, True, True, True),
                                                   (250000, True, True, True), (999, True, False, True),
                                                   (1000, False, False, False)])
def test_wrapped_ring_inferred_without_metadata(n, orphan, wrapped, mid):
    snap = columns_from_raw(ring_trace(n, orphan))
    w = trace_begins_mid_run(snap, replay(snap, 0))
    assert (w["wrapped"], w["begins_mid_run"]) == (wrapped, mid)
    assert w["frees_before_window"] == int(orphan)
    if mid:
        assert w["reason"]


def test_stats_says_the_trace_begins_mid_run(tmp_path, capsys):
    p = write(tmp_path, "ring.pickle", ring_trace(1000, True))
    assert main(["stats", str(p), "--no-cache"]) == 0
    assert "trace wrapped    YES" in capsys.readouterr().out


# --- C++ stacks ----------------------------------------------------------------------------------

CPP = [
    {"filename": "??", "line": 0, "name": "torch::unwind::unwind()"},
    {"filename": "/pytorch/torch/csrc/profiler/combined_traceback.cpp", "line": 0, "name": "torch::CapturedTraceback::gather(bool, bool, bool)"},
    {"filename": "/pytorch/c10/cuda/CUDACachingAllocator.cpp", "line": 0,
     "name": "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(signed char, unsigned long, CUstream_st*)"},
    {"filename": "/pytorch/aten/src/ATen/EmptyTensor.cpp", "line": 0, "name": "at::detail::empty_generic(c10::ArrayRef<long>, ...)"},
    {"filename": "/pytorch/aten/src/ATen/native/cuda/Blas.cpp", "line": 0, "name": "at::native::addmm_out_cuda_impl(at::Tensor&, ...)"},
    {"filename": "/pytorch/build/aten/src/ATen/Operators_0.cpp", "line": 0, "name": "at::_ops::addmm::call(at::Tensor const&, ...)"},
]
PY_LIB = {"filename": "/usr/lib/python3.11/site-packages/torch/nn/modules/linear.py", "line": 125, "name": "forward"}
PY_USER = {"filename": "/home/u/model.py", "line": 42, "name": "forward"}


@pytest.mark.parametrize("frames,site", [
    (CPP + [PY_LIB, PY_USER], "model.py:42:forward"),   # the user's innermost Python frame
    (CPP + [PY_LIB], "linear.py:125:forward"),          # else the innermost Python frame
    (CPP, "at::_ops::addmm::call (Operators_0.cpp)"),     # else the innermost operator entry
    (CPP[:5], "at::native::addmm_out_cuda_impl (Blas.cpp)"),  # else the first frame that is not plumbing
])
def test_cpp_stack_site_is_never_the_unwinder_or_allocator(frames, site):
    b = TraceBuilder().alloc(0x1000, 4096, frames=frames)
    snap = columns_from_raw(b.snapshot())
    rep = replay(snap, 0)
    label = snap.site_labels(rep.allocations["stack_id"].to_numpy())[0]
    assert label == site
    assert "unwind" not in label and "CachingAllocator" not in label and "empty" not in label


# --- OOM -------------------------------------------------------------------------------------------


def oom_snapshot(device_free: int) -> dict[str, Any]:
    """12 MiB reserved in one segment: 4 MiB allocated in the middle, two free 4 MiB blocks around it.
    A request for 6 MiB fails; a 2 MiB block freed after the OOM (while unwinding) merges into a free one."""
    base = 0x7F0000000000
    b = TraceBuilder()
    b.segment(base, 12 * MIB)
    b.alloc(base + 4 * MIB, 4 * MIB)
    b.alloc(base + 8 * MIB, 2 * MIB)
    b._add("oom", 0, 6 * MIB, device_free=device_free)
    b.free(base + 8 * MIB, 2 * MIB)
    seg = {"device": 0, "address": base, "total_size": 12 * MIB, "stream": 0, "blocks": [
        {"address": base, "size": 4 * MIB, "state": "inactive"},
        {"address": base + 4 * MIB, "size": 4 * MIB, "requested_size": 4 * MIB, "state": "active_allocated"},
        {"address": base + 8 * MIB, "size": 4 * MIB, "state": "inactive"}]}
    return b.snapshot([seg])


def test_oom_fragmentation_with_the_largest_block_at_the_oom():
    r = analyze(columns_from_raw(oom_snapshot(device_free=0)), meta={"device": {"total_memory_bytes": 16 * MIB}}).oom
    assert r["requested_bytes"] == 6 * MIB
    assert (r["allocated_bytes"], r["reserved_bytes"], r["free_cached_bytes"]) == (6 * MIB, 12 * MIB, 6 * MIB)
    # the 4 MiB block at base+8 MiB was 2 MiB free + 2 MiB allocated at the OOM: only the first 4 MiB block counts
    assert r["largest_free_block_bytes"] == 4 * MIB
    assert r["reason"] == "fragmentation" and "expandable_segments:True" in r["remedy"]
    assert r["device_total_bytes"] == 16 * MIB and "of the device's 16.0 MiB" in r["explanation"]
    assert r["outside_cache_bytes"] == 4 * MIB  # capacity - reserved - free on the device


def test_oom_exhaustion():
    snap = oom_snapshot(device_free=0)
    snap["device_traces"][0][3]["size"] = 64 * MIB
    r = analyze(columns_from_raw(snap), meta={}).oom
    assert r["reason"] == "exhaustion" and "short of it" in r["explanation"]
    assert r["free_total_bytes"] == 6 * MIB


def test_oom_on_a_device_that_is_not_the_default(tmp_path, capsys):
    raw = oom_snapshot(device_free=0)
    busy = TraceBuilder()
    for k in range(20):
        busy.alloc(0x1000 + k * 512, 8)
    raw["device_traces"] = [busy.entries, raw["device_traces"][0]]
    for s in raw["segments"]:
        s["device"] = 1
    p = write(tmp_path, "two.pickle", raw)
    assert main(["stats", str(p), "--json", "--no-cache"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"] == 0 and d["oom_devices"] == [1]
    assert main(["explain", str(p), "--json", "--no-cache"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["oom"]["device"] == 1 and e["oom"]["requested_bytes"] == 6 * MIB
    assert "cuda:1" in e["oom"]["explanation"]


def test_predicted_oom_never_above_the_failing_size():
    # a real H100 OOM at seq_len 28672 (naive attention, B=8, d=64, fp32, forward+backward)
    path = ROOT / "snapshots" / "h100" / "attention-naive-s28672-d64-b8-oom.pickle.gz"
    an = analyze(path)
    assert an.meta["status"] == "oom" and an.meta["workload"]["seq_len"] == 28672
    po = an.peak.predicted_oom
    assert po["parameter"] == "seq_len" and po["max_fitting"] < 28672
    assert po["first_power_of_two_oom"] <= 32768
    # and the OOM itself: 24.5 GiB requested while 24.4 GiB sat free in the cache and 4.6 GiB on the device
    r = an.oom
    assert r["requested_bytes"] == 26306674688 and r["largest_free_block_bytes"] == 26214400000
    assert r["reason"] == "fragmentation"


# --- the format decided by the bytes; integers out of range (the loader of the harden branch) --------

SMALL = {"segments": [], "device_traces": [[{"action": "alloc", "addr": 1, "size": 400, "stream": 0, "time_us": 1}]]}


def test_pickle_saved_as_json_loads(tmp_path):
    p = tmp_path / "memory_snapshot.json"
    p.write_bytes(pickle.dumps(SMALL, protocol=4))
    assert replay(load(p, use_cache=False), 0).peak_bytes == 400


@pytest.mark.parametrize("name", ["s.pickle.xz", "s.pickle"])
def test_xz_detected_by_magic(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(lzma.compress(pickle.dumps(SMALL, protocol=4)))
    assert replay(load(p, use_cache=False), 0).peak_bytes == 400


def test_gzip_detected_by_magic(tmp_path):
    p = tmp_path / "s.pickle.gz"
    p.write_bytes(gzip.compress(pickle.dumps(SMALL, protocol=4)))
    assert replay(load(p, use_cache=False), 0).peak_bytes == 400


@pytest.mark.parametrize("fast", [True, False])
def test_frame_line_2_64_minus_1_loads(tmp_path, fast):
    from memprof.snapshot.load import load_uncached

    frames = [{"filename": "/home/u/model.py", "line": 2**64 - 1, "name": "forward"}]
    raw = {"segments": [], "device_traces": [[{"action": "alloc", "addr": 1, "size": 400, "stream": 0, "time_us": 1,
                                               "frames": frames}]]}
    p = write(tmp_path, "big.pickle", raw)
    snap = load_uncached(p, fast=fast)
    assert replay(snap, 0).peak_bytes == 400
    assert int(snap.frames["line"].iloc[0]) in (2**64 - 1, -1, 2**63 - 1)  # kept or clamped, shown honestly
    assert main(["stats", str(p), "--no-cache"]) == 0


def test_bare_list_and_empty_snapshot_are_not_refused(tmp_path, capsys):
    p = write(tmp_path, "empty.pickle", {"segments": [], "device_traces": [[]]})
    assert main(["stats", str(p), "--no-cache"]) == 0
    assert "no allocation history" in capsys.readouterr().out
    for cmd in (["explain", str(p)], ["diff", str(p), str(p)], ["report", str(p), "-o", str(tmp_path / "r.html")]):
        assert main(cmd + ["--no-cache"]) == 0, cmd
    capsys.readouterr()
    segs = [{"device": 0, "address": 0, "total_size": 4096, "blocks": [{"size": 4096, "requested_size": 4000, "state": "active_allocated"}]}]
    p2 = write(tmp_path, "segs.pickle", segs)
    assert main(["stats", str(p2), "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["peak_allocated_bytes"] == 4000
    assert np.isfinite(analyze(load(p2, use_cache=False)).rep.peak_bytes)


def test_empty_trace_names_the_largest_blocks_by_their_frames(tmp_path, capsys):
    frames = [{"filename": "/home/u/model.py", "line": 10, "name": "forward"}]
    seg = {"device": 0, "address": 0x100000, "total_size": 3 * MIB, "stream": 0, "blocks": [
        {"address": 0x100000, "size": 2 * MIB, "requested_size": 2 * MIB - 8, "state": "active_allocated", "frames": frames},
        {"address": 0x300000, "size": 512 << 10, "requested_size": 500 << 10, "state": "active_allocated"},
        {"address": 0x380000, "size": 512 << 10, "state": "inactive"}]}
    p = write(tmp_path, "state.pickle", {"segments": [seg], "device_traces": [[]]})
    assert main(["stats", str(p), "--json", "--no-cache"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["history"] is False and d["entries"] == 0
    assert [t["frame"] for t in d["top_at_peak"]] == ["model.py:10:forward", "<no stack recorded for this block>"]
    assert d["state_allocated_bytes"] == 2 * MIB + (512 << 10) and d["peak_reserved_bytes"] == 3 * MIB
    assert d["peak_allocated_bytes"] == 2 * MIB - 8 + (500 << 10)


OOM_RUNS = sorted(p for p in (ROOT / "snapshots").rglob("*.meta.json") if json.loads(p.read_text()).get("status") == "oom"
                  and p.with_name(p.name.replace(".meta.json", ".pickle.gz")).exists())


@pytest.mark.parametrize("meta_path", OOM_RUNS, ids=lambda p: p.name[:40])
def test_no_bundled_oom_run_predicts_that_its_size_fits(meta_path: Path):
    an = analyze(meta_path.with_name(meta_path.name.replace(".meta.json", ".pickle.gz")))
    failing = an.meta["workload"]["seq_len"]
    po = an.peak.predicted_oom
    assert po["max_fitting"] < failing and po["observed_failing"] == failing
    assert an.oom["requested_bytes"] > 0 and an.oom["reason"] in ("fragmentation", "exhaustion")
