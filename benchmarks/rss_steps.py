"""Peak RSS after each step of ``memprof explain``'s analysis on one snapshot (no cache).

    MEMPROF_MAX_BYTES=8G PYTHONPATH=. python benchmarks/rss_steps.py /tmp/big/big10m.pickle
"""

from __future__ import annotations

import resource
import sys
import time


def main(path: str) -> None:
    t0 = time.perf_counter()

    def report(tag: str) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{tag:<14} peak RSS {rss:6.0f} MiB   t = {time.perf_counter() - t0:5.1f} s", flush=True)

    from memprof.analysis import analyze
    from memprof.snapshot.load import load

    report("imports")
    snap = load(path, use_cache=False)
    report("load")
    an = analyze(snap)
    report("replay")
    for name in ("phases", "allocations", "iterations", "leak", "verdict", "peak", "fragmentation", "oom"):
        getattr(an, name)
        report(name)


if __name__ == "__main__":
    main(sys.argv[1])
