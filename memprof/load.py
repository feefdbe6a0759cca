"""Read a PyTorch memory snapshot file into columns.

This is the only module that touches the raw nested dicts. It reads ``.pickle``,
``.pickle.gz`` and ``.json`` snapshots written by torch 2.0 to 2.14 with the
restricted unpickler, interns stacks once, and returns a :class:`Snapshot` of
pandas DataFrames and numpy arrays. Every historical shape is read: a bare list of
segments, torch 2.0's block ``history`` (no block address, no ``time_us``), traces of
one entry, ``snapshot`` markers, empty traces (only the state at dump time: see
:meth:`Snapshot.state_totals`), private pools (``segment_pool_id``) and several devices. A per-file cache (Arrow IPC, keyed by the
file's path, size and mtime) makes reopening fast.

No torch import is needed here.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from memprof import background, limits, malloc_tuning
from memprof.errors import MemprofError, UnsafePickleError
from memprof.escape import printable
from memprof.meta import snapshot_beside
from memprof.safe_pickle import safe_load, scan
from memprof.schema import ATTRIBUTION_KEY

CACHE_VERSION = "5"  # 5: file text escaped at load, attribution kept, empty traces (v0.2); 4: stack ids in order of first appearance

#: Trace actions in code order; ``other`` holds actions this version of memprof does not know.
ACTIONS: tuple[str, ...] = (
    "alloc",
    "free_requested",
    "free_completed",
    "free",
    "segment_alloc",
    "segment_free",
    "segment_map",
    "segment_unmap",
    "oom",
    "snapshot",
    "other",
)
ACTION_CODE: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
A_ALLOC, A_FREE_REQ, A_FREE_DONE, A_FREE, A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP, A_OOM, A_SNAPSHOT, A_OTHER = range(
    len(ACTIONS)
)

_EMPTY: list[Any] = []


@dataclass
class Snapshot:
    """A memory snapshot as columns.

    ``events`` — one row per trace entry, ordered by (device, idx):
        device (int16), idx (int64, position in that device's trace), action (int8 code into
        :data:`ACTIONS`), addr (int64, -1 when absent), size (int64), stream (int64),
        time_us (int64; the entry's index when the trace has no timestamps),
        stack_id (int32, -1 when no frames were recorded), device_free (int64, -1 unless oom),
        user_metadata (int32 code into ``info['user_metadata_values']``, -1 when absent; torch's
        ``_set_memory_metadata`` string, which memprof's recorder sets to the phase label).
    ``frames`` — one row per distinct frame: filename, line, name.
    ``stack_offsets``/``stack_frames`` — interned stacks in CSR form: stack *i* is
        ``frames.iloc[stack_frames[stack_offsets[i]:stack_offsets[i+1]]]``, innermost frame first.
    ``segments`` — one row per segment alive when the snapshot was taken: device, address,
        total_size, allocated_size, active_size, requested_size, stream, segment_type,
        pool_id (str), is_expandable (bool), stack_id.
    ``blocks`` — one row per block of those segments: device, segment (row in ``segments``),
        addr, size, requested_size, state, stack_id.
    ``annotations`` — record_function ranges: device, stage ('START' or 'END'), name, time_us.
    ``info`` — plain facts: n_devices, has_time, has_frames, format, file_size,
        allocator_settings, unknown_actions, legacy_segment_list, user_metadata.
    """

    source: str
    events: pd.DataFrame
    frames: pd.DataFrame
    stack_offsets: np.ndarray
    stack_frames: np.ndarray
    segments: pd.DataFrame
    blocks: pd.DataFrame
    annotations: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    _device_bounds: np.ndarray | None = field(default=None, repr=False)
    #: its columnar cache entry (read from there, or being written there in the background)
    cache_entry: Path | None = field(default=None, repr=False, compare=False)

    @property
    def n_devices(self) -> int:
        return int(self.info.get("n_devices", 0))

    def default_device(self) -> int:
        """The device with the most trace entries; ties broken by the bytes allocated in its segments.

        A file whose one-entry traces sit on device 0 while its memory is on device 1 (or whose
        traces are empty) opens on device 1. 0 when nothing is recorded at all.
        """
        n = max(self.n_devices, 1)
        counts = list(self.info.get("entries_per_device") or []) + [0] * n
        alloc = self.state_totals()["allocated"].to_dict()
        return int(max(range(n), key=lambda d: (counts[d], alloc.get(d, 0), -d)))

    @property
    def has_trace(self) -> bool:
        """False when no history was recorded (an empty trace on every device): only the state at dump time."""
        return bool(sum(self.info.get("entries_per_device") or [0]))

    def state_totals(self) -> pd.DataFrame:
        """What the segments held when the snapshot was taken, one row per device that has segments.

        Columns (index: device): segments, blocks, reserved (sum of segments' total_size),
        allocated (bytes of allocated blocks, as torch.cuda.memory_allocated counts them),
        requested (bytes the allocated blocks' tensors asked for), active (allocated plus blocks
        awaiting free on another stream), pending_free (active - allocated), largest_free_block,
        pools (number of distinct memory pools; more than one means CUDA graphs or MemPool).
        """
        seg, blk = self.segments, self.blocks
        cols = ["segments", "blocks", "reserved", "allocated", "requested", "active", "pending_free",
                "largest_free_block", "pools"]
        if not len(seg):
            return pd.DataFrame({c: pd.Series([], dtype=np.int64) for c in cols}, index=pd.Index([], name="device"))
        st = blk["state"].to_numpy()
        b = pd.DataFrame({
            "device": blk["device"].to_numpy(),
            "alloc": np.where(st == "active_allocated", blk["size"].to_numpy(), 0),
            "req": np.where(st == "active_allocated", blk["requested_size"].to_numpy(), 0),
            "pending": np.where(st == "active_pending_free", blk["size"].to_numpy(), 0),
            "free": np.where(st == "inactive", blk["size"].to_numpy(), 0),
        }).groupby("device")
        s = seg.groupby("device")
        out = pd.DataFrame({"segments": s.size(), "reserved": s["total_size"].sum(), "pools": s["pool_id"].nunique()})
        out["blocks"] = b.size().reindex(out.index, fill_value=0)
        out["allocated"] = b["alloc"].sum().reindex(out.index, fill_value=0)
        out["requested"] = b["req"].sum().reindex(out.index, fill_value=0)
        out["pending_free"] = b["pending"].sum().reindex(out.index, fill_value=0)
        out["active"] = out["allocated"] + out["pending_free"]
        out["largest_free_block"] = b["free"].max().reindex(out.index, fill_value=0)
        out.index = out.index.astype(np.int64).rename("device")
        return out[cols].astype(np.int64)

    def check_device(self, device: int) -> None:
        if not 0 <= device < max(self.n_devices, 1):
            raise MemprofError(
                f"device {device} is out of range: {self.source} holds {self.n_devices} device trace(s)"
                + (f" (use --device 0..{self.n_devices - 1})" if self.n_devices > 1 else "")
            )

    def device_events(self, device: int) -> pd.DataFrame:
        """The rows of ``events`` for one device (a view, in trace order)."""
        self.check_device(device)
        if self._device_bounds is None:
            dev = self.events["device"].to_numpy()
            self._device_bounds = np.searchsorted(dev, np.arange(self.n_devices + 1), side="left")
        lo, hi = self._device_bounds[device], self._device_bounds[device + 1]
        return self.events.iloc[lo:hi]

    def stack(self, stack_id: int) -> list[tuple[str, int, str]]:
        """Frames of one interned stack as (filename, line, name), innermost first."""
        if stack_id < 0:
            return []
        ids = self.stack_frames[self.stack_offsets[stack_id] : self.stack_offsets[stack_id + 1]]
        fr = self.frames
        return list(zip(fr["filename"].to_numpy()[ids], fr["line"].to_numpy()[ids], fr["name"].to_numpy()[ids]))

    def user_frame_ids(self) -> np.ndarray:
        """For each stack, the frame id of its innermost *user* frame (-1 if none).

        A user frame is a Python frame outside torch's own package; failing that the
        innermost Python frame; failing that (C++-only stacks from ``stacks="all"``) the innermost
        meaningful operator frame, never the unwinder, the caching allocator or the empty-tensor
        factories (:func:`_is_plumbing`); failing that the innermost frame.
        """
        cached = self.info.get("_user_frames")
        if cached is not None:
            return cached
        fn = self.frames["filename"].to_numpy()
        is_py = np.array([f.endswith(".py") for f in fn], dtype=bool)
        is_lib = np.array([_is_library_file(f) for f in fn], dtype=bool)
        plumbing = np.array([_is_plumbing(n) for n in self.frames["name"].to_numpy()], dtype=bool) & ~is_py
        is_op = np.array([str(n).startswith("at::_ops::") for n in self.frames["name"].to_numpy()], dtype=bool) & ~is_py
        out = np.full(len(self.stack_offsets) - 1, -1, dtype=np.int64)
        for s in range(len(out)):
            ids = self.stack_frames[self.stack_offsets[s] : self.stack_offsets[s + 1]]
            if len(ids) == 0:
                continue
            user = ids[is_py[ids] & ~is_lib[ids]]
            if len(user):
                out[s] = user[0]
                continue
            py = ids[is_py[ids]]
            if len(py):
                out[s] = py[0]
                continue
            op = ids[is_op[ids]]  # the innermost operator entry (at::_ops::<op>::call) names what allocated
            if not len(op):
                op = ids[~plumbing[ids]]
            out[s] = op[0] if len(op) else ids[0]
        self.info["_user_frames"] = out
        return out

    def site_labels(self, stack_ids: np.ndarray, alloc_idx: np.ndarray | None = None) -> np.ndarray:
        """'file.py:line:function' of the innermost user frame for each stack id.

        Allocations without frames get an explanation instead: with ``alloc_idx`` given,
        -1 means it was allocated before recording started; otherwise no Python frames
        were on the allocating thread (typically autograd's backward thread, or C++).
        """
        uf = self.user_frame_ids()
        labels = np.array(
            [_frame_label(f, l, n) for f, l, n in zip(self.frames["filename"], self.frames["line"], self.frames["name"])]
            + [NO_FRAMES_LABEL, BEFORE_RECORDING_LABEL],
            dtype=object,
        )
        sid = np.asarray(stack_ids, dtype=np.int64)
        fid = np.full(len(sid), -1, dtype=np.int64)
        if len(uf):
            ok = sid >= 0
            fid[ok] = uf[sid[ok]]
        none = len(labels) - 2
        if alloc_idx is not None:
            none = np.where(np.asarray(alloc_idx) < 0, len(labels) - 1, len(labels) - 2)
        return labels[np.where(fid >= 0, fid, none)]

    def site_files(self, stack_ids: np.ndarray) -> pd.Categorical:
        """Full filename of the innermost user frame for each stack id ('' when it has no user frame),
        as a categorical."""
        uf = self.user_frame_ids()
        fn = self.frames["filename"].to_numpy(dtype=object)
        per_frame = np.array([("" if _is_library_file(f) or not f.endswith(".py") else f) for f in fn] + [""], dtype=object)
        cats, code_of = np.unique(per_frame.astype(str), return_inverse=True)
        sid = np.asarray(stack_ids, dtype=np.int64)
        fid = np.full(len(sid), -1, dtype=np.int64)
        if len(uf):
            ok = sid >= 0
            fid[ok] = uf[sid[ok]]
        k = np.where(fid >= 0, fid, len(per_frame) - 1)
        return pd.Categorical.from_codes(code_of.reshape(-1)[k].astype(np.int32), categories=pd.Index(cats.astype(object), dtype=object))


    def site_categorical(self, stack_ids: np.ndarray, alloc_idx: np.ndarray | None = None) -> pd.Categorical:
        """:meth:`site_labels` as a categorical (one code per row, each label stored once).

        Same labels; on 10M allocations a string column costs seconds to build and to read back.
        """
        uf = self.user_frame_ids()
        labels = np.array(
            [_frame_label(f, l, n) for f, l, n in zip(self.frames["filename"], self.frames["line"], self.frames["name"])]
            + [NO_FRAMES_LABEL, BEFORE_RECORDING_LABEL],
            dtype=object,
        )
        cats, code_of = np.unique(labels.astype(str), return_inverse=True)  # frames may share a label
        sid = np.asarray(stack_ids, dtype=np.int64)
        fid = np.full(len(sid), -1, dtype=np.int64)
        if len(uf):
            ok = sid >= 0
            fid[ok] = uf[sid[ok]]
        none: Any = len(labels) - 2
        if alloc_idx is not None:
            none = np.where(np.asarray(alloc_idx) < 0, len(labels) - 1, len(labels) - 2)
        codes = code_of.reshape(-1)[np.where(fid >= 0, fid, none)]
        return pd.Categorical.from_codes(codes.astype(np.int32), categories=pd.Index(cats.astype(object), dtype=object))


NO_FRAMES_LABEL = "<no Python frames: autograd engine thread or C++>"
BEFORE_RECORDING_LABEL = "<allocated before recording started>"

_MEMPROF_OWN = re.compile(r"/memprof/(recorder/|commands/|analysis/|[a-z_]+\.py$)")
_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))
_LIB_MARKERS = ("/torch/", "/site-packages/", "/dist-packages/", "/lib/python3", "<frozen ", "/threading.py")


_LIB_HEADS = frozenset({"torch", "memprof", "numpy", "transformers", "accelerate", "triton", "tqdm", "runpy", "<frozen"})

def _is_library_file(filename: str) -> bool:
    """Frames of torch, memprof's own machinery, installed packages and the standard library.

    torch.profiler writes paths relative to their ``sys.path`` entry (``torch/nn/modules/linear.py``);
    allocator history writes absolute ones; Windows paths use backslashes. memprof's built-in
    workloads (``memprof/workloads/``) are the user's model, not library code.
    """
    f = filename.replace("\\", "/")
    if "/_inductor/" not in f and "torchinductor" in f:
        return False  # generated code from torch.compile: the user's model, compiled
    if "memprof/workloads/" in f:
        return False
    if any(m in f for m in _LIB_MARKERS) or _MEMPROF_OWN.search(f):
        return True
    if f.startswith("/") or f[1:3] == ":/":
        return False
    head = f.split("/", 1)[0]
    return head in _LIB_HEADS or head.removesuffix(".py") in _STDLIB_NAMES or head.startswith("<")


# ---------------------------------------------------------------------------
# Reading the raw file


def _open_checked(p: Path) -> tuple[limits.BoundedReader, str]:
    """Open a snapshot by its bytes: (bounded decompressed stream, format name such as 'pickle.gz')."""
    if not p.exists():
        raise MemprofError(f"no such file: {p}")
    if p.is_dir():
        raise MemprofError(f"{p} is a folder, not a snapshot file")
    try:
        reader, comp = limits.open_snapshot(p)
    except OSError as e:
        raise MemprofError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        kind = reader.sniff()
    except limits.DECOMPRESS_ERRORS as e:
        reader.close()
        raise _decode_error(p, e) from None
    except BaseException:
        reader.close()
        raise
    return reader, kind + comp


def _decode_error(p: Path, e: BaseException) -> MemprofError:
    """A decompressor's or the OS's error as one line."""
    if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and e.errno is not None:
        return MemprofError(f"{p}: cannot read ({e.strerror or e})")
    return MemprofError(f"{p}: truncated or corrupt file ({type(e).__name__}: {e or 'unexpected end of data'})")


def _json_bytes(data: bytes, source: str, limit: int | None = None) -> Any:
    """Decode JSON after bounding what it can build (containers and items, as the pickle scan does)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    est = len(data) + 64 * (data.count(b"[") + data.count(b"{")) + 16 * (data.count(b",") + data.count(b":"))
    limit = limits.max_bytes() if limit is None else limit
    if est > limit:
        raise limits.limit_error("memory", f"{source}: building it needs more than {est:,} bytes", limit=limit)
    return json.loads(data)


def _scan_pickle(p: Path) -> None:
    """Walk the pickle's opcodes before the restricted unpickler builds anything (see safe_pickle.scan)."""
    reader, _ = _open_checked(p)
    with reader:
        try:
            fp = _fastpickle_module()
        except ImportError:
            scan(reader, str(p), reader.limit)
            return
        try:
            fp.scan(reader, reader.limit, limits.max_depth())
        except fp.Limit as e:
            raise limits.limit_error(e.args[0], f"{p}: {e.args[1]}", limit=reader.limit) from None
        except fp.Unsupported as e:
            raise UnsafePickleError(str(e)) from None
        except fp.Malformed as e:
            raise pickle.UnpicklingError(str(e)) from None


def read_raw(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """Read and safely decode a snapshot file. Returns (raw object, format name).

    The format comes from the bytes (gzip/xz/bzip2 magic, then JSON or pickle), never the name.
    """
    raw, fmt, _ = _read_raw(Path(path))
    return raw, fmt


def _read_raw(p: Path) -> tuple[Any, str, int]:
    """(raw object, format name, decompressed bytes)."""
    reader, fmt = _open_checked(p)
    is_json = fmt.startswith("json")
    try:
        with reader:
            if is_json:
                raw = _json_bytes(reader.read(), str(p), reader.limit)
                reader.drain()
                return raw, fmt, reader.count
        _scan_pickle(p)
        reader, fmt = _open_checked(p)
        with reader:
            gc_was = gc.isenabled()
            gc.disable()  # building millions of containers: the cyclic GC only slows it down
            try:
                raw = safe_load(reader)
            finally:
                if gc_was:
                    gc.enable()
            reader.drain()
            return raw, fmt, reader.count
    except MemprofError:
        raise
    except RecursionError:
        raise limits.limit_error("depth", f"{p}: a container") from None
    except limits.DECOMPRESS_ERRORS as e:
        raise _decode_error(p, e) from None
    except (pickle.UnpicklingError, ValueError, UnicodeDecodeError, IndexError, KeyError, TypeError, AttributeError, OverflowError) as e:
        kind = "JSON" if is_json else "pickle"
        raise MemprofError(f"{p}: not a readable {kind} file ({type(e).__name__}: {str(e)[:120]})") from None
    except MemoryError:
        raise MemprofError(f"{p}: out of memory while reading ({limits.MEMORY_HINT})") from None


def _normalise(raw: Any, source: str) -> dict[str, Any]:
    """Accept every historical top-level shape; reject what is not a snapshot."""
    if isinstance(raw, list):
        if not raw:
            raise MemprofError(f"{source}: an empty list: no segments and no trace, not a memory snapshot")
        if all(isinstance(s, dict) and "blocks" in s and "total_size" in s for s in raw):
            return {"segments": raw, "device_traces": [], "_legacy_segment_list": True}
        raise MemprofError(f"{source}: a list, but not a list of allocator segments: not a memory snapshot")
    if not isinstance(raw, dict):
        raise MemprofError(f"{source}: holds a {type(raw).__name__}, not a memory snapshot dict")
    if "segments" not in raw and "device_traces" not in raw:
        keys = ", ".join(sorted(map(str, raw))[:6])
        raise MemprofError(
            f"{source}: not a memory snapshot (no 'segments' or 'device_traces'; keys: {keys or 'none'})"
        )
    if not isinstance(raw.get("segments", []), list) or not isinstance(raw.get("device_traces", []), list):
        raise MemprofError(f"{source}: 'segments' and 'device_traces' must be lists: not a snapshot this tool understands")
    return raw


# ---------------------------------------------------------------------------
# C++ frames (stacks="all")


def _frame_label(filename: str, line: int, name: str) -> str:
    """'file.py:line:function'; a C++ frame (``stacks="all"``) without its argument list."""
    if str(filename).endswith(".py"):
        return f"{os.path.basename(filename)}:{line}:{name}"
    n = str(name)
    depth, cut = 0, len(n)
    for i, ch in enumerate(n):  # the first '(' outside template brackets ends the qualified name
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not n.startswith("(anonymous", i):
            cut = i
            break
    base = os.path.basename(str(filename))
    return f"{n[:cut]}" + (f" ({base})" if base and base != "??" else "")


#: C++ frames that say nothing about who allocated: the unwinder, the allocator, tensor factories, runtimes.
_PLUMBING_PREFIXES = (
    "torch::unwind::", "torch::CapturedTraceback", "torch::(anonymous namespace)::gather", "c10::cuda::CUDACachingAllocator",
    "c10::CachingDeviceAllocator", "c10::", "at::empty", "at::detail::empty", "at::native::empty", "at::TensorBase::",
    "at::native::resize", "at::native::(anonymous namespace)::create_out", "at::(anonymous namespace)::create_out",
    "at::cuda::", "std::", "__libc", "_start", "start_thread", "clone", "_Py", "Py", "??", "THPVariable_", "pybind11::",
    "torch::autograd::python", "torch::autograd::THPVariable", "void at::native::", "cudaMalloc",
    "torch::cuda::(anonymous namespace)::gather", "at::TensorIteratorBase::", "at::TensorIterator::", "at::meta::",
    "pthread", "__clone",
)


def _is_plumbing(name: str) -> bool:
    n = str(name).lstrip()
    head = n.split("(")[0]
    return ((not n) or n.startswith(_PLUMBING_PREFIXES) or "CUDACachingAllocator" in n or "unwind" in head
            or "set_output_raw_strided" in n or "create_out" in head)


# ---------------------------------------------------------------------------
# Interning stacks


class _StackInterner:
    """Interns frame lists: each distinct stack stored once, frames once."""

    def __init__(self) -> None:
        self.frame_ids: dict[tuple[str, int, str], int] = {}
        self.frame_by_obj: dict[int, int] = {}
        self.stack_ids: dict[tuple[int, ...], int] = {}
        self.stack_by_obj: dict[tuple[int, ...], int] = {}
        self._keep: list[Any] = []  # keeps interned objects alive so ids stay unique
        self.stacks: list[tuple[int, ...]] = []

    def frame(self, f: Any) -> int:
        fid = self.frame_by_obj.get(id(f))
        if fid is not None:
            return fid
        if not isinstance(f, dict):
            raise MemprofError("a stack frame is not a dict: not a snapshot this tool understands")
        # escaped once here, so every report, table and page shows file text without control characters
        key = (printable(f.get("filename", "??")), limits.to_i64(f.get("line", 0) or 0), printable(f.get("name", "??")))
        fid = self.frame_ids.setdefault(key, len(self.frame_ids))
        self.frame_by_obj[id(f)] = fid
        self._keep.append(f)
        return fid

    def stack(self, frames: Any) -> int:
        if not frames:
            return -1
        # Same frame objects -> same stack, without looking inside the frames (the fast path:
        # torch shares frame dicts between tracebacks, so pickle memoises them).
        obj_key = tuple(map(id, frames))
        sid = self.stack_by_obj.get(obj_key)
        if sid is not None:
            return sid
        key = tuple(self.frame(f) for f in frames)
        sid = self.stack_ids.get(key)
        if sid is None:
            sid = len(self.stacks)
            self.stack_ids[key] = sid
            self.stacks.append(key)
        self.stack_by_obj[obj_key] = sid
        return sid

    def stacks_for(self, frame_lists: Sequence[Any]) -> np.ndarray:
        """Vectorised: intern each distinct list object once, then broadcast."""
        n = len(frame_lists)
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        ids = np.fromiter(map(id, frame_lists), dtype=np.int64, count=n)
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        # Intern in order of first appearance, so stack ids do not depend on memory addresses
        # (and match the C loader's order).
        sid = np.empty(len(uniq), dtype=np.int32)
        for j in np.argsort(first, kind="stable"):
            sid[j] = self.stack(frame_lists[first[j]])
        return sid[inverse]

    def frames_frame(self) -> pd.DataFrame:
        keys = list(self.frame_ids)
        return pd.DataFrame(
            {
                "filename": pd.array([k[0] for k in keys], dtype=object),
                "line": np.array([k[1] for k in keys], dtype=np.int64),
                "name": pd.array([k[2] for k in keys], dtype=object),
            }
        )

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter((len(s) for s in self.stacks), dtype=np.int64, count=len(self.stacks))
        offsets = np.zeros(len(self.stacks) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.fromiter((f for s in self.stacks for f in s), dtype=np.int32, count=int(offsets[-1]))
        return offsets, flat


# ---------------------------------------------------------------------------
# Columns


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


def _trace_columns(trace: list[dict[str, Any]], device: int, interner: _StackInterner, info: dict[str, Any]) -> dict[str, np.ndarray]:
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
        unknown = sorted({a for a in names if a not in ACTION_CODE})
        info.setdefault("unknown_actions", []).extend(str(u) for u in unknown)
        action = np.fromiter((ACTION_CODE.get(a, A_OTHER) for a in names), dtype=np.int8, count=n)
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


def _segments_and_blocks(segments: list[dict[str, Any]], interner: _StackInterner) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    out = {"device": [], "stage": [], "name": [], "time_us": []}
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
    snap: dict[str, Any], source: str, parts: list[dict[str, np.ndarray]], interner: _StackInterner, info: dict[str, Any]
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
    snap = _normalise(raw, source)
    traces = snap.get("device_traces") or []
    for dev, trace in enumerate(traces):
        if not isinstance(trace, list):
            raise MemprofError(f"{source}: device_traces[{dev}] is not a list: not a snapshot this tool understands")
    info = _start_info(snap, source, [len(t) for t in traces], file_format, file_size)
    interner = _StackInterner()
    parts = [_trace_columns(trace, dev, interner, info) for dev, trace in enumerate(traces)]
    return _build_snapshot(snap, source, parts, interner, info)


def _columns_from_fast(
    root: Any, stacks: list[Any], um_values: list[str], source: str, file_format: str, file_size: int
) -> Snapshot:
    """A :class:`Snapshot` from the C loader's result: ``root['device_traces']`` holds column dicts."""
    snap = _normalise(root, source)
    traces: list[dict[str, Any]] = snap.get("device_traces") or []
    info = _start_info(snap, source, [int(c["n"]) for c in traces], file_format, file_size)
    info["user_metadata_values"] = list(um_values)
    interner = _StackInterner()
    # The C loader deduplicated stacks by frame identity, in order of first appearance: interning
    # them in that order gives the same ids as the pure loader. -1 (no frames) maps to the last slot.
    stack_map = np.fromiter((interner.stack(s) for s in stacks), dtype=np.int32, count=len(stacks))
    stack_map = np.append(stack_map, np.int32(-1))
    parts = []
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


_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


def _shape_error(path: Path, e: Exception) -> MemprofError:
    """A file that decodes but holds the wrong shapes: one line, never a traceback."""
    return MemprofError(f"{path}: not a snapshot this tool understands ({type(e).__name__}: {str(e)[:120]})")


def _fastpickle_module() -> Any:
    """The C extension (built by setup.py). MEMPROF_LOADER=python acts as if it were not built."""
    if os.environ.get("MEMPROF_LOADER") == "python":
        raise ImportError("MEMPROF_LOADER=python")
    import importlib

    # by name: the C extension is no Python module, and `from memprof import _fastpickle` reads to
    # the import checker as an import of the whole package (and so of the recorder and torch)
    return importlib.import_module("memprof._fastpickle")


def load_fast(path: Path, file_format: str | None = None) -> Snapshot | None:
    """Load a pickle snapshot with the C streaming loader; None when it cannot (then use the pure loader).

    Raises :class:`MemprofError` for a truncated or corrupt file or one beyond a limit.
    """
    try:
        fp = _fastpickle_module()
    except ImportError:
        return None
    reader, fmt = _open_checked(path)
    if fmt.startswith("json"):
        reader.close()
        return None
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with reader:
            root, fast, stacks, um_values = fp.load(reader, ACTIONS, reader.limit, limits.max_depth())
            reader.drain()
    except fp.Unsupported:
        return None
    except fp.Limit as e:
        raise limits.limit_error(e.args[0], f"{path}: {e.args[1]}", limit=reader.limit) from None
    except fp.Malformed as e:
        raise MemprofError(f"{path}: truncated or corrupt snapshot ({e})") from None
    except MemprofError:
        raise
    except limits.DECOMPRESS_ERRORS as e:
        raise _decode_error(path, e) from None
    except MemoryError:
        raise MemprofError(f"{path}: out of memory while reading ({limits.MEMORY_HINT})") from None
    finally:
        if gc_was:
            gc.enable()
    size = path.stat().st_size
    try:
        limits.check_expansion(root, reader.count, str(path))
        if not fast:  # no device_traces recognised (e.g. a legacy segment list): plain objects
            return columns_from_raw(root, source=str(path), file_format=fmt, file_size=size)
        return _columns_from_fast(root, stacks, um_values, str(path), fmt, size)
    except RecursionError:
        raise limits.limit_error("depth", f"{path}: a container") from None
    except _SHAPE_ERRORS as e:
        raise _shape_error(path, e) from None


# ---------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    root = os.environ.get("MEMPROF_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "memprof"


def _cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


_TABLES = ("events", "frames", "segments", "blocks", "annotations")


@contextlib.contextmanager
def staged_folder(where: Path, prefix: str = ".tmp-") -> Iterator[Path]:
    """A temporary folder beside ``where`` to fill; renamed to ``where`` (replacing it) when the block
    ends, removed when it raises: a cache entry is whole or absent, never half-written."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=where.parent))
    try:
        yield tmp
        if where.exists():
            shutil.rmtree(where, ignore_errors=True)
        os.replace(tmp, where)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_cache(snap: Snapshot, where: Path) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    where.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(where) as tmp:
        for name in _TABLES:
            feather.write_feather(getattr(snap, name), tmp / f"{name}.arrow", compression="uncompressed")
        stacks = pa.table({"frame": pa.array(snap.stack_frames)})
        feather.write_feather(stacks, tmp / "stack_frames.arrow", compression="uncompressed")
        feather.write_feather(pa.table({"offset": pa.array(snap.stack_offsets)}), tmp / "stack_offsets.arrow", compression="uncompressed")
        info = {k: v for k, v in snap.info.items() if not k.startswith("_")}
        text = json.dumps(info, default=str)
        if json.loads(text) != info:  # bytes, tuples or int keys from the file: reopening would differ
            raise ValueError("the snapshot's info does not survive JSON: not cached")
        (tmp / "info.json").write_text(text)


def _read_cache(source: str, where: Path) -> Snapshot:
    import pyarrow.feather as feather

    tables = {name: feather.read_table(where / f"{name}.arrow", memory_map=True).to_pandas(split_blocks=True) for name in _TABLES}
    frames = feather.read_table(where / "stack_frames.arrow", memory_map=True).column("frame").to_numpy()
    offsets = feather.read_table(where / "stack_offsets.arrow", memory_map=True).column("offset").to_numpy()
    info = json.loads((where / "info.json").read_text())
    return Snapshot(source=source, stack_offsets=offsets, stack_frames=frames, info=info, **tables)


def load(path: str | os.PathLike[str], use_cache: bool = True) -> Snapshot:
    """Load a snapshot file (``.pickle``, ``.pickle.gz``, ``.json``) as columns, using the cache when fresh.

    A ``NAME.meta.json`` stands for the snapshot beside it."""
    p = snapshot_beside(path)
    if not p.exists():
        raise MemprofError(f"no such file: {p}")
    if p.is_dir():
        raise MemprofError(f"{p} is a folder, not a snapshot file")
    where = cache_dir() / _cache_key(p) if use_cache else None
    if where is not None and (where / "info.json").exists():
        try:
            snap = _read_cache(str(p), where)
            snap.cache_entry = where
            return snap
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(where, ignore_errors=True)
    with malloc_tuning.mapped_while_loading():  # the loader's growing buffers resized in place
        snap = _load_uncached(p)
    if where is not None:
        # on another core while the analysis goes on; a read-only or full cache folder (or settings
        # JSON cannot hold) only costs the next run its time (memprof.background)
        snap.cache_entry = where
        background.submit(_write_cache, snap, where)
    return snap


def _pickle_format(p: Path) -> str | None:
    """The file's format from its bytes ('pickle', 'pickle.gz', 'pickle.xz', ...), None for JSON."""
    reader, fmt = _open_checked(p)
    reader.close()
    return None if fmt.startswith("json") else fmt


def _load_uncached(p: Path, fast: bool = True) -> Snapshot:
    """Read a snapshot file: the C loader for pickles when it can, else the restricted unpickler
    (always with MEMPROF_LOADER=pure or python)."""
    if fast and os.environ.get("MEMPROF_LOADER") not in ("pure", "python"):
        snap = load_fast(p)
        if snap is not None:
            return snap
    raw, fmt, nbytes = _read_raw(p)
    try:
        limits.check_expansion(raw, nbytes, str(p))
        return columns_from_raw(raw, source=str(p), file_format=fmt, file_size=p.stat().st_size)
    except RecursionError:
        raise limits.limit_error("depth", f"{p}: a container") from None
    except _SHAPE_ERRORS as e:
        raise _shape_error(p, e) from None


def iter_snapshot_files(folder: str | os.PathLike[str]) -> Iterable[Path]:
    """Snapshot files under ``folder`` (recursively), sorted by path."""
    root = Path(folder)
    pats = ("*.pickle", "*.pickle.gz", "*.pkl", "*.pkl.gz", "*.json", "*.json.gz")
    found: set[Path] = set()
    for pat in pats:
        found.update(p for p in root.rglob(pat) if ".meta.json" not in p.name and p.is_file())
    return sorted(found)
