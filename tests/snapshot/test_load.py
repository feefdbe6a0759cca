"""The loader: every historical shape, safe against hostile pickles, one clear line on bad input."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import pytest

from memprof.snapshot import background
from memprof.cli import main
from memprof.errors import MemprofError
from memprof.snapshot.tables import ACTIONS
from memprof.snapshot.load import load
from memprof.replay.timeline import replay
from snapgen import FRAMES_FWD, TraceBuilder

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def write(tmp_path: Path, name: str, obj, protocol: int = 4) -> Path:
    p = tmp_path / name
    data = pickle.dumps(obj, protocol=protocol)
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return p


def small() -> dict:
    return TraceBuilder().alloc(0x1000, 100).alloc(0x2000, 300).free(0x1000, 100).snapshot()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("name", ["s.pickle", "s.pickle.gz"])
def test_pickle_protocols_and_gzip(tmp_path, protocol, name):
    snap = load(write(tmp_path, name, small(), protocol), use_cache=False)
    assert replay(snap, 0).peak_bytes == 400
    assert snap.stack(0) == [(f["filename"], f["line"], f["name"]) for f in FRAMES_FWD]


def test_json_snapshot(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(small()))
    assert replay(load(p, use_cache=False), 0).peak_bytes == 400


def test_optional_keys_missing(tmp_path):
    # GIVEN torch-2.1-like entries: no time_us, no frames, a bare 'free' action, legacy block history
    raw = {
        "segments": [{"address": 0x0, "total_size": 2048, "blocks": [
            {"size": 1024, "state": "active_allocated", "history": [{"addr": 0, "real_size": 1000, "frames": FRAMES_FWD}]},
            {"size": 1024, "state": "active_pending_free"},
        ]}],
        "device_traces": [[
            {"action": "alloc", "addr": 0x5000, "size": 10, "stream": 0},
            {"action": "free", "addr": 0x5000, "size": 10, "stream": 0},
            {"action": "oom", "size": 1 << 40, "device_free": 123, "stream": 0},
            {"action": "segment_map", "addr": 0x9000, "size": 4096, "stream": 0},
            {"action": "some_future_action", "addr": 1, "size": 1},
        ]],
    }
    snap = load(write(tmp_path, "old.pickle", raw), use_cache=False)
    assert snap.info["has_time"] is False
    assert list(snap.events["time_us"]) == [0, 1, 2, 3, 4]
    assert snap.info["unknown_actions"] == ["some_future_action"]
    assert ACTIONS[snap.events["action"].iloc[4]] == "other"
    rep = replay(snap, 0)
    # the legacy block's requested size from its history, + the block awaiting free (held until free_completed)
    assert rep.peak_bytes == 1000 + 1024 + 10
    assert rep.peak_torch_bytes == 1024 + 512  # torch counts blocks, and no longer the one awaiting free
    assert len(rep.oom_events) == 1 and rep.oom_events["device_free"].iloc[0] == 123
    assert snap.blocks["requested_size"].iloc[0] == 1000


def test_bare_list_of_segments(tmp_path):
    segs = [{"device": 0, "address": 0, "total_size": 4096, "blocks": [{"size": 4096, "requested_size": 4000, "state": "active_allocated"}]}]
    snap = load(write(tmp_path, "segs.pickle", segs), use_cache=False)
    assert replay(snap, 0).peak_bytes == 4000


def test_cache_reopens_identical_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    p = GOLDEN / "transformer_train3.pickle.gz"
    cold = load(p)
    background.flush()  # the entry is written on a worker thread
    assert any((tmp_path / "cache").iterdir())
    warm = load(p)
    assert (warm.cache_entry / "info.json").exists()
    assert warm.events.equals(cold.events)
    assert warm.frames.equals(cold.frames)
    assert replay(warm, 0).peak_bytes == replay(cold, 0).peak_bytes
    assert warm.stack(5) == cold.stack(5)


def test_cache_is_invalidated_when_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    p = write(tmp_path, "s.pickle", small())
    assert replay(load(p), 0).peak_bytes == 400
    raw = TraceBuilder().alloc(0x1, 7).snapshot()
    p.write_bytes(pickle.dumps(raw, protocol=4))
    os.utime(p, ns=(1, 1))
    assert replay(load(p), 0).peak_bytes == 7


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARKER}",))


EVIL_MARKER = "/tmp/memprof-evil-marker"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_runs_nothing(tmp_path, protocol, capsys):
    if os.path.exists(EVIL_MARKER):
        os.remove(EVIL_MARKER)
    raw = small()
    raw["segments"] = [Evil()]
    p = write(tmp_path, "evil.pickle", raw, protocol)
    # plain pickle.load WOULD run it (that is what we protect against) — prove the file is live:
    with pytest.raises(MemprofError, match="refused to load posix.system|refused to load os.system|refused"):
        load(p, use_cache=False)
    assert not os.path.exists(EVIL_MARKER)
    assert main(["stats", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memprof: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(EVIL_MARKER)


def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = pickle.dumps(small(), protocol=4)
    cases = {
        "missing": tmp_path / "nope.pickle",
        "not_a_pickle": tmp_path / "text.pickle",
        "truncated": tmp_path / "trunc.pickle",
        "truncated_gz": tmp_path / "trunc.pickle.gz",
        "not_a_snapshot": tmp_path / "other.pickle",
        "list_of_ints": tmp_path / "ints.pickle",
        "empty_trace": tmp_path / "empty.pickle",
        "empty_file": tmp_path / "zero.pickle",
        "bad_json": tmp_path / "bad.json",
        "folder": tmp_path,
    }
    cases["not_a_pickle"].write_text("hello, this is not a snapshot\n")
    cases["truncated"].write_bytes(good[: len(good) // 2])
    cases["truncated_gz"].write_bytes(gzip.compress(good)[:40])
    cases["not_a_snapshot"].write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    cases["list_of_ints"].write_bytes(pickle.dumps([1, 2, 3]))
    cases["empty_trace"].write_bytes(pickle.dumps({"segments": [], "device_traces": [[]]}))
    cases["empty_file"].write_bytes(b"")
    cases["bad_json"].write_text("{not json")
    return cases


@pytest.mark.parametrize("case", ["missing", "not_a_pickle", "truncated", "truncated_gz", "not_a_snapshot",
                                  "list_of_ints", "empty_file", "bad_json", "folder"])  # an empty trace is valid: test_corpus.py
def test_bad_input_is_one_clear_line(tmp_path, case, capsys):
    path = bad_inputs(tmp_path)[case]
    code = main(["stats", str(path), "--no-cache"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("memprof: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_device_out_of_range(capsys):
    code = main(["stats", str(GOLDEN / "attention_naive_fwdbwd.pickle.gz"), "--device", "3"])
    assert code == 2
    assert "device 3 is out of range" in capsys.readouterr().err


def test_stats_json_fields(capsys):
    golden = json.loads((GOLDEN / "attention_naive_fwdbwd.golden.json").read_text())
    assert main(["stats", str(GOLDEN / "attention_naive_fwdbwd.pickle.gz"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("entries", "devices", "duration_us", "peak_allocated_bytes", "peak_reserved_bytes", "peak_time_us", "wrapped", "top_at_peak"):
        assert key in d
    assert d["entries"] == golden["entries"][0]
    assert d["wrapped"] is False
    assert d["top_at_peak"][0]["size"] == 8 * 1024 * 1024 * 4  # the B x S x S fp32 score matrix, 32 MiB
    assert all({"size", "frame"} <= set(t) for t in d["top_at_peak"])
    assert d["peak_allocated_bytes"] <= golden["max_memory_allocated"]


def test_stats_text_names_the_peak_and_user_frame(capsys):
    assert main(["stats", str(GOLDEN / "attention_naive_fwdbwd.pickle.gz")]) == 0
    out = capsys.readouterr().out
    assert "peak allocated" in out and "202.0 MiB" in out
    assert "make_golden.py:28:naive_attention" in out


def test_wrapped_trace_is_reported(tmp_path, capsys):
    p = write(tmp_path, "w.pickle", small())
    (tmp_path / "w.meta.json").write_text(json.dumps({"record": {"max_entries": 4}}))
    assert main(["stats", str(p), "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["wrapped"] is True
