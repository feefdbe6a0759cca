"""The columns a snapshot becomes: :class:`Snapshot` (pandas tables, numpy arrays, interned
stacks) and the trace action codes. Everything after :mod:`memprof.snapshot` reads these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memprof.errors import MemprofError
from memprof.snapshot.frames import BEFORE_RECORDING_LABEL, NO_FRAMES_LABEL, frame_label, is_library_file, is_plumbing

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
        factories (:func:`is_plumbing`); failing that the innermost frame.
        """
        cached = self.info.get("_user_frames")
        if cached is not None:
            return cached
        fn = self.frames["filename"].to_numpy()
        is_py = np.array([f.endswith(".py") for f in fn], dtype=bool)
        is_lib = np.array([is_library_file(f) for f in fn], dtype=bool)
        plumbing = np.array([is_plumbing(n) for n in self.frames["name"].to_numpy()], dtype=bool) & ~is_py
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
            [frame_label(f, l, n) for f, l, n in zip(self.frames["filename"], self.frames["line"], self.frames["name"])]
            + [NO_FRAMES_LABEL, BEFORE_RECORDING_LABEL],
            dtype=object,
        )
        sid = np.asarray(stack_ids, dtype=np.int64)
        fid = np.full(len(sid), -1, dtype=np.int64)
        if len(uf):
            ok = sid >= 0
            fid[ok] = uf[sid[ok]]
        none: int | np.ndarray = len(labels) - 2
        if alloc_idx is not None:
            none = np.where(np.asarray(alloc_idx) < 0, len(labels) - 1, len(labels) - 2)
        return labels[np.where(fid >= 0, fid, none)]

    def site_files(self, stack_ids: np.ndarray) -> pd.Categorical:
        """Full filename of the innermost user frame for each stack id ('' when it has no user frame),
        as a categorical."""
        uf = self.user_frame_ids()
        fn = self.frames["filename"].to_numpy(dtype=object)
        per_frame = np.array([("" if is_library_file(f) or not f.endswith(".py") else f) for f in fn] + [""], dtype=object)
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
            [frame_label(f, l, n) for f, l, n in zip(self.frames["filename"], self.frames["line"], self.frames["name"])]
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
