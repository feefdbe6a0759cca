"""memprof record: workloads, the CPU snapshot path, OOM handling, scripts and bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from memprof.cli import main  # noqa: E402
from memprof.snapshot.load import load  # noqa: E402
from memprof.snapshot.meta import read_meta  # noqa: E402
from memprof.replay.timeline import replay  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
META_KEYS = (
    "workload", "device", "torch_version", "status", "timings_ms", "cpu_timings_ms", "recorded_timings_ms",
    "peak_allocated_bytes", "peak_reserved_bytes", "record", "command", "parameter_addrs", "gradient_addrs",
    "optimizer_state_addrs", "input_addrs", "phases",
)  # fmt: skip


def _record(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "snap.pickle"
    rc = main(["record", *args, "-o", str(out), "--no-progress", "--steps", "2", "--warmup", "1"])
    return rc, out


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_record_attention_cpu_matches_profiler(tmp_path: Path, impl: str) -> None:
    # GIVEN / WHEN attention recorded on CPU through the CLI
    rc, out = _record(tmp_path, "attention", "--impl", impl, "--seq-len", "96", "--d", "16", "--batch", "2", "--device", "cpu")
    # THEN the snapshot loads, its replayed peak equals torch.profiler's own memory timeline
    assert rc == 0
    meta = read_meta(out)
    for k in META_KEYS:
        assert k in meta, k
    assert meta["status"] == "ok" and meta["workload"]["impl"] == impl
    assert set(meta["timings_ms"]) == {"forward", "backward", "step"}
    snap = load(out, use_cache=False)
    rep = replay(snap)
    assert meta["peak_allocated_bytes"] > 0
    assert rep.peak_bytes == pytest.approx(meta["peak_allocated_bytes"], rel=0.01)
    names = set(snap.annotations["name"])
    assert {"memprof/forward/0", "memprof/backward/1"} <= names
    # the score matrix (B x S x S fp32) is alive at the naive peak
    if impl == "naive":
        assert rep.at_peak()["size"].max() >= 2 * 96 * 96 * 4
    # inputs alive before recording are accounted (q, k, v, grad_out)
    assert len(meta["input_addrs"]) == 4


def test_record_transformer_tiny_train_cpu(tmp_path: Path) -> None:
    rc, out = _record(tmp_path, "transformer", "--size", "tiny", "--context", "32", "--batch", "2", "--vocab", "100", "--device", "cpu")
    assert rc == 0
    meta = read_meta(out)
    assert set(meta["timings_ms"]) == {"forward", "backward", "optimizer", "step"}
    assert len(meta["optimizer_state_addrs"]) > 0 and len(meta["gradient_addrs"]) > 0
    rep = replay(load(out, use_cache=False))
    assert rep.peak_bytes == pytest.approx(meta["peak_allocated_bytes"], rel=0.01)
    param_bytes = sum(n for _, n in meta["parameter_addrs"])
    assert rep.peak_bytes > param_bytes  # params + grads + Adam state + activations


def test_cpu_snapshot_readable_by_torch_memory_viz(tmp_path: Path) -> None:
    import torch.cuda._memory_viz as mv

    rc, out = _record(tmp_path, "attention", "--seq-len", "32", "--d", "8", "--batch", "2", "--device", "cpu")
    assert rc == 0
    with open(out, "rb") as f:
        data = pickle.load(f)  # our own file, written by this test
    assert "total_allocated" in mv.segsum(data)
    assert "entries" in mv.trace(data)
    assert len(mv.trace_plot(data)) > 1000


def test_oom_writes_snapshot_and_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memprof.workloads import nullphase
    from memprof.workloads.attention import AttentionWorkload

    calls = {"n": 0}
    real_step = AttentionWorkload.step

    def step(self, phase=nullphase):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] != 6:  # warm-up 1 + timing 2 + profiled 1 (+ its warm-up) -> the first recorded step fails
            return real_step(self, phase)

        def failing(name: str):  # type: ignore[no-untyped-def]
            if name == "backward":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (simulated)")
            return phase(name)

        return real_step(self, failing)

    monkeypatch.setattr(AttentionWorkload, "step", step)
    rc, out = _record(tmp_path, "attention", "--seq-len", "32", "--d", "8", "--batch", "2", "--device", "cpu")
    assert rc == 3
    assert out.exists()
    meta = read_meta(out)
    assert meta["status"] == "oom" and "out of memory" in meta["error"]
    snap = load(out, use_cache=False)
    assert "memprof/forward/0" in set(snap.annotations["name"])  # the window up to the failure
    assert replay(snap).peak_bytes >= 2 * 32 * 32 * 4  # the forward's score matrix


def test_record_script_train_tiny(tmp_path: Path) -> None:
    out = tmp_path / "script.pickle"
    rc = main(["record", "-o", str(out), "--device", "cpu", "--", "python", str(ROOT / "examples" / "train_tiny.py"), "--steps", "2"])
    assert rc == 0
    meta = read_meta(out)
    assert meta["status"] == "ok" and meta["workload"]["kind"] == "script"
    rep = replay(load(out, use_cache=False))
    assert rep.peak_bytes == pytest.approx(meta["peak_allocated_bytes"], rel=0.01)
    assert rep.peak_bytes > 128 * 256 * 4  # at least the first weight matrix


def test_record_script_that_raises_keeps_snapshot(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("import torch\nx = torch.randn(1000)\ny = x * 2\nraise ValueError('boom')\n")
    out = tmp_path / "boom.pickle"
    rc = main(["record", "-o", str(out), "--device", "cpu", "--", "python", str(script)])
    assert rc == 1
    assert read_meta(out)["status"] == "error"
    assert replay(load(out, use_cache=False)).peak_bytes >= 4000


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["record", "attention", "--impl", "bogus"], "unknown attention implementation"),
        (["record", "--", "python", "no_such_script.py"], "script not found"),
        (["record", "transformer", "--size", "huge"], "unknown transformer size"),
    ],
)
def test_bad_input_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1


def test_python_api_profiler_and_dispatch_agree(tmp_path: Path) -> None:
    import memprof

    def work() -> None:
        w = torch.randn(256, 256, requires_grad=True)
        x = torch.randn(64, 256)
        for i in range(2):
            with memprof.phase("forward", iteration=i):
                y = (x @ w).relu().sum()
            with memprof.phase("backward", iteration=i):
                y.backward()
            w.grad = None

    peaks = {}
    for backend in ("profiler", "dispatch"):
        out = tmp_path / f"{backend}.pickle"
        with memprof.record(out, device="cpu", backend=backend):
            work()
        snap = load(out, use_cache=False)
        peaks[backend] = replay(snap).peak_bytes
        assert "memprof/backward/1" in set(snap.annotations["name"])
        assert read_meta(out)["record"]["backend"] == backend
    # the dispatch tracker sees operator outputs only, but here it sees every tensor
    assert peaks["dispatch"] == pytest.approx(peaks["profiler"], rel=0.05)
    assert peaks["profiler"] >= 256 * 256 * 4 * 2  # w and its gradient


def test_importing_memprof_does_not_import_torch() -> None:
    code = "import sys, memprof, memprof.cli; memprof.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- GPU acceptance: replayed peak within 1% of the allocator's ------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(
    "args",
    [
        ["attention", "--impl", "naive", "--seq-len", "2048", "--d", "64"],
        ["attention", "--impl", "compiled", "--seq-len", "2048", "--d", "64"],
        ["attention", "--impl", "sdpa", "--seq-len", "2048", "--d", "64"],
        ["transformer", "--size", "small", "--mode", "train", "--context", "256", "--batch", "2"],
        ["transformer", "--size", "small", "--mode", "train", "--context", "256", "--batch", "2", "--dtype", "bf16"],
        ["transformer", "--size", "small", "--mode", "train", "--context", "256", "--batch", "2", "--dtype", "bf16", "--compile"],
    ],
    ids=["attn-naive", "attn-compiled", "attn-sdpa", "small-eager-fp32", "small-eager-bf16", "small-compiled-bf16"],
)
def test_cuda_replay_peak_matches_allocator(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _record(tmp_path, *args)
    assert rc == 0
    assert main(["stats", str(out), "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = read_meta(out)
    assert d["peak_allocated_bytes"] == pytest.approx(meta["peak_allocated_bytes"], rel=0.01)
    assert not d["wrapped"]
    snap = load(out, use_cache=False)
    assert (snap.events["user_metadata"] >= 0).any() or len(snap.annotations)


@pytest.mark.cuda
@cuda
def test_cuda_real_oom(tmp_path: Path) -> None:
    free, _total = torch.cuda.mem_get_info()
    s = int((free / 4 / 8) ** 0.5 * 1.5)  # one B x S x S fp32 matrix of ~2.25x free memory
    rc, out = _record(tmp_path, "attention", "--seq-len", str(s), "--d", "16")
    assert rc == 3
    meta = read_meta(out)
    assert meta["status"] == "oom"
    rep = replay(load(out, use_cache=False))
    assert len(rep.oom_events) >= 1
    assert torch.cuda.memory_allocated() < 1 << 30  # memory was freed for what comes next
