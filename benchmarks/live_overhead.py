"""What the live view costs: CUDA-event-timed train steps of the built-in Transformer with and without it.

    python benchmarks/live_overhead.py [--size small --dtype bf16,fp32 --steps 20 --warmup 5 --repeats 6 --hz 4]

One process, one model: blocks of ``--steps`` steps alternate between live off and live on (a
publisher sampling at ``--hz`` with a follower process reading ``/stream``, as ``memprof serve``
does), the order flipped every repeat. Steps are timed as ``memprof record`` times them: a
PhaseTimer around the step and its phases (forward, backward, optimizer), CUDA events, resolved
after each block. Also reports the cost of one counter read and one sample. Writes markdown to
``--out`` (default: stdout only).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from memprof.recorder import publish
from memprof.recorder.core import PhaseTimer
from memprof.workloads import build, resolve_device

FOLLOWER = ("import sys, urllib.request\n"
            "n = 0\n"
            "with urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/stream', timeout=60) as r:\n"
            "    for line in r: n += 1\n"
            "print(n)\n")


def block(w, device: torch.device, steps: int, start: int) -> list[float]:  # type: ignore[no-untyped-def]
    timer = PhaseTimer(device)
    for i in range(start, start + steps):
        with timer.time("step", i):
            w.step(lambda name, _i=i: timer.time(name, _i))
    gpu, _ = timer.timings()
    return list(gpu["step"]["samples"])


def ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def run_config(dtype: str, args: argparse.Namespace, device: torch.device) -> tuple[list[str], dict[str, float]]:
    w = build("transformer", size=args.size, mode="train", context=args.context, batch=args.batch, dtype=dtype)
    w.setup(device)
    for _ in range(args.warmup):
        w.step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    times: dict[str, list[float]] = {"off": [], "on": []}
    per_rep: dict[str, list[float]] = {"off": [], "on": []}
    lines_read: list[int] = []
    samples_taken: list[int] = []
    k = 0
    for r in range(args.repeats):
        for cond in (("off", "on") if r % 2 == 0 else ("on", "off")):
            pub = fol = None
            if cond == "on":
                pub = publish.start(device, 0, hz=args.hz, announce=False)
                fol = subprocess.Popen([sys.executable, "-c", FOLLOWER, str(pub.port)], stdout=subprocess.PIPE, text=True)
                t_end = time.time() + 5
                while pub.streams == 0 and time.time() < t_end:  # the follower is connected before timing starts
                    time.sleep(0.01)
            xs = block(w, device, args.steps, k)
            k += args.steps
            if pub is not None and fol is not None:
                samples_taken.append(len(pub.samples))
                pub.stop(status="ok", linger=2.0)
                lines_read.append(int((fol.communicate(timeout=30)[0] or "0").strip() or 0))
            times[cond] += xs
            per_rep[cond].append(statistics.fmean(xs))
    ratios = [b / a for a, b in zip(per_rep["off"], per_rep["on"])]
    # micro costs
    read, _ = publish.counter_reader(device)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        read()
    read_us = (time.perf_counter() - t0) / n * 1e6
    pub = publish.Publisher(device, 0, hz=args.hz)
    t0 = time.perf_counter()
    for _ in range(n):
        pub.sample()
    sample_us = (time.perf_counter() - t0) / n * 1e6
    pub.server.server_close()
    w.teardown()
    off, on = statistics.fmean(times["off"]), statistics.fmean(times["on"])
    res = {"off": off, "on": on, "overhead": (on - off) / off, "ratio_mean": statistics.fmean(ratios),
           "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0, "read_us": read_us, "sample_us": sample_us}
    rows = [f"| {args.size} train {dtype} | {ms(times['off'])} | {ms(times['on'])} | {res['overhead'] * 100:+.2f}% | "
            f"{(res['ratio_mean'] - 1) * 100:+.2f}% ± {res['ratio_std'] * 100:.2f}% | {read_us:.1f} | {sample_us:.1f} | "
            f"{sum(samples_taken)} / {sum(lines_read)} |"]
    return rows, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--dtype", default="bf16,fp32")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="steps per block")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=6, help="blocks per setting, alternating")
    ap.add_argument("--hz", type=float, default=4.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        "# Live view overhead",
        "",
        f"Device: {name}; torch {torch.__version__}. Command: `python benchmarks/live_overhead.py --size {args.size} "
        f"--dtype {args.dtype} --steps {args.steps} --warmup {args.warmup} --repeats {args.repeats} --hz {args.hz}`.",
        "",
        f"Train steps (AdamW) of the built-in Transformer, context {args.context}, batch {args.batch}, timed with CUDA events "
        f"around each step and its phases (as `memprof record` times them). {args.repeats} blocks of {args.steps} steps per "
        f"setting, alternating off/on (order flipped every repeat). *On*: a publisher sampling at {args.hz:g} Hz, a follower "
        "process reading `/stream`, and the phase hooks (two counter reads per phase).",
        "",
        "| workload | step ms, off (mean ± std) | step ms, on | overhead (means) | overhead (paired blocks, mean ± std) | "
        "counter read µs | sample µs | samples taken / lines read |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dtype in args.dtype.split(","):
        rows, res = run_config(dtype.strip(), args, device)
        lines += rows
        print(rows[0], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
