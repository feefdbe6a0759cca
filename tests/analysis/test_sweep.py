"""memprof sweep on CPU with tiny grids: rows, a simulated OOM row, resume, tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from memprof.analysis import sweeps as sweep  # noqa: E402
from memprof.cli import main  # noqa: E402


def _fake_oom_at(monkeypatch: pytest.MonkeyPatch, seq_len: int) -> None:
    from memprof.workloads.attention import AttentionWorkload

    real_setup = AttentionWorkload.setup

    def setup(self, device):  # type: ignore[no-untyped-def]
        real_setup(self, device)
        if self.options["seq_len"] >= seq_len and self.options["impl"] == "naive":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(AttentionWorkload, "setup", setup)


def test_attention_sweep_oom_row_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a tiny grid where naive at S=128 "runs out of memory"
    _fake_oom_at(monkeypatch, 128)
    out = tmp_path / "sw"
    base = ["sweep", "attention", "--seq-len", "32,64,128", "--d", "8", "--impl", "naive,sdpa", "--batch", "2",
            "--device", "cpu", "--steps", "2", "--warmup", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    # WHEN it runs
    assert main(base) == 0
    df = pd.read_csv(out / "results.csv")
    # THEN one row per config, the OOM row kept, snapshots gzip'd, peaks from snapshot and allocator agree
    assert len(df) == 6
    oom = df[df["status"] == "oom"]
    assert list(oom["seq_len"]) == [128] and list(oom["impl"]) == ["naive"]
    ok = df[df["status"] == "ok"]
    assert ok["snapshot"].str.endswith(".pickle.gz").all()
    assert (abs(ok["peak_replay_mb"] - ok["peak_allocated_mb"]) <= 0.01 * ok["peak_allocated_mb"]).all()
    assert (ok["forward_ms"] > 0).all() and (ok["backward_ms"] > 0).all()
    md = (out / "results.md").read_text()
    assert "naive vs sdpa" in md and "OOM" in md and "predicted OOM" in md

    # WHEN re-run with a larger grid, only the new rows are recorded
    calls: list[str] = []
    import memprof.recorder.runner as runner

    real = runner.record_workload

    def counting(w, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(w.slug())
        return real(w, *a, **k)

    monkeypatch.setattr(runner, "record_workload", counting)
    argv = list(base)
    argv[argv.index("32,64,128")] = "32,64,128,16"
    assert main(argv) == 0
    # (the first call primes the process: one untimed step of the first eager config, no row, no snapshot)
    assert calls == ["attention-naive-s16-d8-b2-fwdbwd-fp32", "attention-naive-s16-d8-b2-fwdbwd-fp32", "attention-sdpa-s16-d8-b2-fwdbwd-fp32"]
    assert len(pd.read_csv(out / "results.csv")) == 8


def test_transformer_sweep_no_snapshots(tmp_path: Path) -> None:
    out = tmp_path / "tw"
    rc = main(["sweep", "transformer", "--size", "tiny", "--mode", "forward,train", "--compile", "no", "--dtype", "fp32,bf16",
               "--context", "16", "--batch", "2", "--vocab", "50", "--device", "cpu", "--steps", "2", "--warmup", "1",
               "--out", str(out), "--no-snapshots", "--no-progress"])  # fmt: skip
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert df["snapshot"].isna().all()
    train = df[df["mode"] == "train"]
    assert train["optimizer_ms"].notna().all() and df[df["mode"] == "forward"]["backward_ms"].isna().all()
    assert "fp32 vs bf16" in (out / "results.md").read_text()


def test_compare_and_physics_tables() -> None:
    # GIVEN hand-made rows: compiled is 2x faster and uses 30% less memory
    rows = []
    for impl, t, peak in (("naive", 10.0, 100.0), ("compiled", 5.0, 70.0)):
        rows.append({"key": impl, "kind": "attention", "impl": impl, "seq_len": 16384, "d": 64, "batch": 8, "mode": "forward_backward",
                     "dtype": "fp32", "status": "ok", "forward_ms": t, "forward_std": 0.1, "backward_ms": 2 * t, "backward_std": 0.1,
                     "peak_replay_mb": peak, "peak_allocated_mb": peak, "device_total_mb": 80_000.0})  # fmt: skip
    df = pd.DataFrame(rows)
    c = sweep.compare(df, "impl", "naive", "compiled", ["seq_len", "d"])
    assert c["forward_speedup"].iloc[0] == pytest.approx(2.0)
    assert c["peak_change_pct"].iloc[0] == pytest.approx(-30.0)
    phys = sweep.attention_physics(df)
    assert phys["sxs_matrix_mb"].iloc[0] == pytest.approx(8589.934592)  # seed 004: 8.59 GB for B=8, S=16384 fp32


def test_oom_prediction_fits_quadratic() -> None:
    b, a = 96.0, 50e6  # bytes per S^2, fixed bytes
    rows = [{"kind": "attention", "impl": "naive", "d": 64, "seq_len": s, "status": "ok", "peak_replay_mb": (a + b * s * s) / 1e6,
             "peak_allocated_mb": None, "device_total_mb": 80_000.0} for s in (1024, 2048, 4096)]  # fmt: skip
    rows.append({"kind": "attention", "impl": "naive", "d": 64, "seq_len": 32768, "status": "oom", "device_total_mb": 80_000.0})
    p = sweep.oom_prediction(pd.DataFrame(rows))
    assert p["predicted_oom_seq_len"].iloc[0] == pytest.approx(((80e9 - a) / b) ** 0.5, rel=1e-6)
    assert p["first_oom_seq_len"].iloc[0] == 32768


def test_sweep_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "attention", "--impl", "naive,flash"]) == 2
    assert "unknown attention implementation 'flash'" in capsys.readouterr().err
    assert main(["sweep", "transformer", "--size", "huge"]) == 2
    assert main(["sweep"]) == 2
