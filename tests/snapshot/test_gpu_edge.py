"""Real H100 recordings of the allocator's edge cases, checked against torch's own counters.

``tests/data/gpu/edge/X.pickle.gz`` is the dict of ``torch.cuda.memory._snapshot()``; ``X.json`` beside it
holds ``torch.cuda.max_memory_allocated()`` / ``max_memory_reserved()`` for the recorded window (reset at
its start), the allocated/reserved bytes at its start and end, and for OOMs torch's own error message.
``tests/data/gpu/alloc/`` holds one training stream under four allocator settings. See tests/data/gpu/README.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memprof.analysis import analyze
from memprof.cli import main
from memprof.snapshot.tables import Snapshot
from memprof.snapshot.load import load
from memprof.replay.timeline import pool_totals, replay, trace_begins_mid_run
from corpus import plain_replay, raw_of

GPU = Path(__file__).resolve().parents[1] / "data" / "gpu"
EDGE = sorted((GPU / "edge").glob("*.pickle.gz"))
ALLOC = sorted((GPU / "alloc").glob("*.pickle.gz"))
GIB = float(1 << 30)


def counters(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(path.name.replace(".pickle.gz", ".json")).read_text())


def load_graphs_too(path: Path) -> Snapshot:
    """The loader; graphs.pickle.gz holds frame line 2^64-1 (torch.compile frames), which must load."""
    return load(path)


def test_edge_cases_are_all_here():
    names = {p.name.split(".")[0] for p in EDGE}
    assert {"empty_cache", "expandable", "graphs", "streams", "stacks_all", "wrapped", "mempool", "oom", "oom_frag"} <= names
    assert len(ALLOC) == 12


@pytest.mark.parametrize("path", EDGE, ids=lambda p: p.name.split(".")[0])
def test_edge_peaks_equal_torchs_counters(path: Path):
    c = counters(path)
    snap = load_graphs_too(path)
    rep = replay(snap, snap.default_device())
    held, counted = plain_replay(raw_of(path), rep.device)
    assert (rep.peak_bytes, rep.peak_torch_bytes) == (held, counted)
    # allocated as torch counts it IS torch.cuda.max_memory_allocated, to the byte
    assert rep.peak_torch_bytes == c["max_memory_allocated"]
    assert rep.peak_reserved_bytes == c["max_memory_reserved"]
    assert rep.timeline["torch_allocated"].iloc[-1] == c["allocated_end"] == snap.state_totals()["allocated"].sum()
    assert rep.reserved["reserved"].iloc[-1] == c["reserved_end"]
    if not trace_begins_mid_run(snap, rep)["wrapped"]:
        # the state before the first event is the allocator's state at the window's start
        assert rep.timeline["torch_allocated"].iloc[0] == c["allocated_start"]
        assert rep.reserved["reserved"].iloc[0] == c["reserved_start"]


@pytest.mark.parametrize("path", ALLOC, ids=lambda p: p.name.split(".")[0])
def test_alloc_settings_peaks(path: Path):
    c = counters(path)
    snap = load(path)
    rep = replay(snap, 0)
    held, counted = plain_replay(raw_of(path), 0)
    assert (rep.peak_bytes, rep.peak_torch_bytes) == (held, counted)
    assert rep.peak_reserved_bytes == c["max_memory_reserved"]
    # torch's blocks can hold an unsplit remainder (< 1 MiB each in the large pool, a whole 2 MiB small
    # segment's tail never): the requests rounded to 512 B are a lower bound within a few MiB
    assert 0 <= c["max_memory_allocated"] - rep.peak_torch_bytes <= 4 << 20
    if "expandable" in path.name:  # expandable segments split exactly: to the byte
        assert rep.peak_torch_bytes == c["max_memory_allocated"]


def test_two_streams_both_semantics(capsys):
    path = GPU / "edge" / "streams.pickle.gz"
    c = counters(path)
    rep = replay(load(path), 0)
    assert rep.peak_torch_bytes == c["max_memory_allocated"]
    assert rep.peak_bytes / rep.peak_torch_bytes > 1.25  # 288 MiB held vs 224 MiB counted
    assert rep.timeline["awaiting_free"].max() >= rep.peak_bytes - rep.peak_torch_bytes
    assert main(["stats", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak_torch_allocated_bytes"] == c["max_memory_allocated"] and d["max_awaiting_free_bytes"] > 0
    assert main(["explain", str(path), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert (e["peak_bytes"], e["peak_torch_bytes"]) == (rep.peak_bytes, c["max_memory_allocated"])
    assert main(["explain", str(path)]) == 0
    assert "awaiting free on another stream" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["graphs", "mempool"])
def test_private_pools(name: str):
    path = GPU / "edge" / f"{name}.pickle.gz"
    c = counters(path)
    snap = load_graphs_too(path)
    rep = replay(snap, 0)
    pools = pool_totals(snap, rep).set_index("pool")
    assert len(pools) >= 2 and snap.state_totals().loc[0, "pools"] >= 2
    assert pools["reserved"].sum() == c["reserved_end"]
    assert pools["allocated"].sum() == c["allocated_end"]
    private = pools.drop(index="(0, 0)")
    assert private["at_peak"].sum() > 0  # the peak includes memory in the private pools
    assert pools["at_peak"].sum() == rep.alive_at(rep.peak_idx)["size"].sum()
    from memprof.replay.timeline import private_pool_allocated

    priv = private_pool_allocated(rep)  # the timeline's share in private pools, as the newest viewer draws it
    assert priv[list(rep.timeline["idx"]).index(rep.peak_idx)] == private["at_peak"].sum()
    assert (priv <= rep.timeline["allocated"].to_numpy()).all()
    if name == "mempool":
        assert str(tuple(c["mempool_id"])) in pools.index
        assert pools.loc[str(tuple(c["mempool_id"])), "allocated"] > 0
        from memprof.commands.explain import explain_dict

        listed = {p["pool"]: p for p in explain_dict(analyze(snap))["pools"]}
        assert listed[str(tuple(c["mempool_id"]))]["reserved"] == pools.loc[str(tuple(c["mempool_id"])), "reserved"]


def test_wrapped_ring_inferred_from_the_trace(capsys):
    path = GPU / "edge" / "wrapped.pickle.gz"
    assert counters(path)["max_entries"] == 1000
    snap = load(path)
    w = trace_begins_mid_run(snap, replay(snap, 0))  # no metadata given
    assert w["wrapped"] and w["entries"] == 1000 and w["frees_before_window"] > 0
    assert main(["stats", str(path)]) == 0
    assert "trace wrapped    YES" in capsys.readouterr().out
    assert main(["explain", str(path)]) == 0
    assert "the trace begins mid-run" in capsys.readouterr().out


def test_cpp_stacks_site_is_the_user_or_an_operator():
    path = GPU / "edge" / "stacks_all.pickle.gz"
    snap = load(path)
    rep = replay(snap, 0)
    a = rep.allocations[rep.allocations["stack_id"] >= 0]
    labels = snap.site_labels(a["stack_id"].to_numpy())
    bad = ("unwind", "CapturedTraceback", "CachingAllocator", "gather_with_cpp", "empty_generic", "empty_cuda")
    assert not [x for x in labels if any(b in x for b in bad)]
    py = [x for x in labels if re.match(r"[\w.]+\.py:\d+:", x)]
    ops = [x for x in labels if x.startswith("at::_ops::")]
    assert py and ops  # Python stacks name the user's line; autograd-thread C++ stacks name the operator
    for sid in a["stack_id"].unique():
        frames = snap.stack(int(sid))
        if any(f.endswith(".py") for f, _, _ in frames):
            continue
        assert any(n.startswith("torch::unwind") for _, _, n in frames)  # really a C++ stack


def _gib(msg: str, pattern: str) -> float:
    m = re.search(pattern, msg)
    assert m, pattern
    v, unit = float(m.group(1)), m.group(2)
    return v * {"GiB": 1.0, "MiB": 1 / 1024, "bytes": 1 / GIB}[unit]


@pytest.mark.parametrize("name,reason", [("oom", "exhaustion"), ("oom_frag", "fragmentation")])
def test_oom_explanation_matches_torchs_message(name: str, reason: str):
    path = GPU / "edge" / f"{name}.pickle.gz"
    c = counters(path)
    msg = c["oom_message"]
    r = analyze(path).oom
    assert r["requested_bytes"] == c["oom_requested_bytes"]
    assert r["reason"] == reason
    size = r"([\d.]+) (GiB|MiB|bytes)"
    assert r["device_free_bytes"] / GIB == pytest.approx(_gib(msg, rf"of which {size} is free"), abs=0.01)
    assert r["torch_allocated_bytes"] / GIB == pytest.approx(_gib(msg, rf"memory {size} is allocated by PyTorch"), abs=0.01)
    unalloc = _gib(msg, rf"and {size} is reserved by PyTorch but unallocated")
    assert (r["reserved_bytes"] - r["torch_allocated_bytes"]) / GIB == pytest.approx(unalloc, abs=0.01)
    if reason == "fragmentation":
        assert r["largest_free_block_bytes"] < r["requested_bytes"] <= r["free_total_bytes"]
        assert r["largest_free_block_bytes"] == 768 << 20  # each 2 GiB segment holds 1.25 GiB: 0.75 GiB free
        assert "expandable_segments:True" in r["remedy"]
    else:
        assert r["free_total_bytes"] < r["requested_bytes"]


@pytest.mark.parametrize("name", ["empty_cache", "expandable"])
def test_empty_cache_mid_run_returns_reserved_memory(name: str):
    path = GPU / "edge" / f"{name}.pickle.gz"
    c = counters(path)
    rep = replay(load(path), 0)
    r = rep.reserved["reserved"].to_numpy()
    k = int(np.argmax(r))
    assert r[k] == c["max_memory_reserved"] and r[k:].min() < r[k]  # released to CUDA after the peak
    assert r[-1] == c["reserved_end"]


def test_graphs_replay_on_the_raw_dict():
    # Independent of how the loader reads frame line 2^64-1 (torch.compile frames): the graphs recording's
    # trace and segments, lines set aside, replay to torch's counters with its private pools.
    path = GPU / "edge" / "graphs.pickle.gz"
    c = counters(path)
    raw = raw_of(path)

    def drop_lines(o: Any) -> None:
        if isinstance(o, dict):
            if isinstance(o.get("line"), int) and o["line"] >= 2**63:
                o["line"] = 0
            for v in o.values():
                drop_lines(v)
        elif isinstance(o, list):
            for v in o:
                drop_lines(v)

    drop_lines(raw)
    from memprof.snapshot.columns import columns_from_raw

    snap = columns_from_raw(raw)
    rep = replay(snap, 0)
    assert (rep.peak_bytes, rep.peak_torch_bytes) == plain_replay(raw, 0)
    assert rep.peak_torch_bytes == c["max_memory_allocated"] and rep.peak_reserved_bytes == c["max_memory_reserved"]
    pools = pool_totals(snap, rep).set_index("pool")
    assert len(pools) == 3 and pools["reserved"].sum() == c["reserved_end"]
    assert pools.drop(index="(0, 0)")["at_peak"].sum() > 0.5 * rep.peak_bytes  # the graphs' pools hold most of the peak
    from memprof.replay.timeline import private_pool_allocated

    priv = private_pool_allocated(rep)
    assert priv[list(rep.timeline["idx"]).index(rep.peak_idx)] == pools.drop(index="(0, 0)")["at_peak"].sum()


@pytest.mark.parametrize("name,key", [
    ("attention-naive-s4096", "attention_naive_b8_d64_fp32_fwdbwd_seq_len"),
    ("attention-naive-s8192", "attention_naive_b8_d64_fp32_fwdbwd_seq_len"),
    ("transformer-small-fp32-b4-c2048", "transformer_small_fp32_train_c2048_batch"),
])
def test_predicted_oom_brackets_the_measured_threshold(name: str, key: str):
    # thresholds.json: the largest passing and first failing size, bisected on the same H100
    t = json.loads((GPU / "predict" / "thresholds.json").read_text())[key]
    po = analyze(GPU / "predict" / f"{name}.pickle.gz").peak.predicted_oom
    assert po["max_fitting_reserved"] <= t["largest_passing"] <= po["max_fitting"]
    assert po["max_fitting"] < 1.06 * t["first_failing"]  # the upper end overshoots by at most ~5% (S^2 model, no context)


@pytest.mark.parametrize("path", sorted((GPU / "predict").glob("*.pickle.gz")) + sorted((GPU.parents[1].parent / "snapshots" / "h100").glob("*.pickle.gz")),
                         ids=lambda p: p.name.split(".")[0])
def test_memprof_recordings_torch_count_matches_the_recorded_counter(path: Path):
    # memprof record writes torch.cuda.max_memory_allocated into the .meta.json: the torch-counted replay
    # reaches it (requests rounded to 512 B; blocks may hold an unsplit remainder: at most 0.5% here)
    from memprof.snapshot.meta import read_meta

    meta = read_meta(path)
    rep = replay(load(path), 0)
    recorded = meta["peak_allocated_bytes"]
    assert 0 <= recorded - rep.peak_torch_bytes <= 0.005 * recorded
    if meta["workload"]["kind"] == "attention":  # large tensors only: exact
        assert rep.peak_torch_bytes == recorded
