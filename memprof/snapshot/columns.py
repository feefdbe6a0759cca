"""The raw snapshot object -> :class:`memprof.snapshot.tables.Snapshot`: trace columns, segments
and blocks, annotations, and the C loader's fast path (which hands over columns directly).

Every historical shape is read: a bare list of segments, torch 2.0's block ``history`` (no block
address, no ``time_us``), traces of one entry, ``snapshot`` markers, empty traces, private pools
(``segment_pool_id``) and several devices.
"""

from __future__ import annotations

import gc
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memprof.errors import MemprofError
from memprof.escape import printable
from memprof.snapshot import limits
from memprof.snapshot.frames import StackInterner
from memprof.snapshot.read import fastpickle_module, normalise, one_line_errors, open_checked
from memprof.snapshot.schema import ATTRIBUTION_KEY
from memprof.snapshot.tables import A_OOM, A_OTHER, ACTION_CODE, ACTIONS, Snapshot

# Columns

_EMPTY: list[Any] = []


def _column(trace: list[dict[str, Any]], key: str, default: int, dtype: Any) -> np.ndarray:
    n = len(trace)
    try:
        return np.fromiter(map(itemgetter(key), trace), dtype=dtype, count=n)
    except KeyError:
        return np.fromiter((e.get(key, default) for e in trace), dtype=dtype, count=n)
    except (TypeError, ValueError, OverflowError):
        vals = [e.get(key, default) if isinstance(e, dict) else None for e in trace]
        bad = next((v for v in vals if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
        if bad is None:  # ints beyond int64 are kept (unsigned 64-bit) or clamped: never a refusal
            return np.fromiter(map(limits.to_i64, vals), dtype=dtype, count=n)
        raise MemprofError(f"trace entry field {key!r} holds {bad!r}: not a snapshot this tool understands") from None


def _trace_columns(trace: list[dict[str, Any]], device: int, interner: StackInterner, info: dict[str, Any]) -> dict[str, np.ndarray]:
    n = len(trace)
    if n and not isinstance(trace[0], dict):
        raise MemprofError("trace entries are not dicts: not a snapshot this tool understands")
    try:
        action = np.fromiter(map(ACTION_CODE.__getitem__, map(itemgetter("action"), trace)), dtype=np.int8, count=n)
    except (KeyError, TypeError):
        names = [e.get("action") if isinstance(e, dict) else None for e in trace]
        if any(a is None for a in names):
            raise MemprofError("a trace entry has no 'action': not a snapshot this tool understands") from None
        if not all(isinstance(a, str) for a in names):
            raise MemprofError("a trace entry's 'action' is not a string: not a snapshot this tool understands") from None
        strs = [str(a) for a in names]  # all str, checked above
        unknown = sorted({a for a in strs if a not in ACTION_CODE})
        info.setdefault("unknown_actions", []).extend(unknown)
        action = np.fromiter((ACTION_CODE.get(a, A_OTHER) for a in strs), dtype=np.int8, count=n)
    cols: dict[str, np.ndarray] = {
        "device": np.full(n, device, dtype=np.int16),
        "idx": np.arange(n, dtype=np.int64),
        "action": action,
        "addr": _column(trace, "addr", -1, np.int64),
        "size": _column(trace, "size", 0, np.int64),
        "stream": _column(trace, "stream", 0, np.int64),
    }
    has_time = n == 0 or "time_us" in trace[0]
    cols["time_us"] = _column(trace, "time_us", 0, np.int64) if has_time else np.arange(n, dtype=np.int64)
    info["has_time"] = bool(info.get("has_time", True) and has_time)
    frames = list(map(_get_frames, trace))
    cols["stack_id"] = interner.stacks_for(frames)
    del frames
    oom = np.flatnonzero(action == A_OOM)
    dfree = np.full(n, -1, dtype=np.int64)
    for i in oom:
        dfree[i] = limits.to_i64(trace[i].get("device_free", -1) or -1)
    cols["device_free"] = dfree
    cols["user_metadata"] = _string_codes(trace, "user_metadata", info.setdefault("user_metadata_values", []))
    return cols


def _string_codes(trace: list[dict[str, Any]], key: str, values: list[str]) -> np.ndarray:
    """Per-entry optional string as int32 codes into ``values`` (-1: absent or empty)."""
    n = len(trace)
    if not any(key in e for e in trace):
        return np.full(n, -1, dtype=np.int32)
    index = {v: i for i, v in enumerate(values)}

    def code(e: dict[str, Any]) -> int:
        v = e.get(key)
        if not v:
            return -1
        c = index.get(v)
        if c is None:
            c = index[v] = len(values)
            values.append(str(v))
        return c

    return np.fromiter(map(code, trace), dtype=np.int32, count=n)


def _get_frames(e: dict[str, Any]) -> Any:
    return e.get("frames", _EMPTY) or _EMPTY


def _segments_and_blocks(segments: list[dict[str, Any]], interner: StackInterner) -> tuple[pd.DataFrame, pd.DataFrame]:
    seg_rows: dict[str, list[Any]] = {k: [] for k in (
        "device", "address", "total_size", "allocated_size", "active_size", "requested_size",
        "stream", "segment_type", "pool_id", "is_expandable", "stack_id")}
    blk_rows: dict[str, list[Any]] = {k: [] for k in ("device", "segment", "addr", "size", "requested_size", "state", "stack_id")}
    for i, s in enumerate(segments):
        if not isinstance(s, dict) or "address" not in s or "total_size" not in s:
            raise MemprofError("a segment has no 'address' or 'total_size': not a snapshot this tool understands")
        dev = int(s.get("device", 0))
        blocks = s.get("blocks", []) or []
        addr = int(s["address"])
        alloc_sz = act_sz = req_sz = 0
        for b in blocks:
            size = int(b.get("size", 0))
            state = str(b.get("state", "inactive"))
            frames = b.get("frames")
            req = b.get("requested_size")
            if frames is None and b.get("history"):  # legacy (torch <= 2.0) block history
                h0 = b["history"][0]
                frames = h0.get("frames")
                req = req or h0.get("real_size")
            req = int(req if req is not None else size)
            baddr = int(b.get("address", addr))
            blk_rows["device"].append(dev)
            blk_rows["segment"].append(i)
            blk_rows["addr"].append(baddr)
            blk_rows["size"].append(size)
            blk_rows["requested_size"].append(req)
            blk_rows["state"].append(state)
            blk_rows["stack_id"].append(interner.stack(frames or _EMPTY))
            if state == "active_allocated":
                alloc_sz += size
                req_sz += req
            if state.startswith("active"):
                act_sz += size
            addr = baddr + size
        pool = s.get("segment_pool_id", (0, 0))
        seg_rows["device"].append(dev)
        seg_rows["address"].append(int(s["address"]))
        seg_rows["total_size"].append(int(s["total_size"]))
        seg_rows["allocated_size"].append(int(s.get("allocated_size", alloc_sz)))
        seg_rows["active_size"].append(int(s.get("active_size", act_sz)))
        seg_rows["requested_size"].append(int(s.get("requested_size", req_sz)))
        seg_rows["stream"].append(int(s.get("stream", 0)))
        seg_rows["segment_type"].append(str(s.get("segment_type", "large" if int(s["total_size"]) > 1 << 20 else "small")))
        seg_rows["pool_id"].append(str(tuple(pool)) if isinstance(pool, (list, tuple)) else str(pool))
        seg_rows["is_expandable"].append(bool(s.get("is_expandable", False)))
        seg_rows["stack_id"].append(interner.stack(s.get("frames") or _EMPTY))
    seg = pd.DataFrame(seg_rows).astype(
        {"device": np.int16, "address": np.int64, "total_size": np.int64, "allocated_size": np.int64,
         "active_size": np.int64, "requested_size": np.int64, "stream": np.int64, "stack_id": np.int32}
    )
    blk = pd.DataFrame(blk_rows).astype(
        {"device": np.int16, "segment": np.int64, "addr": np.int64, "size": np.int64,
         "requested_size": np.int64, "stack_id": np.int32}
    )
    return seg, blk


def _annotations(raw: dict[str, Any]) -> pd.DataFrame:
    rows = raw.get("external_annotations") or []
    out: dict[str, list[Any]] = {"device": [], "stage": [], "name": [], "time_us": []}
    for a in rows:
        if not isinstance(a, dict):
            continue
        out["device"].append(int(a.get("device", 0)))
        out["stage"].append(str(a.get("stage", "")))
        out["name"].append(str(a.get("name", "")))
        out["time_us"].append(int(a.get("time_us", 0)))
    df = pd.DataFrame(out).astype({"device": np.int16, "time_us": np.int64})
    return df.sort_values(["device", "time_us"], kind="stable", ignore_index=True)


_EVENT_DTYPES: tuple[tuple[str, Any], ...] = (
    ("device", np.int16), ("idx", np.int64), ("action", np.int8), ("addr", np.int64), ("size", np.int64),
    ("stream", np.int64), ("time_us", np.int64), ("stack_id", np.int32), ("device_free", np.int64),
    ("user_metadata", np.int32),
)


def _start_info(snap: dict[str, Any], source: str, entries_per_device: list[int], file_format: str, file_size: int) -> dict[str, Any]:
    """The ``info`` dict shared by both loaders.

    An empty trace (no history recorded, or history cleared) is not an error: the segments still
    hold the state at dump time, which every command shows.
    """
    segments_raw = snap.get("segments") or []
    legacy = bool(snap.get("_legacy_segment_list"))
    n_devices = len(entries_per_device)
    seg_devices = [int(s.get("device", 0)) for s in segments_raw if isinstance(s, dict)]
    if seg_devices:
        n_devices = max(n_devices, max(seg_devices) + 1)
    return {
        "n_devices": n_devices,
        "format": file_format,
        "file_size": file_size,
        "legacy_segment_list": legacy,
        "allocator_settings": snap.get("allocator_settings") or {},
        "user_metadata": snap.get("user_metadata") or {},
        "attribution": snap.get(ATTRIBUTION_KEY) if isinstance(snap.get(ATTRIBUTION_KEY), dict) else None,
        "has_time": True,
        "unknown_actions": [],
        "entries_per_device": list(entries_per_device),
        "user_metadata_values": [],
    }


def _escape_text(annotations: pd.DataFrame, info: dict[str, Any]) -> None:
    """File text that reports print (annotation names, user_metadata phase labels) with control
    characters escaped, as frames are when interned: one escaping function for all of it."""
    for col in ("stage", "name"):
        if len(annotations):
            annotations[col] = annotations[col].map(printable)
    info["user_metadata_values"] = [printable(v) for v in info.get("user_metadata_values") or []]


def _build_snapshot(
    snap: dict[str, Any], source: str, parts: list[dict[str, np.ndarray]], interner: StackInterner, info: dict[str, Any]
) -> Snapshot:
    """Everything but the trace columns, shared by both loaders: segments, blocks, annotations."""
    if len(parts) == 1:
        cols = parts[0]  # one device: no copy
    elif parts:
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        cols = {k: np.zeros(0, dtype=t) for k, t in _EVENT_DTYPES}
    info["has_frames"] = bool(len(interner.stacks))
    segs, blocks = _segments_and_blocks(snap.get("segments") or [], interner)
    annotations = _annotations(snap)
    _escape_text(annotations, info)
    offsets, flat = interner.csr()
    events = pd.DataFrame(cols, copy=False)
    return Snapshot(
        source=source,
        events=events,
        frames=interner.frames_frame(),
        stack_offsets=offsets,
        stack_frames=flat,
        segments=segs,
        blocks=blocks,
        annotations=annotations,
        info=info,
    )


def columns_from_raw(raw: Any, source: str = "<snapshot>", file_format: str = "dict", file_size: int = 0) -> Snapshot:
    """Turn a raw snapshot object (dict or legacy list) into a columnar :class:`Snapshot`."""
    snap = normalise(raw, source)
    traces = snap.get("device_traces") or []
    for dev, trace in enumerate(traces):
        if not isinstance(trace, list):
            raise MemprofError(f"{source}: device_traces[{dev}] is not a list: not a snapshot this tool understands")
    info = _start_info(snap, source, [len(t) for t in traces], file_format, file_size)
    interner = StackInterner()
    parts = [_trace_columns(trace, dev, interner, info) for dev, trace in enumerate(traces)]
    return _build_snapshot(snap, source, parts, interner, info)


def _columns_from_fast(
    root: Any, stacks: list[Any], um_values: list[str], source: str, file_format: str, file_size: int
) -> Snapshot:
    """A :class:`Snapshot` from the C loader's result: ``root['device_traces']`` holds column dicts."""
    snap = normalise(root, source)
    traces: list[dict[str, Any]] = snap.get("device_traces") or []
    info = _start_info(snap, source, [int(c["n"]) for c in traces], file_format, file_size)
    info["user_metadata_values"] = list(um_values)
    interner = StackInterner()
    # The C loader deduplicated stacks by frame identity, in order of first appearance: interning
    # them in that order gives the same ids as the pure loader. -1 (no frames) maps to the last slot.
    stack_map = np.fromiter((interner.stack(s) for s in stacks), dtype=np.int32, count=len(stacks))
    stack_map = np.append(stack_map, np.int32(-1))
    parts: list[dict[str, np.ndarray]] = []
    for dev, c in enumerate(traces):
        n = int(c["n"])
        present = c["present"]
        if present["action"] < n:
            raise MemprofError("a trace entry has no 'action': not a snapshot this tool understands")
        info["unknown_actions"].extend(str(u) for u in sorted(c["unknown_actions"]))
        action = np.frombuffer(c["action"], dtype=np.int8)
        has_time = bool(c["time_us_first"])
        info["has_time"] = bool(info["has_time"] and has_time)
        dfree = np.frombuffer(c["device_free"], dtype=np.int64)
        if present["device_free"]:
            dfree = np.where((action == A_OOM) & (dfree != 0), dfree, -1)  # as `int(e.get(..., -1) or -1)` for oom entries
        else:
            dfree = np.full(n, -1, dtype=np.int64)
        parts.append(
            {
                "device": np.full(n, dev, dtype=np.int16),
                "idx": np.arange(n, dtype=np.int64),
                "action": action,
                "addr": np.frombuffer(c["addr"], dtype=np.int64),
                "size": np.frombuffer(c["size"], dtype=np.int64),
                "stream": np.frombuffer(c["stream"], dtype=np.int64),
                "time_us": np.frombuffer(c["time_us"], dtype=np.int64) if has_time else np.arange(n, dtype=np.int64),
                "stack_id": stack_map[np.frombuffer(c["stack"], dtype=np.int32)],
                "device_free": dfree,
                "user_metadata": np.frombuffer(c["user_metadata"], dtype=np.int32),
            }
        )
        c.clear()  # drop the column bytes we no longer need
    return _build_snapshot(snap, source, parts, interner, info)


def load_fast(path: Path, file_format: str | None = None) -> Snapshot | None:
    """Load a pickle snapshot with the C streaming loader; None when it cannot (then use the pure loader).

    Raises :class:`MemprofError` for a truncated or corrupt file or one beyond a limit.
    """
    try:
        fp = fastpickle_module()
    except ImportError:
        return None
    reader, fmt = open_checked(path)
    if fmt.startswith("json"):
        reader.close()
        return None
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with one_line_errors(path, "pickle"), reader:
            try:
                root, fast, stacks, um_values = fp.load(reader, ACTIONS, reader.limit, limits.max_depth())
            except fp.Limit as e:
                raise limits.limit_error(e.args[0], f"{path}: {e.args[1]}", limit=reader.limit) from None
            except fp.Malformed as e:
                raise MemprofError(f"{path}: truncated or corrupt snapshot ({e})") from None
            reader.drain()
    except fp.Unsupported:
        return None
    finally:
        if gc_was:
            gc.enable()
    size = path.stat().st_size
    with one_line_errors(path):
        limits.check_expansion(root, reader.count, str(path))
        if not fast:  # no device_traces recognised (e.g. a legacy segment list): plain objects
            return columns_from_raw(root, source=str(path), file_format=fmt, file_size=size)
        return _columns_from_fast(root, stacks, um_values, str(path), fmt, size)
