"""The caching-allocator model against hand-computed cases and torch's own counters on real H100 runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memprof.cli import main
from memprof.errors import MemprofError
from memprof.snapshot.load import load
from memprof.allocator.model import (
    MB,
    OP_ALLOC,
    OP_EMPTY_CACHE,
    OP_FREE,
    OP_FREE_DONE,
    OP_FREE_REQ,
    AllocConf,
    Requests,
    recorded_segment_events,
    requests_from_snapshot,
    round_size,
    simulate,
)

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "tests" / "data" / "gpu"


def reqs(*rows: tuple) -> Requests:
    """Rows of (op, rid, size[, stream])."""
    return Requests(
        op=np.array([r[0] for r in rows], dtype=np.int8),
        rid=np.array([r[1] for r in rows], dtype=np.int64),
        size=np.array([r[2] for r in rows], dtype=np.int64),
        stream=np.array([r[3] if len(r) > 3 else 0 for r in rows], dtype=np.int64),
        pool=np.zeros(len(rows), dtype=np.int64),
    )


# ---------------------------------------------------------------- rounding and configuration
def test_round_size_follows_the_allocator():
    c = AllocConf()
    assert round_size(1, c) == 512 and round_size(512, c) == 512 and round_size(513, c) == 1024
    assert round_size(3 * MB + 1, c) == 3 * MB + 512
    # roundup_power2_divisions:4 -- 1.2 MiB lies in [1, 2) MiB, divided at 1, 1.25, 1.5, 1.75
    c4 = AllocConf.parse("roundup_power2_divisions:4")
    assert round_size(int(1.2 * MB), c4) == int(1.25 * MB)
    assert round_size(2 * MB, c4) == 2 * MB  # a power of two stays
    assert round_size(1000, c4) == 1024  # below 512 * divisions: plain 512-rounding
    # per-interval form (AllocatorConfig::parseRoundUpPower2Divisions): the first entry also fills
    # the intervals below it; ">" fills from the last named interval on, that one included
    c2 = AllocConf.parse("roundup_power2_divisions:[64:2]")
    assert round_size(65 * MB, c2) == 96 * MB and round_size(33 * MB, c2) == 48 * MB
    assert round_size(129 * MB, c2) == 129 * MB
    c3 = AllocConf.parse("roundup_power2_divisions:[64:2,>:0]")
    assert round_size(65 * MB, c3) == 65 * MB and round_size(33 * MB, c3) == 48 * MB


@pytest.mark.parametrize("bad", ["max_split_size_mb:10", "bogus:1", "garbage_collection_threshold:1.5",
                                 "expandable_segments:yes", "max_split_size_mb", "roundup_power2_divisions:3"])
def test_bad_settings_are_one_error(bad):
    with pytest.raises(MemprofError):
        AllocConf.parse(bad)


# ---------------------------------------------------------------- hand-computed behaviour
def test_small_requests_share_a_2mib_segment_and_count_rounded_blocks():
    # GIVEN two 1000-byte tensors
    r = simulate(reqs((OP_ALLOC, 0, 1000), (OP_ALLOC, 1, 1000), (OP_FREE, 0, 0)))
    # THEN one 2 MiB small segment, and allocated_bytes counts 2 x 1024 (blocks, not requests)
    assert r.max_reserved == 2 * MB
    assert r.max_allocated == 2048 and r.allocated_end == 1024
    assert [e[0] for e in r.segment_events] == ["segment_alloc"]


def test_mid_size_requests_split_a_20mib_segment():
    r = simulate(reqs((OP_ALLOC, 0, 3 * MB), (OP_ALLOC, 1, 3 * MB)))
    assert r.max_reserved == 20 * MB and r.max_allocated == 6 * MB
    assert r.block_addr[1] == r.block_addr[0] + 3 * MB


def test_an_unsplit_block_counts_whole():
    # 12 MiB segment; freed; an 11.5 MiB request leaves 0.5 MiB (<= 1 MiB): not split
    r = simulate(reqs((OP_ALLOC, 0, 12 * MB), (OP_FREE, 0, 0), (OP_ALLOC, 1, 11 * MB + 512 * 1024)))
    assert r.max_reserved == 12 * MB
    assert r.block_size[2] == 12 * MB and r.allocated_end == 12 * MB


def test_best_fit_takes_the_smallest_block_then_the_lowest_address():
    rows = [(OP_ALLOC, i, 30 * MB) for i in range(3)] + [(OP_ALLOC, 3, 40 * MB)]
    rows += [(OP_FREE, 0, 0), (OP_FREE, 3, 0), (OP_FREE, 2, 0), (OP_ALLOC, 4, 29 * MB)]
    r = simulate(reqs(*rows))
    # 30 MiB blocks 0 and 2 are free and equal: the lower address wins; the 40 MiB one is larger
    assert r.block_addr[-1] == min(r.block_addr[0], r.block_addr[2])
    # exactly 1 MiB would remain: should_split wants more than kSmallSize, so the block goes whole
    assert r.block_size[-1] == 30 * MB


def test_max_split_size_keeps_oversize_blocks_whole_and_away_from_small_requests():
    conf = AllocConf.parse("max_split_size_mb:64")
    rows = [(OP_ALLOC, 0, 100 * MB), (OP_FREE, 0, 0), (OP_ALLOC, 1, 30 * MB), (OP_ALLOC, 2, 90 * MB)]
    r = simulate(reqs(*rows), conf)
    # the 30 MiB request may not use the 100 MiB oversize block: a new 30 MiB segment
    assert r.block_addr[2] != r.block_addr[0]
    # the 90 MiB request takes the 100 MiB block whole (within 20 MiB of it), unsplit
    assert r.block_addr[3] == r.block_addr[0] and r.block_size[3] == 100 * MB
    assert r.max_reserved == 130 * MB
    # without max_split_size the 30 MiB request splits the cached 100 MiB block
    r0 = simulate(reqs(*rows))
    assert r0.block_addr[2] == r0.block_addr[0] and r0.max_reserved == 100 * MB + 90 * MB


def test_record_stream_frees_stats_at_request_and_memory_at_completion():
    rows = [(OP_ALLOC, 0, 8 * MB), (OP_FREE_REQ, 0, 0), (OP_ALLOC, 1, 8 * MB), (OP_FREE_DONE, 0, 0),
            (OP_ALLOC, 2, 8 * MB)]
    r = simulate(reqs(*rows))
    assert r.allocated[2] == 0  # allocated_bytes drops at free_requested
    assert r.block_addr[2] == r.block_addr[0] + 8 * MB  # the block is not reusable yet
    assert r.block_addr[4] == r.block_addr[0]  # after free_completed it is (merged and reused)
    assert r.max_reserved == 20 * MB


def test_streams_have_their_own_free_blocks():
    rows = [(OP_ALLOC, 0, 4 * MB, 7), (OP_FREE, 0, 0, 7), (OP_ALLOC, 1, 4 * MB, 9)]
    r = simulate(reqs(*rows))
    assert r.max_reserved == 40 * MB and r.block_addr[2] != r.block_addr[0]


def test_expandable_segments_map_pages_and_unmap_on_empty_cache():
    conf = AllocConf.parse("expandable_segments:True")
    rows = [(OP_ALLOC, 0, 30 * MB), (OP_ALLOC, 1, 30 * MB), (OP_FREE, 1, 0), (OP_EMPTY_CACHE, -1, 0)]
    r = simulate(reqs(*rows), conf)
    # one segment grows in 20 MiB pages: 40 MiB, then 20 MiB more (60 MiB for 60 MiB of tensors)
    assert [(e[0], e[2]) for e in r.segment_events[:2]] == [("segment_map", 40 * MB), ("segment_map", 20 * MB)]
    assert r.block_addr[1] == r.block_addr[0] + 30 * MB and r.max_reserved == 60 * MB
    # empty_cache unmaps the pages that hold no live byte: [30, 60) MiB -> the page [40, 60)
    assert r.segment_events[-1][0] == "segment_unmap" and r.segment_events[-1][2] == 20 * MB
    assert r.reserved_end == 40 * MB
    # the default allocator needs two 30 MiB segments and frees one whole
    r0 = simulate(reqs(*rows))
    assert r0.max_reserved == 60 * MB and r0.reserved_end == 30 * MB


def test_garbage_collection_frees_old_cached_blocks_first():
    # GIVEN a 100 MiB memory fraction of a 1000 MiB device
    rows = [(OP_ALLOC, 0, 30 * MB), (OP_FREE, 0, 0), (OP_ALLOC, 1, 40 * MB), (OP_FREE, 1, 0), (OP_ALLOC, 2, 60 * MB)]
    gc = AllocConf.parse("garbage_collection_threshold:0.5,memory_fraction:0.1")
    r = simulate(reqs(*rows), gc, total_memory=1000 * MB)
    # THEN above 50 MiB reserved the oldest unsplit cached block (30 MiB, age 2 > mean 1.5) goes first
    assert [(e[0], e[2] // MB) for e in r.segment_events] == [
        ("segment_alloc", 30), ("segment_alloc", 40), ("segment_free", 30), ("segment_alloc", 60)]
    # without garbage collection the fraction is hit and every cached block is released
    nogc = AllocConf.parse("memory_fraction:0.1")
    r = simulate(reqs(*rows), nogc, total_memory=1000 * MB)
    assert [(e[0], e[2] // MB) for e in r.segment_events] == [
        ("segment_alloc", 30), ("segment_alloc", 40), ("segment_free", 30), ("segment_free", 40), ("segment_alloc", 60)]
    # and without a memory fraction garbage_collection_threshold does nothing (torch needs set_fraction)
    r = simulate(reqs(*rows), AllocConf.parse("garbage_collection_threshold:0.5"), total_memory=1000 * MB)
    assert r.max_reserved == 130 * MB


def test_a_full_device_with_max_split_size_releases_oversize_blocks_only():
    rows = [(OP_ALLOC, 0, 100 * MB), (OP_FREE, 0, 0), (OP_ALLOC, 1, 30 * MB), (OP_FREE, 1, 0), (OP_ALLOC, 2, 80 * MB)]
    r = simulate(reqs(*rows), AllocConf.parse("max_split_size_mb:64"), device_memory=150 * MB)
    # 80 MiB may not take the 100 MiB block (not less than 20 MiB bigger); the device is full, so
    # release_available_cached_blocks frees that oversize block -- and keeps the 30 MiB one
    assert [(e[0], e[2] // MB) for e in r.segment_events] == [
        ("segment_alloc", 100), ("segment_alloc", 30), ("segment_free", 100), ("segment_alloc", 80)]
    assert r.oom is None and r.reserved_end == 110 * MB


def test_out_of_memory_releases_the_cache_then_fails():
    rows = [(OP_ALLOC, 0, 40 * MB), (OP_FREE, 0, 0), (OP_ALLOC, 1, 50 * MB)]
    # 100 MiB device: the cached 40 MiB segment is released and the 50 MiB one fits
    r = simulate(reqs(*rows), device_memory=70 * MB)
    assert r.oom is None and [e[0] for e in r.segment_events] == ["segment_alloc", "segment_free", "segment_alloc"]
    assert r.max_reserved == 50 * MB
    r = simulate(reqs(*rows, (OP_ALLOC, 2, 30 * MB)), device_memory=70 * MB)
    assert r.oom is not None and r.oom["request_index"] == 3 and r.oom["requested_bytes"] == 30 * MB


# ---------------------------------------------------------------- torch's counters, to the byte
def _gpu_cases() -> list[Path]:
    return sorted((GPU / "alloc").glob("*.pickle.gz")) + sorted((GPU / "edge").glob("*.pickle.gz"))




@pytest.mark.parametrize("path", _gpu_cases(), ids=lambda p: f"{p.parent.name}/{p.name.split('.')[0]}")
def test_simulated_counters_equal_torch_on_h100_recordings(path):
    info = json.loads(path.with_name(path.name.replace(".pickle.gz", ".json")).read_text())
    assert info["covers_window"]
    snap = load(path, use_cache=False)
    dev = snap.default_device()
    req, conf = requests_from_snapshot(snap, dev)
    r = simulate(req, conf, exact_releases=True)
    assert r.max_allocated == info["max_memory_allocated"]
    assert r.max_reserved == info["max_memory_reserved"]
    assert [e[:3] for e in r.segment_events] == recorded_segment_events(snap, dev)
    ev = snap.device_events(dev).set_index("idx")
    m = req.op == OP_ALLOC
    assert np.array_equal(r.block_addr[m], ev.loc[req.event_idx[m], "addr"].to_numpy())
    if not path.name.startswith("wrapped"):  # a wrapped ring buffer lost the window's start
        assert r.allocated_start == info["allocated_start"] and r.reserved_start == info["reserved_start"]
    if path.name.startswith(("mempool", "graphs")):  # private pools: the MemPool's, the CUDA graphs'
        assert req.pool.max() >= 1


BUNDLED = sorted((ROOT / "snapshots" / "h100").glob("*.pickle.gz")) + sorted((GPU / "predict").glob("*.pickle.gz"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name.split(".")[0])
def test_stats_json_gives_torch_max_memory_allocated(path, capsys):
    meta = json.loads(Path(str(path).replace(".pickle.gz", ".meta.json")).read_text())
    assert main(["stats", str(path), "--json", "--no-cache"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["simulated_max_memory_allocated"] == meta["peak_allocated_bytes"]
    assert d["simulated_max_memory_reserved"] == meta["peak_reserved_bytes"]
    assert d["simulation_reproduces_trace"] is True
    # and every allocation lands where it did on the GPU
    snap = load(path)
    req, conf = requests_from_snapshot(snap, 0)
    r = simulate(req, conf, exact_releases=True)
    m = req.op == OP_ALLOC
    assert np.array_equal(r.block_addr[m], req.addr[m])
    assert [e[:3] for e in r.segment_events] == recorded_segment_events(snap, 0)


def test_golden_recordings_too():
    for name in ("transformer_train3", "transformer_cold2", "attention_naive_fwdbwd"):
        g = json.loads((ROOT / "tests" / "data" / "golden" / f"{name}.golden.json").read_text())
        snap = load(ROOT / "tests" / "data" / "golden" / f"{name}.pickle.gz", use_cache=False)
        req, conf = requests_from_snapshot(snap, 0)
        r = simulate(req, conf, exact_releases=True)
        assert (r.max_allocated, r.max_reserved) == (g["max_memory_allocated"], g["max_memory_reserved"])


# ---------------------------------------------------------------- what if
SETTINGS = {"default": "", "expandable": "expandable_segments:True", "msplit64": "max_split_size_mb:64",
            "gc06": "garbage_collection_threshold:0.6,max_split_size_mb:256"}


@pytest.mark.parametrize("batch", [8, 16, 32])
def test_whatif_from_one_setting_predicts_the_others(batch, capsys):
    for src in SETTINGS:
        path = GPU / "alloc" / f"{src}-b{batch}.pickle.gz"
        for dst, conf in SETTINGS.items():
            truth = json.loads((GPU / "alloc" / f"{dst}-b{batch}.json").read_text())
            argv = ["whatif", str(path), "--json", "--no-cache"] + (["--alloc-conf", conf] if src != dst else [])
            assert main(argv) == 0
            d = json.loads(capsys.readouterr().out)
            a, r = d["simulated_max_memory_allocated"], d["simulated_max_memory_reserved"]
            if src == dst:  # the recorded configuration: to the byte
                assert (a, r) == (truth["max_memory_allocated"], truth["max_memory_reserved"])
            else:
                assert abs(a - truth["max_memory_allocated"]) <= 0.01 * truth["max_memory_allocated"], (src, dst)
                assert abs(r - truth["max_memory_reserved"]) <= 0.01 * truth["max_memory_reserved"], (src, dst)


def test_whatif_device_memory_and_errors(capsys):
    path = str(GPU / "alloc" / "default-b16.pickle.gz")
    truth = json.loads((GPU / "alloc" / "default-b16.json").read_text())
    assert main(["whatif", path, "--json", "--device-memory", str(truth["max_memory_reserved"] // 2)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["oom"] is True and d["oom_request"]["requested_bytes"] > 0
    assert main(["whatif", path, "--json", "--device-memory", "80GB"]) == 0
    assert json.loads(capsys.readouterr().out)["oom"] is False
    assert main(["whatif", path]) == 0
    out = capsys.readouterr().out
    assert "max_memory_reserved" in out and "recorded" in out
    assert main(["whatif", path, "--alloc-conf", "nope:1"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("memprof: ") and len(err.strip().splitlines()) == 1
    assert main(["whatif", path, "--device-memory", "lots"]) != 0


@pytest.mark.parametrize("conf_text", ["", "expandable_segments:True", "max_split_size_mb:40",
                                       "roundup_power2_divisions:4,max_split_size_mb:100"])
def test_random_streams_keep_the_allocator_consistent(conf_text):
    rng = np.random.default_rng(7)
    conf = AllocConf.parse(conf_text)
    rows, live, pending, rid = [], [], [], 0
    for _ in range(1500):
        u = rng.random()
        if u < 0.5 or not live:
            size = int(rng.choice([rng.integers(1, 4096), rng.integers(1 << 20, 12 << 20), rng.integers(12 << 20, 90 << 20)]))
            rows.append((OP_ALLOC, rid, size, int(rng.integers(0, 2))))
            live.append(rid)
            rid += 1
        elif u < 0.85:
            r = live.pop(int(rng.integers(len(live))))
            rows.append((OP_FREE, r, 0))
        elif u < 0.95:
            r = live.pop(int(rng.integers(len(live))))
            rows.append((OP_FREE_REQ, r, 0))
            pending.append(r)
        elif pending:
            rows.append((OP_FREE_DONE, pending.pop(0), 0))
        if rng.random() < 0.01:
            rows.append((OP_EMPTY_CACHE, -1, 0))
    rows += [(OP_FREE, r, 0) for r in live] + [(OP_FREE_DONE, r, 0) for r in pending] + [(OP_EMPTY_CACHE, -1, 0)]
    req = reqs(*rows)
    r = simulate(req, conf)
    assert r.oom is None
    assert (r.allocated <= r.reserved).all() and (r.allocated >= 0).all()
    # every block is at least the rounded request, and live blocks never overlap
    spans: dict[int, tuple[int, int]] = {}
    waiting: set[int] = set()
    for i, (op, k, size, *_rest) in enumerate(rows):
        if op == OP_FREE_REQ:
            waiting.add(k)
        elif op == OP_EMPTY_CACHE:  # empty_cache synchronizes: blocks waiting for other streams are free
            for w in waiting:
                spans.pop(w, None)
            waiting.clear()
        if op == OP_ALLOC:
            assert r.block_size[i] >= round_size(size, conf)
            a, b = int(r.block_addr[i]), int(r.block_addr[i] + r.block_size[i])
            assert all(b <= x or a >= y for x, y in spans.values()), f"overlap at request {i}"
            spans[k] = (a, b)
        elif op in (OP_FREE, OP_FREE_DONE):
            spans.pop(k, None)
            waiting.discard(k)
    # everything freed and the cache emptied: nothing stays reserved
    assert r.allocated_end == 0 and r.reserved_end == 0


def test_stats_leaves_the_model_out_past_its_size_and_says_how_to_run_it(capsys, monkeypatch):
    """A 10M-entry trace would spend ~25 s in the allocator model: stats names whatif instead."""
    from memprof.commands import stats

    path = BUNDLED[0]
    monkeypatch.setattr(stats, "SIM_MAX_EVENTS", 10)
    assert main(["stats", str(path), "--json", "--no-cache"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["simulated_max_memory_allocated"] is None and "memprof whatif" in d["simulation_skipped"]
    assert main(["stats", str(path), "--no-cache"]) == 0
    assert "simulated peaks  not computed for" in capsys.readouterr().out
    monkeypatch.setattr(stats, "SIM_MAX_EVENTS", 10**9)
    assert main(["stats", str(path), "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["simulated_max_memory_allocated"] is not None
