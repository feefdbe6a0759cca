"""Time ``analyze()`` and each analysis table on a big snapshot.

    python benchmarks/make_big_snapshot.py /tmp/big.pickle
    python benchmarks/bench_analysis.py /tmp/big.pickle
"""

from __future__ import annotations

import sys
import time

from memprof.analysis import analyze
from memprof.snapshot.load import load


def main(path: str) -> None:
    t0 = time.perf_counter()
    snap = load(path)
    t1 = time.perf_counter()
    print(f"load (cache {'hit' if t1 - t0 < 5 else 'miss'}): {t1 - t0:.2f} s, {len(snap.events):,} entries")
    an = analyze(snap)
    t2 = time.perf_counter()
    print(f"replay: {t2 - t1:.2f} s")
    for name in ("phases", "allocations", "iterations", "leak", "verdict", "peak", "fragmentation", "oom"):
        s = time.perf_counter()
        getattr(an, name)
        print(f"{name:<14} {time.perf_counter() - s:.3f} s")
    print(f"analysis after load: {time.perf_counter() - t1:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
