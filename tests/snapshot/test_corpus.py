"""Every real snapshot in ../shared/corpus loads, replays and explains, and tells the truth.

The corpus (35 files from 11 public repositories, torch 2.0 to 2.11; provenance in its README)
lives beside the repository: ``<repo>/../shared/corpus``, or wherever ``MEMPROF_CORPUS`` says.
CI runs on a clean clone with ``shared/`` beside it; a missing corpus FAILS (never skips).

Each file's facts are checked against things memprof did not compute: the README's table
(entries per device), the raw dict read independently (segments, blocks, torch's own
per-segment ``allocated_size``/``total_size``), and a straightforward plain-Python replay of
the trace written below (:func:`plain_replay`).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from memprof.cli import main
from memprof.snapshot.load import load
from memprof.replay.timeline import replay
from memprof.snapshot.safe_pickle import safe_load

from corpus import CORPUS, FILES, live_blocks, plain_replay, raw_of, readme_entries, rounded, segments_of, traces_of  # noqa: F401


def test_corpus_is_present():
    # A missing corpus must fail CI loudly: these tests are the proof that real files work.
    assert CORPUS.is_dir(), f"the snapshot corpus is missing: {CORPUS} (set MEMPROF_CORPUS or put shared/ beside the repo)"
    listed = readme_entries()
    assert len(FILES) == len(listed) >= 35
    assert {p.name for p in FILES} == set(listed)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:70])
def test_loads_and_replays_with_the_plain_replays_peaks(path: Path):
    raw = raw_of(path)
    snap = load(path)
    traces = traces_of(raw)
    # entries: the README's table, the raw dict and memprof agree
    assert snap.info["entries_per_device"] == [len(t) for t in traces] == readme_entries()[path.name]
    seg_devices = {s.get("device", 0) for s in segments_of(raw)}
    assert snap.n_devices == max([len(traces)] + [d + 1 for d in seg_devices])
    # the default device: most entries, ties broken by the bytes allocated in its segments
    alloc_by_dev = {d: sum(b["size"] for s in segments_of(raw) if s.get("device", 0) == d
                          for b in s["blocks"] if b["state"] == "active_allocated") for d in range(snap.n_devices)}
    counts = [len(t) for t in traces] + [0] * snap.n_devices
    best = max((counts[d], alloc_by_dev[d]) for d in range(snap.n_devices))
    assert (counts[snap.default_device()], alloc_by_dev[snap.default_device()]) == best
    # every device: the held and torch-counted peaks of the plain replay
    for dev in range(snap.n_devices):
        rep = replay(snap, dev)
        held, counted = plain_replay(raw, dev)
        assert (rep.peak_bytes, rep.peak_torch_bytes) == (held, counted), f"device {dev}"
        assert rep.n_events == (len(traces[dev]) if dev < len(traces) else 0)
    # snapshot markers are kept as entries, never mistaken for allocations
    n_markers = sum(e["action"] == "snapshot" for t in traces for e in t)
    assert int((snap.events["action"] == 9).sum()) == n_markers


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:70])
def test_state_totals_are_the_sums_over_segments(path: Path):
    raw = raw_of(path)
    totals = load(path).state_totals()
    for dev in {s.get("device", 0) for s in segments_of(raw)}:
        segs = [s for s in segments_of(raw) if s.get("device", 0) == dev]
        row = totals.loc[dev]
        assert row["reserved"] == sum(s["total_size"] for s in segs)
        assert row["allocated"] == sum(b["size"] for s in segs for b in s["blocks"] if b["state"] == "active_allocated")
        assert row["allocated"] == sum(s["allocated_size"] for s in segs)  # torch's own per-segment count
        assert row["active"] == sum(s["active_size"] for s in segs)
        assert row["segments"] == len(segs)
    assert set(totals.index) == {s.get("device", 0) for s in segments_of(raw)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:70])
def test_stats_and_explain_run_and_agree(path: Path, capsys):
    raw = raw_of(path)
    assert main(["stats", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    dev = d["device"]
    held, counted = plain_replay(raw, dev)
    assert (d["peak_allocated_bytes"], d["peak_torch_allocated_bytes"]) == (held, counted)
    assert d["history"] == bool(sum(len(t) for t in traces_of(raw)))
    # every device that holds memory is listed, with torch's own per-segment totals
    listed = {r["device"]: r for r in d["devices_with_memory"]}
    for dv in {s.get("device", 0) for s in segments_of(raw)}:
        assert listed[dv]["reserved"] == sum(s["total_size"] for s in segments_of(raw) if s.get("device", 0) == dv)
    assert main(["explain", str(path), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["device"] == dev and e["peak_bytes"] == held
    assert main(["explain", str(path)]) == 0
    text = capsys.readouterr().out
    assert ("PEAK" in text) == d["history"] and ("STATE AT DUMP TIME" in text) != d["history"]


EMPTY = ["Muduard__LayoutEditing__dump_snapshot@33ade60.pickle.gz", "Muduard__LayoutEditing__dump_snapshot@cd67cea.pickle.gz",
         "nishi951__triton-unfold__memory.pickle.gz"]


@pytest.mark.parametrize("name", EMPTY)
def test_empty_traces_show_the_state_at_dump_time(name: str, capsys):
    path = CORPUS / name
    raw = raw_of(path)
    snap = load(path)
    assert not snap.has_trace
    dev = snap.default_device()
    rep = replay(snap, dev)
    blocks = live_blocks(raw, dev)
    # the live blocks are the allocations, alive throughout, and the peak is their sum
    assert rep.peak_bytes == sum(b[1] for b in blocks) > 0
    assert rep.peak_torch_bytes == sum(b[3] for b in blocks if b[2] == "active_allocated")
    assert len(rep.allocations) == len(blocks)
    assert rep.peak_reserved_bytes == sum(s["total_size"] for s in segments_of(raw) if s.get("device", 0) == dev)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no allocation history was recorded" in out and "reserved" in out
    n_segs = sum(s.get("device", 0) == dev for s in segments_of(raw))
    assert f"segments         {n_segs:,} holding {len(blocks):,} live blocks" in out
    assert main(["stats", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["history"] is False
    assert d["state_allocated_bytes"] == sum(s["allocated_size"] for s in segments_of(raw) if s.get("device", 0) == dev)
    assert d["top_at_peak"][0]["size"] == max(b[1] for b in blocks)
    assert main(["explain", str(path)]) == 0
    assert "no allocation history" in capsys.readouterr().out


def test_memory_on_device_1_with_entries_tied_opens_device_1(capsys):
    # 413b2eb: one entry on each device (a `snapshot` marker on 0, a lone free_completed on 1),
    # all memory on device 1: the default must not report device 0's 0 B.
    path = CORPUS / "Muduard__LayoutEditing__dump_snapshot@413b2eb.pickle.gz"
    assert load(path).default_device() == 1
    assert main(["stats", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"] == 1 and d["peak_allocated_bytes"] > 9 * 2**30
    assert [r["device"] for r in d["devices_with_memory"]] == [0, 1]


def test_single_free_entry_counts_the_state_before_it():
    # torch 2.0 ring buffer of one entry: a lone free_completed of memory allocated before the window.
    path = CORPUS / "Yiyi-philosophy__LLM-inference__1.3b_snapshot@23d4f52.pickle.gz"
    raw = raw_of(path)
    (e,) = raw["device_traces"][0]
    assert e["action"] == "free_completed"
    rep = replay(load(path), 0)
    blocks = sum(b[1] for b in live_blocks(raw, 0))
    assert rep.peak_bytes == blocks + e["size"]  # before the free, that block was alive too
    assert rep.peak_idx == -1
    assert rep.timeline["allocated"].iloc[-1] == blocks


def test_snapshot_marker_records_torchs_active_bytes():
    # torch 2.0 writes a `snapshot` entry with the allocator's active bytes when _snapshot() runs.
    path = CORPUS / "Yiyi-philosophy__LLM-inference__oom_snapshot.pickle.gz"
    raw = raw_of(path)
    (e,) = raw["device_traces"][0]
    assert e["action"] == "snapshot"
    assert load(path).state_totals().loc[0, "active"] == e["size"]


def test_legacy_history_blocks_take_their_requested_size_from_history():
    path = CORPUS / "Yiyi-philosophy__LLM-inference__1.3b_snapshot@41810ba.pickle.gz"
    raw = raw_of(path)
    snap = load(path)
    hist = [b["history"][0] for s in raw["segments"] for b in s["blocks"] if b.get("history")]
    assert len(hist) == 791
    # frames of the legacy history are interned: the sites are the user's FlexGen lines
    at_peak = replay(snap, 0).at_peak()
    labels = snap.site_labels(at_peak["stack_id"].to_numpy()[:5], at_peak["alloc_idx"].to_numpy()[:5])
    assert all(re.match(r"\w+\.py:\d+:\w+", str(x)) for x in labels), labels


def test_four_devices_all_listed(capsys):
    path = CORPUS / "MercuryB1__SQAttn__cuda_memory_snapshot.pickle.gz"
    snap = load(path)
    assert snap.n_devices == 4 and snap.default_device() == 0
    for dev in (1, 2, 3):  # empty traces on the other devices replay to their (empty) state
        assert replay(snap, dev).n_events == 0


@pytest.mark.parametrize("a,b", [
    ("HanFa__assignment2-systems__benchmark_toy_model_small_FP32_seq_128_inference.pickle.gz",
     "HanFa__assignment2-systems__benchmark_toy_model_small_FP32_seq_512_inference.pickle.gz"),
    ("shreyansh26__MLSys-Experiments__profile_no_grad.pickle.gz", "shreyansh26__MLSys-Experiments__profile_grad.pickle.gz"),
    ("Muduard__LayoutEditing__dump_snapshot@33ade60.pickle.gz", "Muduard__LayoutEditing__dump_snapshot@cd67cea.pickle.gz"),
    ("nishi951__triton-unfold__memory.pickle.gz", "cranberrii__ftcourse__memory_snapshot.pickle.gz"),
])
def test_diff_pairs(a: str, b: str, capsys):
    assert main(["diff", str(CORPUS / a), str(CORPUS / b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    pa = plain_replay(raw_of(CORPUS / a), load(CORPUS / a).default_device())[0]
    pb = plain_replay(raw_of(CORPUS / b), load(CORPUS / b).default_device())[0]
    assert (d["peak_a_bytes"], d["peak_b_bytes"], d["peak_delta_bytes"]) == (pa, pb, pb - pa)


@pytest.mark.parametrize("name", [EMPTY[2], "Yiyi-philosophy__LLM-inference__oom_snapshot.pickle.gz"])
def test_report_on_state_only_files(name: str, tmp_path: Path):
    out = tmp_path / "r.html"
    assert main(["report", str(CORPUS / name), "-o", str(out)]) == 0
    html = out.read_text()
    assert "<html" in html.lower() and len(html) > 1000
    assert ("id='no-history'" in html) == (not load(CORPUS / name).has_trace)
