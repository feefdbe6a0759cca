"""The analysis layer on hand-built snapshots with known answers."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memprof.analysis import analyze
from memprof.analysis.peak import attention_account
from memprof.cli import main
from memprof.snapshot.columns import columns_from_raw
from memprof.snapshot.load import iter_snapshot_files
from memprof.snapshot.meta import write_meta
from snapgen import SnapGen, sawtooth

MiB = 1 << 20


def _an(gen: SnapGen, meta: dict[str, Any] | None = None):
    return analyze(columns_from_raw(gen.raw()), meta=meta or {})


# --- phases and the sawtooth -------------------------------------------------


@pytest.mark.parametrize("annotate", [True, False])
def test_three_iteration_sawtooth(annotate: bool) -> None:
    # GIVEN 3 iterations of 4 x 1 MiB allocated 10 us apart, then freed 30 us apart
    g = SnapGen()
    sawtooth(g, 3, n_up=4, size=MiB, up_dt=10, down_dt=30, annotate=annotate)
    # WHEN
    an = _an(g)
    its = an.iterations
    # THEN
    assert an.phases["source"].iloc[0] == ("annotations" if annotate else "sawtooth")
    assert len(its) == 3
    assert (its["peak_bytes"] == 4 * MiB).all()
    assert (its["trough_bytes"] == 0).all()
    assert (its["rise_us"] == 30).all()  # first alloc to the 4th
    assert (its["fall_us"] == 120).all()  # peak to the 4th free
    assert np.allclose(its["rise_fall_ratio"], 0.25)
    assert (its["rise_allocs"] == 4).all() and (its["fall_frees"] == 4).all()
    assert np.allclose(its["rise_allocs_per_ms"], 4 / 0.030)
    assert np.allclose(its["fall_bytes_per_ms"], 4 * MiB / 0.120)
    assert np.all(np.diff(its["peak_us"].to_numpy()) > 0)
    assert not an.leak["flagged"]


@pytest.mark.parametrize("annotate", [True, False])
def test_leak_is_flagged(annotate: bool) -> None:
    g = SnapGen()
    sawtooth(g, 6, n_up=4, size=MiB, up_dt=10, down_dt=10, leak=2 * MiB, annotate=annotate)
    an = _an(g)
    assert len(an.iterations) >= 5
    leak = an.leak
    assert leak["flagged"]
    assert leak["slope_bytes_per_iteration"] == pytest.approx(2 * MiB)
    assert "grows" in leak["explanation"]


def test_phases_from_user_metadata_and_meta() -> None:
    g = SnapGen()
    for i in range(2):
        with g.phase("forward", i, annotate=False, metadata=True):
            a = g.alloc(1000)
        with g.phase("backward", i, annotate=False, metadata=True):
            g.free(a)
    an = _an(g)
    ph = an.phases
    assert list(ph["source"].unique()) == ["user_metadata"]
    assert list(zip(ph["phase"], ph["iteration"])) == [("forward", 0), ("backward", 0), ("forward", 1), ("backward", 1)]
    assert list(ph["start_idx"]) == [0, 1, 3, 4] and list(ph["end_idx"]) == [0, 2, 3, 5]

    g2 = SnapGen()
    a = g2.alloc(1000)
    g2.free(a)
    t = [e["time_us"] for e in g2.trace]
    meta = {"phases": [{"name": "forward", "iteration": 0, "start_us": t[0], "end_us": t[0]},
                       {"name": "backward", "iteration": 0, "start_us": t[1], "end_us": t[2]}]}
    ph2 = _an(g2, meta).phases
    assert list(ph2["source"].unique()) == ["meta"]
    assert list(ph2["start_idx"]) == [0, 1] and list(ph2["end_idx"]) == [0, 2]


def test_no_repetition_is_one_whole_window_step() -> None:
    g = SnapGen()
    a = g.alloc(MiB)
    g.alloc(2 * MiB)
    g.free(a)
    an = _an(g)
    assert list(an.phases["source"]) == ["whole-window"]
    assert an.iterations["peak_bytes"].iloc[0] == 3 * MiB


# --- categories ----------------------------------------------------------------


def _training_script(g: SnapGen) -> dict[str, int]:
    """Two iterations of forward/backward/optimizer with one tensor of each kind."""
    ids = {"param": g.preexisting(4096), "data": g.preexisting(1024)}
    state = None
    for i in range(2):
        batch = g.alloc(2048, site="train.py:5:load")  # made between phases, used in forward
        with g.phase("forward", i):
            act = g.alloc(8192, site="model.py:10:forward")
            tmp = g.alloc(512, site="model.py:11:forward")
            g.free(tmp)
        with g.phase("backward", i):
            grad = g.alloc(4096, site="train.py:20:backward")
            btmp = g.alloc(8192, site="model.py:12:backward")
            g.free(btmp)
            g.free(act)
        with g.phase("optimizer", i):
            if state is None:
                state = g.alloc(8192, site="adamw.py:30:step")
            otmp = g.alloc(4096, site="adamw.py:31:step")
            g.free(otmp)
            g.free(grad)
        g.free(batch)
        ids.update(act=act, grad=grad, state=state, batch=batch)
    return ids


def test_categories_from_phases_and_meta() -> None:
    g = SnapGen()
    ids = _training_script(g)
    a = _an(g).allocations
    by_site = a.groupby("site", observed=True)["category"].agg(lambda c: set(map(str, c)))
    assert by_site["model.py:10:forward"] == {"activation"}
    assert by_site["model.py:11:forward"] == {"temporary"}
    assert by_site["train.py:20:backward"] == {"gradient"}
    assert by_site["model.py:12:backward"] == {"temporary"}
    assert by_site["adamw.py:30:step"] == {"optimizer_state"}
    assert by_site["adamw.py:31:step"] == {"temporary"}
    assert by_site["train.py:5:load"] == {"input"}
    pre = a[a["alloc_idx"] < 0]
    # alive all along: model state by lifetime (the trace alone cannot tell a parameter from an input)
    assert set(pre["category"].astype(str)) == {"parameter"} and set(pre["category_source"]) == {"lifetime"}
    assert set(a.loc[a["site"] == "model.py:10:forward", "phase"]) == {"forward"}
    assert (a.loc[a["site"] == "model.py:10:forward", "lifetime_us"] > 0).all()

    meta = {"parameter_addrs": [[ids["param"], 4096]], "input_addrs": [[ids["data"], 1024]]}
    a2 = _an(g, meta).allocations
    cat = dict(zip(a2["addr"], a2["category"].astype(str)))
    assert cat[ids["param"]] == "parameter" and cat[ids["data"]] == "input"


# --- verdict -------------------------------------------------------------------


def _timed_sawtooth() -> tuple[Any, float]:
    g = SnapGen()
    sawtooth(g, 3, n_up=4, size=MiB, up_dt=10, down_dt=10)
    an = _an(g)
    cpu_ms = float((an.phases["end_us"] - an.phases["start_us"]).mean() / 1000)
    return g, cpu_ms


@pytest.mark.parametrize("busy, expected", [(0.2, "allocator-bound"), (0.95, "compute-bound"), (1.8, "compute-bound"),
                                            (0.7, "inconclusive")])
def test_verdict_from_gpu_timings(busy: float, expected: str) -> None:
    g, cpu_ms = _timed_sawtooth()
    meta = {"timings_ms": {"step": {"mean": busy * cpu_ms, "std": 0.0, "n": 3}}}
    v = _an(g, meta).verdict
    assert v.verdict == expected
    assert v.numbers["gpu_busy"] == pytest.approx(busy)
    assert v.numbers["per_phase"]["step"]["cpu_ms"] == pytest.approx(cpu_ms)
    assert v.numbers["symmetric_ramps"] is True  # rise 30 us, fall 40 us
    assert v.explanation and v.remedies
    if expected == "allocator-bound":
        assert any("CUDA graph" in r for r in v.remedies) and any("expandable_segments" in r for r in v.remedies)


def test_verdict_without_timings_is_inconclusive_and_says_what_is_missing() -> None:
    g, _ = _timed_sawtooth()
    v = _an(g).verdict
    assert v.verdict == "inconclusive"
    assert "timings_ms" in v.explanation
    assert any("memprof record" in r for r in v.remedies)


def test_verdict_uses_meta_cpu_timings_without_annotations() -> None:
    g = SnapGen()
    sawtooth(g, 3, n_up=4, size=MiB, up_dt=10, down_dt=10, annotate=False)
    meta = {"timings_ms": {"forward": {"mean": 1.0}}, "cpu_timings_ms": {"forward": {"mean": 10.0}}}
    v = _an(g, meta).verdict
    assert v.verdict == "allocator-bound" and v.numbers["cpu_source"] == "meta cpu_timings_ms"


# --- peak ----------------------------------------------------------------------


def _naive_attention_forward(b: int, s: int, d: int) -> SnapGen:
    g = SnapGen()
    for _ in range(3):
        g.preexisting(b * s * d * 4, site="bench.py:3:setup")
    with g.phase("forward", 0):
        scores = g.alloc(b * s * s * 4, site="attn.py:10:naive_attention")
        probs = g.alloc(b * s * s * 4, site="attn.py:11:naive_attention")
        g.free(scores)
        g.alloc(b * s * d * 4, site="attn.py:12:naive_attention")
        g.free(probs)
    return g


def test_peak_breakdown_and_attention_account() -> None:
    b, s, d = 2, 64, 16
    g = _naive_attention_forward(b, s, d)
    w = {"kind": "attention", "impl": "naive", "seq_len": s, "d": d, "batch": b, "mode": "forward", "dtype": "fp32"}
    total = 1 << 30
    an = _an(g, {"workload": w, "device": {"total_memory_bytes": total}})
    pk = an.peak
    assert pk.measured_bytes == 3 * b * s * d * 4 + 2 * b * s * s * 4
    assert pk.by_category["bytes"].sum() == pk.measured_bytes
    assert pk.by_site.iloc[0]["site"] in ("attn.py:10:naive_attention", "attn.py:11:naive_attention")
    assert pk.by_site.set_index("site").loc["bench.py:3:setup", "count"] == 3
    assert pk.by_site["share"].sum() == pytest.approx(1.0)
    assert dict(zip(pk.by_phase["phase"], pk.by_phase["bytes"]))["forward"] == 2 * b * s * s * 4
    assert pk.expected_bytes == pk.measured_bytes and pk.difference_bytes == 0
    po = pk.predicted_oom
    assert po["parameter"] == "seq_len"
    fits = sum(x for _, x in attention_account({**w, "seq_len": po["max_fitting"]})[0])
    over = sum(x for _, x in attention_account({**w, "seq_len": po["max_fitting"] + 1})[0])
    assert fits <= total < over
    assert po["first_power_of_two_oom"] == 2 ** math.ceil(math.log2(po["max_fitting"] + 1))


# --- fragmentation and OOM -----------------------------------------------------


def test_fragmentation_split() -> None:
    g = SnapGen()
    g.segment(4096)
    g.alloc(100)
    g.alloc(1000)
    an = _an(g)
    last = an.fragmentation.iloc[-1]
    assert (last["reserved"], last["allocated"], last["rounding_waste"], last["free_cached"]) == (4096, 1100, 436, 2560)
    f = an.fragmentation
    assert ((f["allocated"] + f["rounding_waste"] + f["free_cached"]) == f["reserved"]).all()


@pytest.mark.parametrize("name", ["transformer_train3.pickle.gz"])
def test_fragmentation_block_bytes_equal_a_plain_sum(name: str) -> None:
    """Block bytes at sampled rows (the running sum by scatter) against a row-by-row sum of the
    blocks alive after that event."""
    from memprof.analysis.fragmentation import block_sizes

    an = analyze(Path(__file__).parents[1] / "data" / "golden" / name, use_cache=False)
    f = an.fragmentation
    blocks = block_sizes(an.snap, an.rep).tolist()
    ai, fi = an.rep.allocations["alloc_idx"].tolist(), an.rep.allocations["free_idx"].tolist()
    rng = np.random.default_rng(0)
    for r in sorted(set(rng.integers(0, len(f), 60).tolist()) | {0, len(f) - 1}):
        i = int(f["idx"].iloc[r])
        held = sum(b for b, a0, f0 in zip(blocks, ai, fi) if a0 <= i and (f0 < 0 or f0 > i))
        assert held == f["allocated"].iloc[r] + f["rounding_waste"].iloc[r], (r, i)
        assert f["free_cached"].iloc[r] == max(f["reserved"].iloc[r] - held, 0)


def test_oom_report_out_of_memory_and_fragmentation() -> None:
    g = SnapGen()
    g.segment(4096)
    g.alloc(1000)
    g.oom(8192, device_free=100)
    r = _an(g).oom
    assert r["requested_bytes"] == 8192 and r["device_free_bytes"] == 100 and r["reason"] == "exhaustion"

    g = SnapGen()
    base = g.next_addr
    g.segment(12288)
    g.alloc(4096, addr=base + 4096)
    g.oom(6144, device_free=0)
    raw = g.raw()
    raw["segments"] = [{"device": 0, "address": base, "total_size": 12288, "stream": 0, "blocks": [
        {"address": base, "size": 4096, "state": "inactive"},
        {"address": base + 4096, "size": 4096, "requested_size": 4096, "state": "active_allocated"},
        {"address": base + 8192, "size": 4096, "state": "inactive"}]}]
    r = analyze(columns_from_raw(raw), meta={}).oom
    assert r["free_cached_bytes"] == 8192 and r["largest_free_block_bytes"] == 4096
    assert r["reason"] == "fragmentation" and "expandable_segments" in r["explanation"]
    assert _an(SnapGen_with_one_alloc()).oom is None


def SnapGen_with_one_alloc() -> SnapGen:
    g = SnapGen()
    g.alloc(10)
    return g


# --- diff ----------------------------------------------------------------------


def test_diff_of_two_runs() -> None:
    ga = SnapGen()
    sawtooth(ga, 3, n_up=4, size=MiB, up_dt=10, down_dt=10)
    gb = SnapGen()
    for it in range(3):
        with gb.phase("step", it):
            xs = [gb.alloc(MiB, site=f"model.py:{10 + k}:forward") for k in range(2)]
            xs.append(gb.alloc(MiB // 2, site="model.py:50:forward"))
            for x in reversed(xs):
                gb.free(x)
    a, b = _an(ga), _an(gb)
    d = a.diff(b)
    assert d.peak_delta_bytes == int(2.5 * MiB) - 4 * MiB
    st = d.by_site.set_index("site")
    assert st.loc["model.py:12:forward", "status"] == "disappeared" and st.loc["model.py:12:forward", "delta"] == -MiB
    assert st.loc["model.py:50:forward", "status"] == "appeared" and st.loc["model.py:50:forward", "delta"] == MiB // 2
    assert "model.py:10:forward" not in st.index  # unchanged
    assert d.by_category["delta"].sum() == d.peak_delta_bytes
    assert d.aligned_by == "phase"
    al = d.aligned
    assert set(al["run"]) == {"A", "B"} and al["x"].between(0, 3).all()
    for run in ("A", "B"):
        x = al.loc[al["run"] == run, "x"].to_numpy()
        assert np.all(np.diff(x) >= 0)
    # each run peaks once inside each of the three shared steps
    for run in ("A", "B"):
        r = al[al["run"] == run]
        assert set(np.floor(r.loc[r["allocated"] == r["allocated"].max(), "x"]).astype(int)) == {0, 1, 2}


# --- CLI -------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, g: SnapGen, meta: dict[str, Any] | None = None) -> str:
    p = tmp_path / f"{name}.pickle"
    p.write_bytes(pickle.dumps(g.raw(), protocol=4))
    if meta:
        write_meta(p, meta)
    return str(p)


def test_cli_explain_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    g, cpu_ms = _timed_sawtooth()
    path = _write(tmp_path, "run", g, {"timings_ms": {"step": {"mean": 0.1 * cpu_ms}}})
    assert main(["explain", path, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["iterations"]) == 3 and d["iterations"][0]["peak_bytes"] == 4 * MiB
    assert {"start_us", "rise_us", "fall_us"} <= set(d["iterations"][0])
    assert d["verdict"]["verdict"] == "allocator-bound" and d["verdict"]["remedies"]
    assert sum(d["peak_by_category"].values()) == d["peak_bytes"] == 4 * MiB
    assert d["peak_by_site"] and "fragmentation" in d and d["oom"] is None
    assert main(["explain", path]) == 0
    out = capsys.readouterr().out
    assert "ALLOCATOR-BOUND" in out and "PEAK" in out and "model.py:10:forward" in out


def test_cli_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    ga, gb = SnapGen(), SnapGen()
    sawtooth(ga, 3, n_up=4, size=MiB, up_dt=10, down_dt=10)
    sawtooth(gb, 3, n_up=2, size=MiB, up_dt=10, down_dt=10)
    pa, pb = _write(tmp_path, "a", ga), _write(tmp_path, "b", gb)
    assert main(["diff", pa, pb, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak_delta_bytes"] == -2 * MiB
    assert {s["status"] for s in d["by_site"]} == {"disappeared"}
    assert sum(c["delta"] for c in d["by_category"]) == -2 * MiB
    assert main(["diff", pa, pb]) == 0
    assert "B-A -2.0 MiB" in capsys.readouterr().out


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(tmp_path / "missing.pickle")]) == 2
    assert capsys.readouterr().err.startswith("memprof: no such file")
    p = _write(tmp_path, "one", SnapGen_with_one_alloc())
    assert main(["explain", p, "--device", "3"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["diff", p, str(tmp_path / "nope.json")]) == 2


# --- every real snapshot in the repository --------------------------------------


def test_every_snapshot_in_repo() -> None:
    from memprof.commands.explain import explain_dict
    from memprof.snapshot.meta import read_meta

    root = Path(__file__).resolve().parents[2] / "snapshots"
    files = list(iter_snapshot_files(root)) if root.exists() else []
    for f in files:
        an = analyze(f, meta=read_meta(f))
        pk = an.peak
        assert pk.by_category["bytes"].sum() == pk.measured_bytes, f
        assert (an.iterations["peak_bytes"] <= an.rep.peak_bytes).all(), f
        fr = an.fragmentation
        assert (fr["rounding_waste"] >= 0).all() and (fr["free_cached"] >= 0).all(), f
        assert an.verdict.verdict in ("allocator-bound", "compute-bound", "inconclusive"), f
        json.dumps(explain_dict(an))


def test_transformer_account_and_batch_oom() -> None:
    from memprof.analysis.peak import predict_oom, transformer_account

    w = {"kind": "transformer", "vocab_size": 1000, "d_model": 64, "num_layers": 2, "num_heads": 4, "d_ff": 256,
         "context_length": 32, "batch": 4, "dtype": "fp32"}
    items, formula, coeffs = transformer_account(w)
    d = dict(items)
    p = 2 * 1000 * 64 + 2 * (4 * 64 * 64 + 2 * 64 * 256 + 4 * 64) + 2 * 64
    assert d[f"parameters (P={p:,} x 4 B)"] == 4 * p
    assert d["AdamW state (2 x P x 4 B)"] == 8 * p
    expected = sum(d.values())
    total = 64 * expected
    po = predict_oom("transformer", coeffs, expected, expected, total)
    bmax = po["max_fitting"]
    def cost(b: int) -> int:
        return sum(x for _, x in transformer_account({**w, "batch": b})[0])
    assert cost(bmax) <= total < cost(bmax + 1)


def test_annotations_of_other_device_are_ignored() -> None:
    g = SnapGen()
    sawtooth(g, 3, n_up=2, size=MiB, up_dt=10, down_dt=10)
    raw = g.raw()
    raw["external_annotations"] = raw["external_annotations"] + [
        {**a, "device": 1, "name": a["name"].replace("step", "forward")} for a in raw["external_annotations"]]
    an = analyze(columns_from_raw(raw), meta={})
    assert set(an.phases["phase"]) == {"step"} and len(an.phases) == 3


def test_verdict_on_a_cpu_recording_is_inconclusive() -> None:
    g, cpu_ms = _timed_sawtooth()
    meta = {"device": {"type": "cpu"}, "timings_ms": {"step": {"mean": cpu_ms}}, "cpu_timings_ms": {"step": {"mean": cpu_ms}}}
    v = _an(g, meta).verdict
    assert v.verdict == "inconclusive" and "CUDA device" in v.explanation


def test_verdict_prefers_the_recorders_unrecorded_cpu_timings() -> None:
    g, cpu_ms = _timed_sawtooth()
    meta = {"timings_ms": {"step": {"mean": 9.0}}, "cpu_timings_ms": {"step": {"mean": 10.0}}}
    v = _an(g, meta).verdict
    assert v.numbers["cpu_source"] == "meta cpu_timings_ms" and v.numbers["gpu_busy"] == pytest.approx(0.9)
    assert v.verdict == "compute-bound"


# --- verdict from measured GPU busy time ----------------------------------------


def _busy_meta(busy_step: float, host_step: float = 50.0, launches: int = 2000, event_ratio: float = 1.0) -> dict[str, Any]:
    """Metadata as the recorder writes it: busy time split 30/50/20 % over forward/backward/optimizer."""
    split = {"forward": 0.3, "backward": 0.5, "optimizer": 0.2}
    busy = {p: busy_step * f for p, f in split.items()} | {"step": busy_step}
    host = {p: host_step * f for p, f in split.items()} | {"step": host_step}
    return {
        "device": {"type": "cuda"},
        "timings_ms": {p: {"mean": v * event_ratio} for p, v in host.items()},  # CUDA events ~ host span
        "cpu_timings_ms": {p: {"mean": v} for p, v in host.items()},
        "gpu_busy_ms": busy,
        "profiled_host_ms": host,
        "kernel_launches": {p: int(launches * f) for p, f in split.items()} | {"step": launches},
        "gpu_busy_profile": {"steps": 1},
    }


@pytest.mark.parametrize("busy, launches, expected", [
    (10.0, 2000, "allocator-bound"),  # 20 % busy, 5 us kernels: the GPU waits for the host
    (47.0, 400, "compute-bound"),     # 94 % busy
    (36.0, 1000, "inconclusive"),     # 72 %: between the thresholds
])  # fmt: skip
def test_verdict_from_busy_time(busy: float, launches: int, expected: str) -> None:
    # GIVEN a sawtooth whose CUDA-event time equals the host span (which alone would say compute-bound)
    g, _ = _timed_sawtooth()
    # WHEN the metadata carries the measured busy time
    v = _an(g, _busy_meta(busy, launches=launches)).verdict
    # THEN busy time decides, and the numbers and explanation carry utilisation and launch rates
    assert v.verdict == expected
    n = v.numbers
    assert n["basis"] == "gpu busy time"
    assert n["gpu_utilization"] == pytest.approx(busy / 50.0)
    assert n["launches_per_ms"] == pytest.approx(launches / 50.0)
    assert n["mean_kernel_us"] == pytest.approx(1000 * busy / launches)
    assert n["event_over_host"] == pytest.approx(1.0)
    assert n["per_phase"]["backward"]["utilization"] == pytest.approx(busy / 50.0)
    assert n["per_phase"]["forward"]["launches"] == int(launches * 0.3)
    assert f"{busy / 50.0:.0%}" in v.explanation and "per ms" in v.explanation and "idle gaps" in v.explanation
    assert "Re-record" not in v.explanation
    if expected == "allocator-bound":
        assert "many tiny kernels" in v.explanation and any("CUDA graph" in r for r in v.remedies)
    if expected == "compute-bound":
        assert any("FlashAttention" in r for r in v.remedies)


def test_verdict_busy_high_but_events_disagree_is_inconclusive() -> None:
    g, _ = _timed_sawtooth()
    v = _an(g, _busy_meta(47.0, event_ratio=0.5)).verdict
    assert v.verdict == "inconclusive" and v.numbers["event_over_host"] == pytest.approx(0.5)
    assert "may not be typical" in v.explanation


def test_verdict_busy_time_overrides_cuda_events_host_bound_run() -> None:
    # GIVEN the golden eager-bf16 shape: events ~ host span (102 %), but the GPU busy only a third of it
    g, _ = _timed_sawtooth()
    meta = _busy_meta(16.0, host_step=50.0, event_ratio=1.02)
    # WHEN / THEN old logic would say compute-bound; busy time says allocator-bound
    assert _an(g, {k: v for k, v in meta.items() if k not in ("gpu_busy_ms", "profiled_host_ms")}).verdict.verdict == "compute-bound"
    assert _an(g, meta).verdict.verdict == "allocator-bound"


def test_verdict_without_busy_time_says_events_cannot_tell_idle_from_busy() -> None:
    g, cpu_ms = _timed_sawtooth()
    v = _an(g, {"timings_ms": {"step": {"mean": cpu_ms}}}).verdict
    assert v.numbers["basis"] == "cuda events" and "gpu_utilization" not in v.numbers
    assert "idle" in v.explanation and "Re-record with this memprof version" in v.explanation


def test_verdict_busy_time_from_a_cpu_run_is_ignored() -> None:
    # the recorder writes zero busy time on CPU: no verdict from it
    g, _ = _timed_sawtooth()
    meta = _busy_meta(0.0) | {"device": {"type": "cpu"}}
    v = _an(g, meta).verdict
    assert v.verdict == "inconclusive" and "CUDA device" in v.explanation
