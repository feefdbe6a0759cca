"""``memprof record [-o RUN] -- torchrun ... train.py``: torchrun as a child, every worker recorded.

memprof is injected into each worker through the environment (:mod:`memprof.recorder.inject`);
each rank writes ``RUN/rank{R}.pickle.gz``, its ``.meta.json`` and its ``.summary``.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from memprof.errors import MemprofError
from memprof.units import fmt_bytes


LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")


def is_launcher(argv: list[str]) -> bool:
    """``torchrun ...`` or ``python -m torch.distributed.run ...``."""
    if os.path.basename(argv[0]) == "torchrun":
        return True
    return os.path.basename(argv[0]).startswith("python") and len(argv) > 2 and argv[1] == "-m" and argv[2] in LAUNCHER_MODULES


def run_launcher(args: argparse.Namespace, argv: list[str]) -> int:
    """Run torchrun as a child with memprof injected into every worker (:mod:`memprof.recorder.inject`).

    Every rank writes ``RUN/rank{R}.pickle.gz`` (+ metadata, summary). Exit status: torchrun's;
    when no rank wrote a snapshot, an error.
    """
    import subprocess

    from memprof.recorder.inject import environment
    from memprof.analysis.ranks import load_summaries
    from memprof.snapshot.runs import rank_files, strip_suffix

    script = next((Path(a).stem for a in argv[1:] if a.endswith(".py")), "script")
    run_dir = strip_suffix(Path(args.output) if args.output else Path("snapshots") / f"torchrun-{script}")
    if run_dir.exists() and rank_files(run_dir):
        for old in run_dir.iterdir():  # a new run replaces the old one's rank files, not other files
            if old.name.startswith("rank") and (old.name.endswith((".pickle", ".pickle.gz", ".meta.json", ".summary"))):
                old.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    opts = {"device": args.device, "max_entries": args.max_entries, "stacks": args.stacks, "compress": True,
            "command": "memprof record -- " + " ".join(shlex.quote(a) for a in argv)}
    env = environment(run_dir, opts)
    try:
        rc = subprocess.call(argv, env=env)
    except FileNotFoundError:
        raise MemprofError(f"{argv[0]}: command not found") from None
    files = rank_files(run_dir)
    if not files:
        raise MemprofError(f"torchrun exited {rc} and no worker recorded anything under {run_dir} "
                           "(are the workers Python processes of this interpreter?)", exit_code=rc or 1)
    print(f"{run_dir}  {len(files)} rank(s)")
    for s in load_summaries(run_dir):  # the ranks' summaries, computed in parallel and written beside them
        peak = s.get("peak_allocated_bytes")
        print(f"  rank {s['rank']:<4} status {s['status']:<10} peak allocated {fmt_bytes(peak) if peak is not None else '-':>10}"
              + (f"   {s['error']}" if s.get("error") and s["status"] != "ok" else ""))
    return rc
