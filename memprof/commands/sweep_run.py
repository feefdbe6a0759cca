"""Running a sweep: every configuration of a grid recorded in this process, one row (and snapshot)
each, appended to ``results.csv`` as it is done so an interrupted sweep resumes. The grids and
the tables drawn from the rows are :mod:`memprof.analysis.sweeps`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from memprof.analysis.sweeps import append_row, config_key, meta_to_row, read_results


def run_sweep(
    configs: list[dict[str, Any]],
    out_dir: Path,
    snapshots: bool = True,
    device: str | None = None,
    steps: int = 3,
    warmup: int = 2,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    prime: bool = True,
) -> pd.DataFrame:
    """Record every config not already in ``out_dir/results.csv``; return all rows.

    Each row is appended to ``results.csv`` as soon as it is done. OOM rows are kept
    (status ``oom``) and the sweep goes on. ``prime``: first run one untimed step of the
    cheapest eager config (:func:`prime_process`), so the first row is timed like the others.
    """
    from tqdm import tqdm

    from memprof.snapshot.load import load
    from memprof.recorder.runner import record_workload
    from memprof.replay.timeline import replay
    from memprof.workloads import build, resolve_device

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    done = set(read_results(csv_path)["key"].astype(str))
    todo = [c for c in configs if config_key(c) not in done]
    dev = resolve_device(device)
    if todo and prime:
        prime_process(todo, dev, record_workload, build)
    bar = tqdm(todo, desc="sweep", unit="config", disable=not progress)
    for cfg in bar:
        key = config_key(cfg)
        bar.set_postfix_str(key)
        opts = {k: v for k, v in cfg.items() if k != "kind"}
        path = out_dir / f"{key}-{dev.type}.pickle.gz" if snapshots else None
        meta = record_workload(build(cfg["kind"], **opts), path, dev, steps=steps, warmup=warmup, progress=False,
                               command=f"memprof record {cfg['kind']} " + " ".join(_cli_args(cfg)))  # fmt: skip
        peak = None
        if path is not None and meta["status"] == "ok":
            peak = replay(load(path, use_cache=False)).peak_bytes
        row = meta_to_row(cfg, meta, peak)
        append_row(csv_path, row)
        if on_row:
            on_row(row)
    bar.close()
    df = read_results(csv_path)
    keys = [config_key(c) for c in configs]
    return df[df["key"].isin(keys)].reset_index(drop=True)


def prime_process(todo: Sequence[dict[str, Any]], dev: Any, record_workload: Callable[..., Any], build: Callable[..., Any]) -> dict[str, Any]:
    """One untimed, unrecorded step of the first eager config, before any row is timed.

    A configuration's own warm-up steps warm *its* shapes, but the first one a process runs also
    pays for what happens once per process (intra-op thread pool start, allocator arenas, lazy
    kernel and autograd initialisation); on CPU that showed as a first row of 10.2 ± 9.9 ms next to
    0.13 ms. Priming pays it outside every measurement. Returns the config primed with."""
    eager = [c for c in todo if not c.get("compile") and c.get("impl") != "compiled"] or list(todo)
    cfg = eager[0]
    record_workload(build(cfg["kind"], **{k: v for k, v in cfg.items() if k != "kind"}), None, dev, steps=1, warmup=1,
                    progress=False, profile_steps=0)  # fmt: skip
    return cfg


def _cli_args(cfg: dict[str, Any]) -> list[str]:
    out = []
    for k, v in cfg.items():
        if k == "kind" or v is False or v is None:
            continue
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out
