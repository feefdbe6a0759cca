"""``memprof export``: the plain pickle pytorch.org/memory_viz opens, checked with torch's own _memory_viz."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from memprof.cli import main
from memprof.snapshot.read import read_raw
from memprof.snapshot.safe_pickle import safe_load

memory_viz = pytest.importorskip("torch.cuda._memory_viz")  # torch is a test dependency (CPU build in CI)

from corpus import CORPUS  # noqa: E402  (../shared/corpus or $MEMPROF_CORPUS)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "tests" / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz",  # memprof's own recording
    CORPUS / "Yiyi-philosophy__LLM-inference__1.3b_snapshot@41810ba.pickle.gz",  # torch 2.0 legacy history blocks
    CORPUS / "MercuryB1__SQAttn__cuda_memory_snapshot.pickle.gz",  # 4 devices
    CORPUS / "nishi951__triton-unfold__memory.pickle.gz",  # empty trace
]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name[:50])
def test_export_is_a_plain_pickle_memory_viz_reads(src: Path, tmp_path: Path, capsys):
    out = tmp_path / "viz.pickle"
    assert main(["export", str(src), "-o", str(out)]) == 0
    assert "pytorch.org/memory_viz" in capsys.readouterr().out
    blob = out.read_bytes()
    assert blob[:2] == b"\x80\x04"  # protocol 4, uncompressed: what torch's _dump_snapshot writes
    with open(out, "rb") as f:
        data = safe_load(f)
    raw, _ = read_raw(src)
    assert data == raw  # nothing lost, nothing added
    # torch's own functions over the exported dict
    assert "segment" in memory_viz.segsum(data).lower() or not data["segments"]
    text = memory_viz.trace(data)
    assert isinstance(text, str)
    html = memory_viz.trace_plot(data)
    assert "snapshot.pickle" in html and "MemoryViz.js" in html
    assert isinstance(memory_viz.segment_plot(data), str)


def test_export_default_name_and_other_formats(tmp_path: Path, capsys):
    raw = {"segments": [], "device_traces": [[{"action": "alloc", "addr": 1, "size": 8, "stream": 0, "time_us": 1}]]}
    src = tmp_path / "run.json"
    src.write_text(json.dumps(raw))
    assert main(["export", str(src)]) == 0
    out = tmp_path / "run.memory_viz.pickle"
    with open(out, "rb") as f:
        assert safe_load(f) == raw
    segs = [{"device": 0, "address": 0, "total_size": 512, "stream": 0, "blocks": [{"size": 512, "state": "inactive"}]}]
    src2 = tmp_path / "segs.pickle.gz"
    src2.write_bytes(gzip.compress(pickle.dumps(segs)))
    assert main(["export", str(src2), "-o", str(tmp_path / "s.pickle")]) == 0
    with open(tmp_path / "s.pickle", "rb") as f:
        d = safe_load(f)
    assert d == {"segments": segs, "device_traces": []}
    memory_viz.segsum(d)


def test_export_refuses_non_snapshots_in_one_line(tmp_path: Path, capsys):
    src = tmp_path / "x.pickle"
    src.write_bytes(pickle.dumps({"model": 1}))
    assert main(["export", str(src), "-o", str(tmp_path / "o.pickle")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("memprof: ") and err.count("\n") == 1
    assert main(["export", str(src), "-o", str(src)]) != 0
