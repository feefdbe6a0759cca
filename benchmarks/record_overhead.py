"""Recording overhead: small-transformer train step time with recording off, python stacks, all stacks.

    python benchmarks/record_overhead.py [--size small --context 512 --batch 4 --steps 10 --warmup 3]

Writes benchmarks/results/record_overhead.md. CUDA only (the CPU path is not the allocator's history).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from memprof.recorder import cuda as cuda_backend
from memprof.workloads import build, resolve_device


def time_steps(w, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        w.step()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the three settings this many times")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "record_overhead.md"))
    args = ap.parse_args()
    device = resolve_device("cuda")
    w = build("transformer", size=args.size, mode="train", context=args.context, batch=args.batch, dtype=args.dtype)
    w.setup(device)
    for _ in range(args.warmup):
        w.step()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {"off": [], "python": [], "all": []}
    for _ in range(args.repeats):
        for setting in samples:
            if setting != "off":
                cuda_backend.start_history(1_000_000, setting)
            samples[setting] += time_steps(w, args.steps)
            if setting != "off":
                cuda_backend.snapshot()
                cuda_backend.stop_history()
    base = statistics.fmean(samples["off"])
    lines = [
        "# Recording overhead",
        "",
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; transformer {args.size} train step, "
        f"context {args.context}, batch {args.batch}, {args.dtype}; {args.steps} steps x {args.repeats} repeats after {args.warmup} warm-up.",
        "",
        "| recording | step (ms) mean ± std | overhead |",
        "| --- | --- | --- |",
    ]
    for k, v in samples.items():
        m, s = statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {k} | {m:.2f} ± {s:.2f} | {(m / base - 1) * 100:+.1f}% |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
