"""GPU busy time per phase: attribution by launch time, Kineto event parsing, the profiled step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from memprof.recorder.busy import attribute, device_ops

MS = 1_000_000  # ns


def test_attribute_by_launch_time_nested_and_averaged() -> None:
    # GIVEN two steps, each a step range holding forward [0, 10) and backward [10, 30) ms
    ranges = []
    for k in range(2):
        o = k * 100 * MS
        ranges += [("step", o, o + 40 * MS), ("forward", o, o + 10 * MS), ("backward", o + 10 * MS, o + 30 * MS)]
    # and kernels (launch, duration): a kernel launched in forward may run long after it
    launch = [1 * MS, 9 * MS, 12 * MS, 35 * MS, 50 * MS, 101 * MS, 129 * MS]
    dur = [2 * MS, 20 * MS, 4 * MS, 1 * MS, 7 * MS, 4 * MS, 2 * MS]
    # WHEN attributed
    a = attribute(ranges, launch, dur)
    # THEN each kernel counts where it was launched; the 50 ms kernel is in no range; means per step
    assert a["forward"] == {"busy_ms": pytest.approx((22 + 4) / 2), "launches": 1.5, "host_ms": 10.0, "n_ranges": 2}
    assert a["backward"]["busy_ms"] == pytest.approx((4 + 2) / 2) and a["backward"]["launches"] == 1.0
    assert a["step"]["busy_ms"] == pytest.approx((2 + 20 + 4 + 1 + 4 + 2) / 2) and a["step"]["launches"] == 3.0
    assert a["step"]["host_ms"] == pytest.approx(40.0)


def test_attribute_without_device_events_is_zero() -> None:
    a = attribute([("forward", 0, 5 * MS)], [], [])
    assert a == {"forward": {"busy_ms": 0.0, "launches": 0.0, "host_ms": 5.0, "n_ranges": 1}}


@dataclass
class Ev:
    """A stand-in for torch's _KinetoEvent (same method names)."""

    n: str
    dev: str
    kind: str | None
    start: int
    dur: int
    corr: int = 0
    linked: int = 0
    tid: int = 1

    def name(self) -> str:
        return self.n

    def device_type(self) -> str:
        return f"DeviceType.{self.dev}"

    def activity_type(self) -> str:
        if self.kind is None:
            raise RuntimeError("no activity type in this torch")
        return self.kind

    def start_ns(self) -> int:
        return self.start

    def duration_ns(self) -> int:
        return self.dur

    def end_ns(self) -> int:
        return self.start + self.dur

    def correlation_id(self) -> int:
        return self.corr

    def linked_correlation_id(self) -> int:
        return self.linked

    def is_user_annotation(self) -> bool:
        return self.kind in ("user_annotation", "gpu_user_annotation")


def test_device_ops_from_kineto_events_by_runtime_correlation_not_tree() -> None:
    # GIVEN forward [0, 10) ms on the main thread, backward [10, 40) ms whose op and launch run
    # on autograd's device thread (tid 2, so not a child of the backward range in the op tree)
    evs = [
        Ev("memprof/forward/0", "CPU", "user_annotation", 0, 10 * MS, corr=1),
        Ev("memprof/backward/0", "CPU", "user_annotation", 10 * MS, 30 * MS, corr=2),
        Ev("aten::mm", "CPU", "cpu_op", 1 * MS, 1 * MS, corr=3),
        Ev("cudaLaunchKernel", "CPU", "cuda_runtime", 1 * MS + 10, 5000, corr=3, linked=3),  # corr 3 collides with aten::mm
        Ev("aten::mm", "CPU", "cpu_op", 20 * MS, 1 * MS, corr=7, tid=2),
        Ev("cudaLaunchKernel", "CPU", "cuda_runtime", 20 * MS + 10, 5000, corr=8, linked=7, tid=2),
        # GPU: the forward kernel runs during backward's host span; it still belongs to forward
        Ev("gemm_fwd", "CUDA", "kernel", 15 * MS, 3 * MS, corr=3, linked=3),
        Ev("gemm_bwd", "CUDA", "kernel", 25 * MS, 2 * MS, corr=8, linked=7),
        Ev("Memcpy DtoD", "CUDA", "gpu_memcpy", 26 * MS, 1 * MS, corr=99, linked=7),  # no runtime call: its op
        Ev("memprof/forward/0", "CUDA", "gpu_user_annotation", 15 * MS, 3 * MS, corr=1),  # not GPU work
    ]
    # WHEN parsed
    ranges, launch, dur, how = device_ops(evs)
    a = attribute(ranges, launch, dur)
    # THEN
    assert sorted(r[0] for r in ranges) == ["backward", "forward"]
    assert how == {"runtime": 2, "cpu_op": 1, "device_time": 0}
    assert a["forward"]["busy_ms"] == pytest.approx(3.0) and a["forward"]["launches"] == 1
    assert a["backward"]["busy_ms"] == pytest.approx(3.0) and a["backward"]["launches"] == 2


def test_device_ops_without_activity_type_falls_back_to_names() -> None:
    evs = [
        Ev("memprof/forward/0", "CPU", None, 0, 10 * MS, corr=1),
        Ev("cudaLaunchKernel", "CPU", None, 2 * MS, 5000, corr=5),
        Ev("k", "CUDA", None, 30 * MS, 4 * MS, corr=5),
        Ev("memprof/forward/0", "CUDA", None, 30 * MS, 4 * MS),  # GPU-side annotation: skipped
        Ev("orphan", "CUDA", None, 5 * MS, 1 * MS, corr=42),  # no launch known: its device start
    ]
    ranges, launch, dur, how = device_ops(evs)
    a = attribute(ranges, launch, dur)
    assert how == {"runtime": 1, "cpu_op": 0, "device_time": 1}
    assert a["forward"]["busy_ms"] == pytest.approx(5.0) and a["forward"]["launches"] == 2


torch = pytest.importorskip("torch")


def test_profiled_step_on_cpu_writes_the_keys(tmp_path: Path) -> None:
    from memprof.snapshot.meta import read_meta
    from memprof.recorder.runner import record_workload
    from memprof.workloads import build

    # GIVEN a tiny training workload on CPU, WHEN recorded with one profiled step
    calls: list[int] = []
    w = build("transformer", size="tiny", context=16, batch=2, vocab=50)
    out = tmp_path / "t.pickle"
    meta = record_workload(w, out, torch.device("cpu"), steps=1, warmup=1, progress=False, profile_steps=1,
                           step_hook=lambda _w, i: calls.append(i))
    # THEN warm-up, timing, profiler warm-up + profiled step, recording: each step once, in order
    assert calls == [0, 1, 2, 3, 4]
    m = read_meta(out)
    assert "gpu_busy_error" not in m
    phases = {"forward", "backward", "optimizer", "step"}
    assert set(m["gpu_busy_ms"]) == set(m["kernel_launches"]) == set(m["profiled_host_ms"]) == phases
    # no GPU on CPU: zero busy time and launches, no utilisation; host spans are real and nested
    assert all(v == 0.0 for v in m["gpu_busy_ms"].values()) and all(v == 0 for v in m["kernel_launches"].values())
    assert m["gpu_utilization"] is None and m["gpu_busy_profile"]["activities"] == ["CPU"]
    host = m["profiled_host_ms"]
    assert all(v > 0 for v in host.values())
    assert host["step"] >= host["forward"] + host["backward"] + host["optimizer"]
    assert meta["record"]["profiled_steps"] == 1
    # the profiled steps are outside the recorded window: its annotations start at iteration 0
    from memprof.snapshot.load import load

    names = set(load(out, use_cache=False).annotations["name"])
    assert "memprof/forward/0" in names and not any(n.endswith(("/2", "/3")) for n in names)


def test_profiler_failure_is_recorded_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memprof.recorder.busy as busy
    from memprof.recorder.runner import record_workload
    from memprof.workloads import build

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("CUPTI_ERROR_INSUFFICIENT_PRIVILEGES\nmore")

    monkeypatch.setattr(busy, "profile_steps", boom)
    meta = record_workload(build("attention", seq_len=16, d=8, batch=1), tmp_path / "a.pickle", torch.device("cpu"),
                           steps=1, warmup=0, progress=False)
    assert meta["status"] == "ok" and meta["gpu_busy_error"] == "RuntimeError: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"
    assert "gpu_busy_ms" not in meta and meta["timings_ms"]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_busy_time_per_phase(tmp_path: Path) -> None:
    from memprof.snapshot.load import load
    from memprof.snapshot.meta import read_meta
    from memprof.recorder.runner import record_workload
    from memprof.workloads import build

    # GIVEN naive attention (big matmuls: the GPU is busy) WHEN recorded with a profiled step
    out = tmp_path / "a.pickle"
    record_workload(build("attention", impl="naive", seq_len=2048, d=64, batch=8), out, torch.device("cuda"),
                    steps=2, warmup=1, progress=False)
    m = read_meta(out)
    # THEN kernels are found in both phases (backward's come from autograd's thread), by runtime correlation
    assert "gpu_busy_error" not in m, m.get("gpu_busy_error")
    assert m["kernel_launches"]["forward"] > 0 and m["kernel_launches"]["backward"] > 0
    assert m["gpu_busy_ms"]["backward"] > 0
    how = m["gpu_busy_profile"]["attribution"]
    assert how["runtime"] >= 0.9 * sum(how.values())
    # the step's span runs until the GPU is drained: utilisation is a fraction, and high here
    assert 0.5 < m["gpu_utilization"] <= 1.05
    # the profiled steps (iterations 3, 4) are not in the recorded window
    names = set(load(out, use_cache=False).annotations["name"])
    assert not any(n.endswith(("/3", "/4")) for n in names)
