"""The C snapshot loader (memprof._fastpickle) against the pure restricted unpickler.

The extension must be built (``pip install .`` or ``python setup.py build_ext --inplace``):
these tests fail, not skip, without it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import memprof  # noqa: F401  (memprof.load the module is shadowed by the function)
from memprof.snapshot import _fastpickle
from memprof.errors import MemprofError

L = sys.modules["memprof.snapshot.load"]
from memprof.snapshot import tables as T  # noqa: E402
from memprof.snapshot import columns as Cols  # noqa: E402


def make_snapshot(
    entries: int = 2500,
    devices: int = 1,
    frames: bool = True,
    time_us: bool = True,
    oom: bool = False,
    user_metadata: bool = False,
    unknown_action: bool = False,
    empty_device: bool = False,
    traces_first: bool = False,
    shared_block_frames: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """A torch-shaped snapshot: shared frame dicts, each alloc's frames list shared by its frees."""
    rng = random.Random(seed)
    pool = [{"filename": f"/src/model/m{i % 7}.py", "line": i, "name": f"f{i}"} for i in range(40)]
    pool.append({"filename": "/usr/lib/python3.11/site-packages/torch/nn/modules/module.py", "line": 1, "name": "call"})
    stacks = [rng.sample(pool, rng.randint(2, 8)) for _ in range(25)]
    traces: list[list[dict[str, Any]]] = []
    first_alloc_frames: list[Any] = []
    for dev in range(devices):
        trace: list[dict[str, Any]] = []
        if empty_device and dev == devices - 1 and devices > 1:
            traces.append(trace)
            continue
        t = 1_700_000_000_000_000 + dev
        addr = 0x7F0000000000 + (dev << 36)
        live: list[tuple[int, int, list[Any]]] = []
        while len(trace) < entries:
            for _ in range(rng.randint(3, 12)):
                size = rng.choice([512, 4096, 1 << 20, 3 << 30]) * rng.randint(1, 3)
                e: dict[str, Any] = {"action": "alloc", "addr": addr, "size": size, "stream": rng.choice([0, 7]), "time_us": t}
                if frames:
                    fr = list(rng.choice(stacks)) if rng.random() > 0.1 else []
                    e["frames"] = fr
                    if not first_alloc_frames and fr:
                        first_alloc_frames.append(fr)
                else:
                    fr = []
                if user_metadata:
                    e["user_metadata"] = rng.choice(["", "memprof/forward/0", "memprof/backward/0", f"dev{dev}"])
                e["compile_context"] = "N/A"
                trace.append(e)
                live.append((addr, size, fr))
                addr += size
                t += rng.randint(1, 9)
            rng.shuffle(live)
            while len(live) > 5:
                a, s, fr = live.pop()
                for act in ("free_requested", "free_completed"):
                    e = {"action": act, "addr": a, "size": s, "stream": 0, "time_us": t}
                    if frames:
                        e["frames"] = fr
                    trace.append(e)
                t += 1
            if oom and rng.random() < 0.2:
                trace.append({"action": "oom", "size": 1 << 30, "device_free": rng.choice([0, 12345]), "stream": 0, "time_us": t})
            if rng.random() < 0.1:
                trace.append({"action": "segment_alloc", "addr": addr, "size": 2 << 20, "stream": 0, "time_us": t})
            if unknown_action and rng.random() < 0.1:
                trace.append({"action": rng.choice(["snapshot", "other", "weird_new_action"]), "addr": 0, "size": 0, "stream": 0, "time_us": t})
        trace = trace[:entries]
        if not time_us:
            for e in trace:
                e.pop("time_us", None)
        traces.append(trace)
    blk_frames = first_alloc_frames[0] if (shared_block_frames and first_alloc_frames) else rng.choice(stacks)
    segments = [
        {
            "device": 0,
            "address": 0x7F0000000000,
            "total_size": 20 << 20,
            "stream": 0,
            "segment_type": "large",
            "segment_pool_id": (0, 0),
            "is_expandable": False,
            "frames": rng.choice(stacks),
            "blocks": [
                {"address": 0x7F0000000000, "size": 4 << 20, "requested_size": 4 << 20, "state": "active_allocated", "frames": blk_frames},
                {"address": 0x7F0000400000, "size": 16 << 20, "state": "inactive", "frames": []},
            ],
        }
    ]
    annotations = [{"device": 0, "stage": "START", "name": "fwd", "time_us": 5}, {"device": 0, "stage": "END", "name": "fwd", "time_us": 9}]
    body = {"device_traces": traces, "allocator_settings": {"expandable_segments": False}, "external_annotations": annotations}
    if traces_first:
        return {**body, "segments": segments}
    return {"segments": segments, **body}


def write(path: Path, obj: Any, protocol: int = 4) -> Path:
    data = pickle.dumps(obj, protocol=protocol)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def assert_same(a: T.Snapshot, b: T.Snapshot) -> None:
    for name in ("events", "frames", "segments", "blocks", "annotations"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=True)
    np.testing.assert_array_equal(a.stack_offsets, b.stack_offsets)
    np.testing.assert_array_equal(a.stack_frames, b.stack_frames)
    assert {k: v for k, v in a.info.items() if not k.startswith("_")} == {k: v for k, v in b.info.items() if not k.startswith("_")}


def fast_and_pure(path: Path) -> tuple[T.Snapshot, T.Snapshot]:
    fmt = L.pickle_format(path)
    fast = Cols.load_fast(path, fmt)
    assert fast is not None, "the C loader fell back on a plain snapshot"
    pure = L.load_uncached(path, fast=False)
    return fast, pure


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_protocols_match_pure(tmp_path: Path, protocol: int) -> None:
    p = write(tmp_path / "s.pickle", make_snapshot(oom=True, user_metadata=True, unknown_action=True), protocol)
    fast, pure = fast_and_pure(p)
    assert_same(fast, pure)
    assert fast.info["has_frames"] and fast.info["has_time"]
    assert len(fast.events) == 2500
    assert (fast.events["device_free"] > 0).any()
    assert (fast.events["user_metadata"] >= 0).any() and (fast.events["user_metadata"] == -1).any()
    assert fast.info["unknown_actions"] == ["weird_new_action"]
    assert (fast.events["stack_id"] == -1).any()


@pytest.mark.parametrize(
    "kw",
    [
        {"frames": False},
        {"time_us": False},
        {"devices": 3},
        {"devices": 3, "empty_device": True},
        {"traces_first": True, "shared_block_frames": True},
        {"shared_block_frames": True},
        {"entries": 1},
        {"entries": 1000},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_variants_match_pure(tmp_path: Path, kw: dict[str, Any]) -> None:
    p = write(tmp_path / "s.pickle", make_snapshot(**kw))
    fast, pure = fast_and_pure(p)
    assert_same(fast, pure)
    if kw.get("time_us") is False:
        assert not fast.info["has_time"]
        np.testing.assert_array_equal(fast.events["time_us"].to_numpy(), fast.events["idx"].to_numpy())
    if kw.get("frames") is False:
        assert (fast.events["stack_id"] == -1).all()


def test_gz_matches_pure(tmp_path: Path) -> None:
    p = write(tmp_path / "s.pickle.gz", make_snapshot(devices=2))
    fast, pure = fast_and_pure(p)
    assert_same(fast, pure)
    assert fast.info["format"] == "pickle.gz"


def test_single_key_entry_and_big_ints(tmp_path: Path) -> None:
    # one entry with one key: APPEND + SETITEM rather than APPENDS/SETITEMS; ints beyond 32 bits
    snap = {"segments": [], "device_traces": [[{"action": "alloc"}], [{"action": "alloc", "addr": -(2**63), "size": 2**63 - 1}]]}
    p = write(tmp_path / "s.pickle", snap)
    fast, pure = fast_and_pure(p)
    assert_same(fast, pure)
    ev = fast.events
    assert ev["addr"].tolist() == [-1, -(2**63)] and ev["size"].tolist() == [0, 2**63 - 1]


def test_ints_beyond_int64_are_kept_or_clamped(tmp_path: Path) -> None:
    # issue 9: no integer field may reject a file. Unsigned 64-bit wraps as C++ holds it; wider clamps.
    entries = [{"action": "alloc", "addr": 2**64 - 16, "size": 2**64, "stream": 2**63, "time_us": -(2**70)}]
    p = write(tmp_path / "s.pickle", {"segments": [], "device_traces": [entries]})
    fast, pure = fast_and_pure(p)
    assert_same(fast, pure)
    ev = fast.events.iloc[0]
    assert (ev["addr"], ev["size"], ev["stream"], ev["time_us"]) == (-16, 2**63 - 1, -(2**63), -(2**63))


def test_repeated_entry_falls_back(tmp_path: Path) -> None:
    # the same entry dict twice: the C loader released it, so it hands over to the pure loader
    e = {"action": "alloc", "addr": 1, "size": 2, "stream": 0, "time_us": 3}
    snap = {"segments": [], "device_traces": [[e, {"action": "free_completed", "addr": 1, "size": 2, "stream": 0, "time_us": 4}, e]]}
    p = write(tmp_path / "s.pickle", snap)
    assert Cols.load_fast(p, "pickle") is None
    s = L.load(p, use_cache=False)
    assert s.events["action"].tolist() == [T.A_ALLOC, T.A_FREE_DONE, T.A_ALLOC]


def test_legacy_and_set_fall_back(tmp_path: Path) -> None:
    # a protocol-2 set is spelled with a global: the pure loader's allow-list handles it
    snap = make_snapshot(entries=10)
    snap["allocator_settings"] = {"s": {1, 2}}
    p = write(tmp_path / "s.pickle", snap, protocol=2)
    with pytest.raises(_fastpickle.Unsupported):
        with open(p, "rb") as f:
            _fastpickle.load(f, T.ACTIONS)
    s = L.load(p, use_cache=False)
    assert len(s.events) == 10 and s.info["allocator_settings"] == {"s": {1, 2}}


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_runs_nothing(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "pwned"
    snap = make_snapshot(entries=20)
    snap["device_traces"][0][3]["frames"] = [_Evil(str(target))]
    p = tmp_path / "evil.pickle"
    p.write_bytes(pickle.dumps(snap, protocol=protocol))
    with pytest.raises(MemprofError, match="refused"):
        L.load(p, use_cache=False)
    assert not target.exists()
    top = tmp_path / "evil2.pickle"
    top.write_bytes(pickle.dumps(_Evil(str(target)), protocol=protocol))
    with pytest.raises(MemprofError):
        L.load(top, use_cache=False)
    assert not target.exists()


@pytest.mark.parametrize("suffix", [".pickle", ".pickle.gz"])
def test_truncation_is_an_error(tmp_path: Path, suffix: str) -> None:
    data = pickle.dumps(make_snapshot(entries=800, devices=2, oom=True, user_metadata=True), protocol=4)
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    for k in range(50):
        p = tmp_path / f"t{k}{suffix}"
        p.write_bytes(data[: len(data) * k // 50])
        with pytest.raises(MemprofError):
            L.load(p, use_cache=False)


def test_fuzz_byte_flips_never_crash() -> None:
    rng = random.Random(1234)
    seeds = [pickle.dumps(make_snapshot(entries=60, devices=d, oom=True, user_metadata=True, seed=d), protocol=pr) for d, pr in ((1, 4), (2, 2), (2, 5))]
    outcomes = {"ok": 0, "Unsupported": 0, "Malformed": 0, "Limit": 0}
    for i in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[pos] = rng.randrange(256)
            else:
                data[pos] ^= 1 << rng.randrange(8)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            _fastpickle.load(io.BytesIO(bytes(data)), T.ACTIONS)
            outcomes["ok"] += 1
        except _fastpickle.Unsupported:
            outcomes["Unsupported"] += 1
        except _fastpickle.Malformed:
            outcomes["Malformed"] += 1
        except _fastpickle.Limit:
            outcomes["Limit"] += 1
        except MemoryError:
            pass  # a flipped length may ask for more than the machine has: an error, not a crash
    assert outcomes["Malformed"] > 100 and outcomes["ok"] > 100, outcomes


def test_fuzz_through_load_gives_memprof_error(tmp_path: Path) -> None:
    rng = random.Random(99)
    data0 = pickle.dumps(make_snapshot(entries=40, oom=True), protocol=4)
    p = tmp_path / "f.pickle"
    for _ in range(300):
        data = bytearray(data0)
        pos = rng.randrange(len(data))
        data[pos] = rng.randrange(256)
        p.write_bytes(bytes(data))
        try:
            L.load(p, use_cache=False)
        except MemprofError:
            pass
