"""Predicted (no GPU) vs measured (H100) torch counters for memprof's built-in workloads.

    python benchmarks/predict_vs_measured.py > benchmarks/results/predict_vs_measured.md

Measured: tests/data/gpu/predict/*.meta.json (`memprof record` on an H100 80GB, torch 2.11:
peak_allocated_bytes / peak_reserved_bytes are torch.cuda.max_memory_allocated/reserved over the
recorded steps) and snapshots/h100/*.meta.json; thresholds.json (a bisection in one process).
Predicted: memprof.predict on this CPU-only machine, with the same steps before the window as
the recorder ran (warm-up + timed + profiled steps).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memprof.commands.predict import H100_80GB_USABLE  # noqa: E402
from memprof.predict.core import one_process_trials, predict_workload  # noqa: E402

KEYS = {"attention": ("impl", "seq_len", "d", "batch", "causal", "mode", "dtype"),
        "transformer": ("size", "mode", "dtype", "context", "batch", "vocab", "d_model", "num_layers", "num_heads",
                        "d_ff", "positions")}


def pre_steps(meta: dict) -> int:
    r = meta.get("record") or {}
    prof = int(r.get("profiled_steps") or 0)
    return int(r.get("warmup_steps", 2)) + int(r.get("measured_steps", 3)) + (prof + 1 if prof else 0)


def main() -> None:
    metas = sorted((ROOT / "tests/data/gpu/predict").glob("*.meta.json")) + sorted((ROOT / "snapshots/h100").glob("*.meta.json"))
    rows = []
    for m in metas:
        meta = json.loads(m.read_text())
        w = meta.get("workload") or {}
        kind = w.get("kind")
        if kind not in KEYS or w.get("compile") or w.get("impl", "naive") != "naive" or meta.get("status") != "ok":
            continue
        opts = {k: w[k] for k in KEYS[kind] if k in w}
        t = time.perf_counter()
        p = predict_workload(kind, opts, warmup=pre_steps(meta), steps=int((meta.get("record") or {}).get("measured_steps", 3)))
        dt = time.perf_counter() - t
        ma, mr = meta["peak_allocated_bytes"], meta["peak_reserved_bytes"]
        rows.append((m.name.replace(".meta.json", ""), ma, p.max_memory_allocated, mr, p.max_memory_reserved, dt))
        print(rows[-1], file=sys.stderr, flush=True)
    print("# Predicted without a GPU vs measured on an H100\n")
    print("`python benchmarks/predict_vs_measured.py` (this machine: 2 CPU cores, torch 2.13 CPU build; measured: "
          "NVIDIA H100 80GB HBM3, torch 2.11). Predicted = `memprof.predict` (FakeTensorMode + the allocator model); "
          "measured = `torch.cuda.max_memory_allocated/reserved` saved by `memprof record`.\n")
    print("| recording | measured allocated | predicted | error | measured reserved | predicted | error | predict time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst_a = worst_r = 0.0
    for name, ma, pa, mr, pr, dt in rows:
        ea, er = (pa - ma) / ma, (pr - mr) / mr
        worst_a, worst_r = max(worst_a, abs(ea)), max(worst_r, abs(er))
        print(f"| {name} | {ma:,} | {pa:,} | {ea:+.3%} | {mr:,} | {pr:,} | {er:+.3%} | {dt:.1f} s |")
    print(f"\nWorst error: allocated {worst_a:.3%}, reserved {worst_r:.3%} over {len(rows)} recordings.\n")
    th = json.loads((ROOT / "tests/data/gpu/predict/thresholds.json").read_text())
    print("## Out-of-memory thresholds\n")
    print("Measured: `benchmarks/gpu_record_cases.py thresholds` bisects in one process (each trial: build, one step, "
          "teardown, `empty_cache()`). Predicted: the same bisection simulated (`memprof.predict.core.one_process_trials`), "
          f"device memory {H100_80GB_USABLE:,} B (reserved + free at the OOM in snapshots/h100/attention-naive-s28672-d64-b8-oom).\n")
    print("| case | measured largest passing / first failing | predicted |")
    print("| --- | --- | --- |")
    a = th["attention_naive_b8_d64_fp32_fwdbwd_seq_len"]
    pa = one_process_trials("attention", dict(impl="naive", d=64, batch=8), "seq_len", None, H100_80GB_USABLE,
                            lo=16384, hi=32768, step=a["step"])
    print(f"| naive attention B=8 d=64 fp32 fwd+bwd, seq_len | {a['largest_passing']} / {a['first_failing']} | "
          f"{pa['max_fitting']} / {pa['first_failing']} |")
    t = th["transformer_small_fp32_train_c2048_batch"]
    pt = one_process_trials("transformer", dict(size="small", mode="train", dtype="fp32", context=2048), "batch", None,
                            H100_80GB_USABLE, lo=8, hi=512, step=t["step"])
    print(f"| small Transformer fp32 train, context 2048, batch | {t['largest_passing']} / {t['first_failing']} | "
          f"{pt['max_fitting']} / {pt['first_failing']} |")


if __name__ == "__main__":
    main()
