"""Run-level analysis at scale: 64 synthetic rank files, summaries per rank and for the whole run.

    python benchmarks/bench_ranks.py [--ranks 64] [--layers 48] [--iterations 5] [--out benchmarks/results/ranks_summary.md]

Writes a run folder of N ``rank{R}.pickle.gz`` files (memprof.testing.write_run: a training trace per
rank, ranks of different sizes) into a temporary folder, then measures, each in a fresh subprocess
with an empty columnar cache:

* one rank    — ``summarize`` of one rank file (load + replay + categories + peak + downsampling).
* serial      — ``load_summaries(RUN, workers=1)``: every summary in one process.
* pool        — ``load_summaries(RUN)``: missing summaries in a process pool (one worker per CPU).
* from disk   — ``memprof stats RUN --json`` once every summary exists (what run-level commands
                pay when the recorder wrote the summaries at dump time): only the small files are read.

Times are wall clock (perf_counter) inside the child, after imports; RSS is the child's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, run: str) -> dict:
    import resource

    from memprof.analysis.ranks import load_summaries, summarize
    from memprof.snapshot.runs import rank_files

    t0 = time.perf_counter()
    if mode == "one":
        summarize(rank_files(run)[0])
    elif mode == "serial":
        load_summaries(run, workers=1)
    elif mode == "pool":
        load_summaries(run)
    elif mode == "stats":
        import contextlib
        import io

        from memprof.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["stats", run, "--json"]) == 0
    dt = time.perf_counter() - t0
    return {"s": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def measure(mode: str, run: Path, clear: bool) -> dict:
    if clear:
        for p in run.glob("*.summary"):
            p.unlink()
    cache = tempfile.mkdtemp(prefix="memprof-bench-cache-")
    env = {**os.environ, "MEMPROF_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(run)], env=env, capture_output=True, text=True, check=True)
    shutil.rmtree(cache, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=2, default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    sys.path.insert(0, str(ROOT))
    from memprof.snapshot.load import load
    from memprof.testing import write_run

    tmp = Path(tempfile.mkdtemp(prefix="memprof-bench-ranks-"))
    run = tmp / "run"
    t0 = time.perf_counter()
    write_run(run, [4 + (r % 8) for r in range(a.ranks)], iterations=a.iterations, layers=a.layers, gz=True)
    t_write = time.perf_counter() - t0
    files = sorted(run.glob("rank*.pickle.gz"))
    entries = load(files[0], use_cache=False).info.get("entries_per_device", [0])[0]
    snap_mb = sum(p.stat().st_size for p in files) / 2**20
    load_before = os.getloadavg()[0]
    rows = {}
    for mode, clear in (("one", True), ("serial", True), ("pool", True), ("stats", False)):
        rs = [measure(mode, run, clear) for _ in range(a.repeat)]
        rows[mode] = (min(r["s"] for r in rs), max(r["rss_mb"] for r in rs), max(r["child_rss_mb"] for r in rs))
    load_after = os.getloadavg()[0]
    sum_kb = sum(p.stat().st_size for p in run.glob("*.summary")) / 1024 / a.ranks
    n = a.ranks
    lines = [
        "# Run-level analysis: 64 synthetic rank files",
        "",
        f"    python benchmarks/bench_ranks.py --ranks {n} --layers {a.layers} --iterations {a.iterations} --repeat {a.repeat}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work (1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after: the pool's CPUs were busy), Python {platform.python_version()}.",
        f"Run: {n} ranks written by `memprof.testing.write_run` in {t_write:.1f} s; {entries:,} trace entries per rank "
        f"(rank 0), {snap_mb:.1f} MiB of gzipped snapshots in all; one summary is {sum_kb:.1f} KiB on average.",
        "Each measurement: a fresh process, an empty columnar cache, best of "
        f"{a.repeat}; RSS is the process's peak (for the pool: the parent's, and the largest worker's).",
        "",
        "| what | wall time | per rank | peak RSS |",
        "| --- | ---: | ---: | ---: |",
        f"| one rank's summary (`summarize`) | {rows['one'][0]:.3f} s | {rows['one'][0]:.3f} s | {rows['one'][1]:.0f} MiB |",
        f"| all {n} summaries, one process (`load_summaries(RUN, workers=1)`) | {rows['serial'][0]:.2f} s | {rows['serial'][0] / n:.3f} s | {rows['serial'][1]:.0f} MiB |",
        f"| all {n} summaries, process pool of {os.cpu_count()} (`load_summaries(RUN)`) | {rows['pool'][0]:.2f} s | {rows['pool'][0] / n:.3f} s | {rows['pool'][1]:.0f} MiB (largest worker {rows['pool'][2]:.0f} MiB) |",
        f"| `memprof stats RUN --json` with the summaries written (at dump time) | {rows['stats'][0]:.3f} s | {rows['stats'][0] / n * 1000:.2f} ms | {rows['stats'][1]:.0f} MiB |",
        "",
        f"Pool vs one process: {rows['serial'][0] / rows['pool'][0]:.2f}x faster on {os.cpu_count()} CPUs. "
        f"Reading written summaries vs computing them: {rows['serial'][0] / rows['stats'][0]:.0f}x faster. "
        f"The parent of the pool holds summaries only ({sum_kb:.0f} KiB each), never a trace, so a run of 1,000 ranks "
        "needs one rank's memory per worker and about 1,000 summaries in the parent.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
