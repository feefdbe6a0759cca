"""Every analysis step scales linearly (or n log n) with the number of trace entries.

Times load, replay and each analysis table on two synthetic snapshots from
benchmarks/make_big_snapshot.py, 4x apart in size, and checks the fitted exponent
log(t_big / t_small) / log(4). A super-linear step (``np.union1d`` on millions of sorted values
was one: exponent ~1.4) fails it. Minimum of repeats, since the machine is noisy.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import time
from pathlib import Path

import pytest

from memprof.analysis import analyze
from memprof.present.figures import timeline_traces
from memprof.snapshot.load import load
from memprof.present.views import build_model

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("replay", "phases", "allocations", "iterations", "verdict", "peak", "fragmentation")


def _generator():
    spec = importlib.util.spec_from_file_location("make_big_snapshot", ROOT / "benchmarks" / "make_big_snapshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _times(path: Path, repeats: int = 3) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        snap = load(path, use_cache=False)
        t = {"load": time.perf_counter() - t0}
        t0 = time.perf_counter()
        an = analyze(snap)
        t["replay"] = time.perf_counter() - t0
        for name in STEPS[1:]:
            t0 = time.perf_counter()
            getattr(an, name)
            t[name] = time.perf_counter() - t0
        # the dashboard's first paint: the timeline model, then the figure (bands' index included)
        t0 = time.perf_counter()
        model = build_model(an.snap, an.rep, an.meta, analysis=an)
        t["timeline model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        timeline_traces(model)
        t["timeline figure"] = time.perf_counter() - t0
        for k, v in t.items():
            best[k] = min(best.get(k, math.inf), v)
    return best


def test_generator_streams_a_realistic_trace(tmp_path: Path) -> None:
    # GIVEN a file written by the streaming generator
    gen = _generator()
    p = tmp_path / "s.pickle"
    with open(p, "wb") as f:
        gen.write(f, 20_000, seed=1)
    # WHEN read by a plain unpickler (our own bytes) and by memprof
    d = pickle.loads(p.read_bytes())  # noqa: S301 - written by the test itself
    tr = d["device_traces"][0]
    an = analyze(load(p, use_cache=False))
    # THEN it is torch's shape: 20k entries, frees share their allocation's stack list,
    # segments are freed again, and reserved memory follows the working set
    assert len(tr) == 20_000
    actions = {e["action"] for e in tr}
    assert {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free"} <= actions
    by_addr = {}
    shared = 0
    for e in tr:
        if e["action"] == "alloc":
            by_addr[e["addr"]] = e["frames"]
        elif e["action"] == "free_completed":
            shared += by_addr.pop(e["addr"]) is e["frames"]
    assert shared > 1000
    seg = sum(e["size"] if e["action"] == "segment_alloc" else -e["size"] for e in tr if e["action"].startswith("segment"))
    assert seg > 0
    assert an.rep.peak_reserved_bytes < 3 * an.rep.peak_bytes


@pytest.mark.parametrize("small,factor", [(60_000, 4)])
def test_analysis_steps_are_not_super_linear(tmp_path: Path, small: int, factor: int) -> None:
    gen = _generator()
    paths = []
    for n in (small, small * factor):
        p = tmp_path / f"s{n}.pickle"
        with open(p, "wb") as f:
            gen.write(f, n)
        paths.append(p)
    t_small, t_big = _times(paths[0]), _times(paths[1])
    slow = {}
    for k in t_big:
        if t_big[k] < 0.05:  # too short to time on a noisy machine
            continue
        exp = math.log(t_big[k] / max(t_small[k], 1e-6)) / math.log(factor)
        if exp > 1.3:
            slow[k] = (round(t_small[k], 3), round(t_big[k], 3), round(exp, 2))
    assert not slow, f"super-linear steps (t_small s, t_big s, exponent): {slow}"
