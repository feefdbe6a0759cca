"""The Explain page's what-if panel, its callback called directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("dash")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lib():
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    create_app(ROOT / "tests" / "data" / "gpu")
    return library()


def _walk(c):
    yield c
    kids = getattr(c, "children", None)
    if isinstance(kids, (list, tuple)):
        for k in kids:
            yield from _walk(k)
    elif kids is not None and hasattr(kids, "children"):
        yield from _walk(kids)


def test_panel_on_the_explain_page(lib):
    from memprof.dashboard.pages import explain

    sid = lib.get("predict/attention-naive-s4096.pickle.gz").id
    ids = {getattr(c, "id", None) for c in _walk(explain.layout(snap=str(sid)))}
    assert {"whatif-panel", "whatif-alloc-conf", "whatif-device-memory", "whatif-batch", "whatif-seq", "whatif-run"} <= ids


def test_recorded_settings_replay_to_torch_counters(lib):
    from memprof.dashboard import whatif

    sid = lib.get("alloc/expandable-b16.pickle.gz").id
    truth = json.loads((ROOT / "tests/data/gpu/alloc/expandable-b16.json").read_text())
    r = whatif.simulate_whatif({"snap": sid, "device": None}, None, None, None, None)
    assert (r["allocated"], r["reserved"]) == (truth["max_memory_allocated"], truth["max_memory_reserved"])
    # what the default allocator would have reserved: the default-b16 recording's counter
    other = json.loads((ROOT / "tests/data/gpu/alloc/default-b16.json").read_text())
    r = whatif.simulate_whatif({"snap": sid, "device": None}, "default", None, None, None)
    assert r["reserved"] == other["max_memory_reserved"] and r["fits"]
    # a device smaller than what is allocated at once cannot fit
    r = whatif.simulate_whatif({"snap": sid, "device": None}, None, truth["max_memory_allocated"] / 2e9, None, None)
    assert r["fits"] is False


def test_builtin_workload_sizes_go_through_predict(lib):
    from memprof.dashboard import whatif

    sid = lib.get("predict/attention-naive-s4096.pickle.gz").id
    meta = json.loads((ROOT / "tests/data/gpu/predict/attention-naive-s8192.meta.json").read_text())
    r = whatif.simulate_whatif({"snap": sid, "device": None}, None, None, None, 8192)
    assert r["source"].startswith("memprof predict")
    # one step after setup: the allocated peak equals the measured s8192 run's (a steady step)
    assert r["allocated"] == meta["peak_allocated_bytes"]
    r = whatif.simulate_whatif({"snap": sid, "device": None}, None, 85.017493504, None, 32768)
    assert r["fits"] is False


def test_bad_inputs_are_one_message(lib):
    from memprof.dashboard import whatif

    sid = lib.get("predict/attention-naive-s4096.pickle.gz").id
    for args in (("nope:1", None, None, None), (None, "lots", None, None), (None, -3, None, None), (None, None, "x", None),
                 (None, None, None, 10**9)):
        out = whatif.on_run(1, {"snap": sid, "device": None}, *args)
        assert getattr(out, "className", "") == "error" and str(out.children).startswith("memprof: ")
    out = whatif.on_run(1, {"snap": "../../etc/passwd", "device": None}, None, None, None, None)
    assert getattr(out, "className", "") == "error"
