"""A run of many ranks (``torchrun``): one folder, one snapshot per rank, and small per-rank summaries.

Layout of a run folder, written by the recorder in each worker (:mod:`memprof.recorder.dist`)::

    RUN/rank{R}.pickle.gz     the rank's snapshot (PyTorch's own format, one per process)
    RUN/rank{R}.meta.json     its metadata; ``dist``: rank, local_rank, world_size, host, run_id ...
    RUN/rank{R}.summary       JSON, a few KB: peak, peak by category and by site, iterations and
                              a downsampled allocated-bytes timeline (:func:`summarize`)

Scale by design: run-level questions (which rank peaks highest, by how much, holding what) are
answered from the summaries alone; a rank's full snapshot is opened only when asked for (a
rank's timeline, ``explain RUN --rank R``, ``diff RUN --ranks A B``). The recorder writes each
summary at dump time; summaries that are missing or stale (the snapshot changed) are computed
in parallel, one process per rank file (:func:`load_summaries`).

Every byte figure in a summary comes from memprof's replay of that rank's snapshot (the same
numbers ``memprof stats`` and ``explain`` print for the file); ``allocator_peak_bytes`` is the
allocator's own ``torch.cuda.max_memory_allocated()`` from the metadata, when recorded.
No torch here.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from memprof.errors import MemprofError
from memprof.snapshot.meta import read_meta
from memprof.snapshot.runs import rank_files, rank_of, summary_path

SUMMARY_VERSION = 1
#: Points kept of each rank's timeline (min/max per bucket keeps every peak).
TIMELINE_BUCKETS = 300
#: Sites kept per rank at its peak.
SUMMARY_SITES = 40
# -- one rank ---------------------------------------------------------------------------------------
def _source_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def aligned_x(t_us: np.ndarray, iterations: list[dict[str, Any]], duration_us: float) -> np.ndarray:
    """Positions on the run's common axis: iteration k spans [k, k+1) (by its own start and end);
    before the first iteration -> [-1, 0), after the last -> [K, K+1). Without iterations: [0, 1]."""
    t = np.asarray(t_us, dtype=np.float64)
    if not iterations:
        return t / duration_us if duration_us > 0 else np.zeros_like(t)
    knots: list[tuple[float, float]] = []  # (time, position), increasing in time
    if float(iterations[0]["start_us"]) > 0:
        knots.append((0.0, -1.0))
    for k, it in enumerate(iterations):
        s = float(it["start_us"])
        if not knots or s > knots[-1][0]:
            knots.append((s, float(k)))
    e = float(iterations[-1]["end_us"])
    if e > knots[-1][0]:
        knots.append((e, float(len(iterations))))
    if duration_us > knots[-1][0]:
        knots.append((float(duration_us), float(len(iterations) + 1)))
    kx, ky = zip(*knots)
    return np.interp(t, kx, ky)


def summarize(path: str | os.PathLike[str], meta: dict[str, Any] | None = None, use_cache: bool = True) -> dict[str, Any]:
    """The summary of one rank's snapshot (a JSON-able dict). Never raises on a bad snapshot:
    ``error`` then says why and the peaks are None.

    Keys: version, source {name, size, mtime_ns}, rank, status, error, dist, device (index),
    device_name, entries, peak_allocated_bytes, peak_reserved_bytes, peak_time_us (from the
    window's start), allocator_peak_bytes, duration_us, start_us (trace clock), oom_events,
    by_category {category: bytes at the peak}, max_by_category {category: most bytes of it alive
    at once in the window}, by_site [{site, bytes, count}] (largest first),
    iterations [{iteration, start_us, end_us, peak_bytes}] (times from the window's start),
    timeline {t_us, allocated} (min/max per bucket, every peak kept).
    """
    from memprof.analysis import analyze
    from memprof.replay.downsample import minmax_step

    p = Path(path)
    meta = read_meta(p) if meta is None else meta
    dist = meta.get("dist") or {}
    out: dict[str, Any] = {
        "version": SUMMARY_VERSION, "source": _source_id(p),
        "rank": dist.get("rank", rank_of(p)), "status": meta.get("status") or "unknown", "error": meta.get("error"),
        "dist": dist or None, "device": None, "device_name": (meta.get("device") or {}).get("name"),
        "allocator_peak_bytes": meta.get("peak_allocated_bytes"),
        "peak_allocated_bytes": None, "peak_reserved_bytes": None, "peak_time_us": None,
    }  # fmt: skip
    try:
        an = analyze(p, meta=meta, use_cache=use_cache)
        rep = an.rep
        peak = an.peak.to_dict(SUMMARY_SITES)
        its = an.iterations
    except MemprofError as e:
        out["error"] = out["error"] or str(e)
        if out["status"] in ("ok", "unknown"):
            out["status"] = "unreadable"
        return out
    cat_max = max_by_category(an.allocations, rep.n_events)
    t0 = float(rep.start_us)
    tl = rep.timeline
    x = tl["time_us"].to_numpy(dtype=np.float64) - t0
    y = tl["allocated"].to_numpy()
    keep = minmax_step(x, y, n_buckets=TIMELINE_BUCKETS)
    out.update(
        device=int(rep.device), entries=int(rep.n_events), start_us=t0, duration_us=float(rep.duration_us),
        peak_allocated_bytes=int(rep.peak_bytes), peak_reserved_bytes=int(rep.peak_reserved_bytes),
        peak_time_us=float(rep.peak_time_us) - t0, oom_events=int(len(rep.oom_events)),
        by_category={k: int(v) for k, v in peak["by_category"].items()}, max_by_category=cat_max,
        by_site=[{"site": s["site"], "bytes": s["bytes"], "count": s["count"]} for s in peak["by_site"]],
        iterations=[{"iteration": int(r.iteration), "start_us": float(r.start_us) - t0, "end_us": float(r.end_us) - t0,
                     "peak_bytes": int(r.peak_bytes) if r.peak_bytes == r.peak_bytes else None}
                    for r in its.itertuples(index=False)],
        timeline={"t_us": [round(float(v), 3) for v in x[keep]], "allocated": [int(v) for v in y[keep]]},
    )  # fmt: skip
    return out


def max_by_category(allocations: pd.DataFrame, n_events: int) -> dict[str, int]:
    """The most bytes each category holds alive at once (after any event of the window).

    ``allocations``: memprof's categorised allocations (alloc_idx -1: alive before the window;
    free_idx -1: alive at its end). One cumulative sum over +size at allocation, -size at free
    per category.
    """
    out: dict[str, int] = {}
    if not len(allocations):
        return out
    ai = allocations["alloc_idx"].to_numpy().astype(np.int64) + 1  # -1 (before) -> slot 0
    fi = allocations["free_idx"].to_numpy().astype(np.int64)
    fi = np.where(fi < 0, n_events + 1, fi + 1)  # never freed -> past the end
    size = allocations["size"].to_numpy().astype(np.int64)
    cats = allocations["category"].astype(str).to_numpy()
    for c in np.unique(cats):
        m = cats == c
        d = np.bincount(ai[m], weights=size[m], minlength=n_events + 2) - np.bincount(fi[m], weights=size[m], minlength=n_events + 2)
        out[str(c)] = int(round(np.cumsum(d)[: n_events + 1].max()))
    return out


def write_summary(path: str | os.PathLike[str], summary: dict[str, Any] | None = None, to: Path | None = None) -> Path:
    """Compute (unless given) and write ``rank{R}.summary`` beside the snapshot (or at ``to``), atomically."""
    s = summarize(path) if summary is None else summary
    sp = summary_path(path) if to is None else to
    fd, tmp = tempfile.mkstemp(dir=sp.parent, prefix=f".{sp.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(s, f, separators=(",", ":"))
    os.replace(tmp, sp)
    return sp


def _num(v: Any, none: bool = True) -> bool:
    return (v is None and none) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def valid_summary(s: Any) -> bool:
    """True when ``s`` has the shape :func:`summarize` writes (summary files are untrusted input)."""
    try:
        if not isinstance(s, dict) or not all(_num(s.get(k)) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "peak_time_us",
                                                                       "duration_us", "allocator_peak_bytes")):
            return False
        if not isinstance(s.get("status"), str) or not isinstance(s.get("error") or "", str):
            return False
        if not isinstance(s.get("dist") or {}, dict) or not all(isinstance(k, str) and _num(v, False) for k, v in (s.get("by_category") or {}).items()):
            return False
        if not all(isinstance(x["site"], str) and _num(x["bytes"], False) for x in s.get("by_site") or []):
            return False
        if not all(_num(x["start_us"], False) and _num(x["end_us"], False) for x in s.get("iterations") or []):
            return False
        tl = s.get("timeline") or {"t_us": [], "allocated": []}
        return (len(tl["t_us"]) == len(tl["allocated"]) and all(_num(v, False) for v in tl["t_us"])
                and all(_num(v, False) for v in tl["allocated"]))
    except (TypeError, KeyError, AttributeError):
        return False


def cached_summary_path(snapshot: str | os.PathLike[str]) -> Path:
    """Where a reader that must not write beside the snapshot (``memprof serve``) keeps the summary
    it computed: memprof's cache folder, keyed by the file's path, size and mtime."""
    from memprof.snapshot.cache import cache_key, cache_dir

    return cache_dir() / "summaries" / f"{cache_key(Path(snapshot))}.summary"


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The summary beside a snapshot (or in the cache folder) when it is current (same version,
    size and mtime) and well formed, else None (it is then recomputed from the snapshot)."""
    p = Path(path)
    for sp in (summary_path(p), cached_summary_path(p)):
        try:
            s = json.loads(sp.read_text())
            if isinstance(s, dict) and s.get("version") == SUMMARY_VERSION and s.get("source") == _source_id(p) and valid_summary(s):
                return s
        except (OSError, ValueError, RecursionError):
            continue
    return None


def _summarize_and_write(path: str, beside: bool = True) -> dict[str, Any]:
    s = summarize(path)
    try:
        if beside:
            write_summary(path, s)
        else:
            cp = cached_summary_path(path)
            cp.parent.mkdir(parents=True, exist_ok=True)
            write_summary(path, s, to=cp)
    except OSError:
        pass  # a read-only run folder or cache: the summary is still returned
    return s


# -- the run ---------------------------------------------------------------------------------------
def load_summaries(run: str | os.PathLike[str], workers: int | None = None, beside: bool = True) -> list[dict[str, Any]]:
    """Every rank's summary, by rank; missing or stale ones computed in a process pool of
    ``workers`` (default: the CPU count; 1: in this process) and written beside their snapshots
    (``beside=False``, the dashboard: in memprof's cache folder, never into the run folder).

    Ranks the metadata's ``world_size`` promises but that wrote no file get a row with status
    ``missing``.
    """
    files = rank_files(run)
    if not files:
        raise MemprofError(f"{run}: not a run folder (no rank{{R}}.pickle[.gz] files)")
    found: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, Path]] = []
    for r, p in files.items():
        s = read_summary(p)
        if s is None:
            todo.append((r, p))
        else:
            found[r] = s
    n = min(workers or os.cpu_count() or 1, len(todo))
    if n > 1:
        import memprof.analysis  # noqa: F401 - imported once here, inherited by forked workers
        with ProcessPoolExecutor(max_workers=n) as pool:
            for (r, _), s in zip(todo, pool.map(_summarize_and_write, [str(p) for _, p in todo], [beside] * len(todo))):
                found[r] = s
    else:
        for r, p in todo:
            found[r] = _summarize_and_write(str(p), beside)
    world = max([int((s.get("dist") or {}).get("world_size") or 0) for s in found.values()] + [max(files) + 1])
    for r in range(world):
        if r not in found:
            found[r] = {"rank": r, "status": "missing", "error": "this rank wrote no snapshot",
                        "peak_allocated_bytes": None, "peak_reserved_bytes": None, "peak_time_us": None}
    for r, s in found.items():
        s["rank"] = r  # the file's name is the truth for where it sits in the run
    return [found[r] for r in sorted(found)]


def ranks_frame(summaries: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per rank.

    Columns: rank, status, peak_allocated_bytes, peak_reserved_bytes, peak_time_us,
    allocator_peak_bytes, host, device_name, error.
    """
    rows = [{
        "rank": int(s["rank"]), "status": str(s.get("status")), "peak_allocated_bytes": s.get("peak_allocated_bytes"),
        "peak_reserved_bytes": s.get("peak_reserved_bytes"), "peak_time_us": s.get("peak_time_us"),
        "allocator_peak_bytes": s.get("allocator_peak_bytes"), "host": (s.get("dist") or {}).get("host"),
        "device_name": s.get("device_name"), "error": s.get("error"),
    } for s in summaries]  # fmt: skip
    return pd.DataFrame(rows, columns=["rank", "status", "peak_allocated_bytes", "peak_reserved_bytes", "peak_time_us",
                                       "allocator_peak_bytes", "host", "device_name", "error"])


def _holds_more(h: dict[str, int], lo: dict[str, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"key": k, "heaviest_bytes": int(h.get(k, 0)), "lightest_bytes": int(lo.get(k, 0)),
             "delta": int(h.get(k, 0)) - int(lo.get(k, 0))} for k in set(h) | set(lo)]
    return sorted((r for r in rows if r["delta"] > 0), key=lambda r: (-r["delta"], r["key"]))


def imbalance(summaries: Iterable[dict[str, Any]], top: int = 10) -> dict[str, Any] | None:
    """The heaviest and the lightest rank by peak allocated bytes, and what the heaviest holds at
    its peak that the lightest does not (positive differences only, largest first).

    Keys: heaviest_rank, heaviest_bytes, lightest_rank, lightest_bytes, ratio (heaviest / lightest),
    spread_bytes, by_category [{category, heaviest_bytes, lightest_bytes, delta}],
    by_site [{site, heaviest_bytes, lightest_bytes, delta}]. None when no rank has a peak.
    """
    rs = [s for s in summaries if s.get("peak_allocated_bytes") is not None]
    if not rs:
        return None
    h = max(rs, key=lambda s: (s["peak_allocated_bytes"], -s["rank"]))
    lo = min(rs, key=lambda s: (s["peak_allocated_bytes"], s["rank"]))
    cats = _holds_more(h.get("by_category") or {}, lo.get("by_category") or {})
    sites_h = {x["site"]: x["bytes"] for x in h.get("by_site") or []}
    sites_l = {x["site"]: x["bytes"] for x in lo.get("by_site") or []}
    sites = _holds_more(sites_h, sites_l)[:top]
    hb, lb = int(h["peak_allocated_bytes"]), int(lo["peak_allocated_bytes"])
    return {
        "heaviest_rank": int(h["rank"]), "heaviest_bytes": hb, "lightest_rank": int(lo["rank"]), "lightest_bytes": lb,
        "ratio": (hb / lb) if lb else None, "spread_bytes": hb - lb,
        "by_category": [{"category": r["key"], **{k: r[k] for k in ("heaviest_bytes", "lightest_bytes", "delta")}} for r in cats],
        "by_site": [{"site": r["key"], **{k: r[k] for k in ("heaviest_bytes", "lightest_bytes", "delta")}} for r in sites],
    }  # fmt: skip


def aligned_timelines(summaries: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """All ranks' downsampled timelines on one axis aligned by iteration (:func:`aligned_x`).

    Columns: rank, x (iteration k spans [k, k+1)), t_us (from the rank's window start), allocated.
    """
    parts = []
    for s in summaries:
        tl = s.get("timeline")
        if not tl or not tl.get("t_us"):
            continue
        t = np.asarray(tl["t_us"], dtype=np.float64)
        parts.append(pd.DataFrame({"rank": int(s["rank"]), "x": aligned_x(t, s.get("iterations") or [], float(s.get("duration_us") or 0)),
                                   "t_us": t, "allocated": np.asarray(tl["allocated"], dtype=np.int64)}))
    if not parts:
        return pd.DataFrame({"rank": [], "x": [], "t_us": [], "allocated": []})
    return pd.concat(parts, ignore_index=True)


def run_dict(run: str | os.PathLike[str], workers: int | None = None, top: int = 10) -> dict[str, Any]:
    """What ``memprof stats RUN --json`` prints: run, world_size, ranks [{rank, peak_allocated_bytes,
    peak_reserved_bytes, peak_time_us, status, allocator_peak_bytes, host, error}], imbalance."""
    sums = load_summaries(run, workers)
    df = ranks_frame(sums)
    ranks = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items() if k != "device_name"}
             for r in df.to_dict("records")]
    return {"run": str(run), "world_size": len(sums), "ranks": ranks, "imbalance": imbalance(sums, top)}


def write_rank_summary(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write a rank's summary beside its snapshot, right after it was recorded; a failure is noted in
    the metadata's ``summary_error`` and the summary is computed later by whoever reads the run."""
    from memprof.snapshot.meta import write_meta

    try:
        write_summary(path, summarize(path, meta))
    except Exception as e:  # noqa: BLE001 - the snapshot is safe; the summary can be rebuilt
        meta["summary_error"] = f"{type(e).__name__}: {e}"
        write_meta(path, meta)
