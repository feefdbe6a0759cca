"""A faithful model of PyTorch's CUDA caching allocator, in plain Python (no torch import).

Given a stream of requests -- allocate N bytes on stream S, free-requested, free-completed,
``empty_cache()`` -- it makes the same decisions ``DeviceCachingAllocator`` makes and keeps
the same counters, so ``allocated_bytes`` (what ``torch.cuda.max_memory_allocated`` reports:
the sum of *block* sizes, not of requested sizes) and ``reserved_bytes`` come out to the byte.

What is modelled, and where the truth comes from (``c10/cuda/CUDACachingAllocator.cpp``,
``DeviceCachingAllocator``; config parsing in ``c10/core/AllocatorConfig.cpp`` /
``c10/cuda/CUDAAllocatorConfig.cpp``; read for this module at pytorch/pytorch commits
001074d2 (allocator) and 065861fb (AllocatorConfig.cpp)):

* constants ``kMinBlockSize`` 512, ``kSmallSize`` 1 MiB, ``kSmallBuffer`` 2 MiB,
  ``kLargeBuffer`` 20 MiB, ``kMinLargeAlloc`` 10 MiB, ``kRoundLarge`` 2 MiB (top of the file).
* ``round_size`` and ``roundup_power2_next_division``: 512-byte minimum and multiple, or the
  next power-of-two division when ``roundup_power2_divisions`` is set for the size's interval
  (``AllocatorConfig::roundup_power2_divisions``: 16 intervals from 1 MiB, log2-indexed).
* ``get_pool``: requests <= 1 MiB go to the small pool, others to the large pool; during a
  CUDA-graph capture or ``use_mem_pool`` they go to that private pool's small/large pools.
* ``get_allocation_size``: 2 MiB segments for small, 20 MiB below 10 MiB, else rounded to 2 MiB.
* ``get_free_block``: best fit in the pool's set ordered by ``BlockComparatorSize``
  (stream, size, address); expandable blocks compare by the size they could grow to; an
  oversize block (>= ``max_split_size``) never serves a request below ``max_split_size``, and
  serves a larger one only if it is less than ``max_non_split_rounding`` (default 20 MiB) bigger.
* ``should_split``: small pool or expandable segments split when >= 512 B remain; the large
  pool splits only when the request is below ``max_split_size`` and more than 1 MiB remains.
  An unsplit block is handed out whole, and counts whole in ``allocated_bytes``
  (``alloc_found_block``: ``increase_stat(stats.allocated_bytes, block->size)``).
* ``free`` / ``free_block`` / ``try_merge_blocks``: ``allocated_bytes`` drops at ``free``
  (the trace's ``free_requested``); a block used on other streams (``record_stream``) goes back
  to the pool only when its events complete (the trace's ``free_completed``), then merges with
  free neighbours.
* ``malloc``: ``get_free_block`` -> (``garbage_collect_cached_blocks`` when a memory fraction
  and ``garbage_collection_threshold`` are set) -> ``alloc_block`` -> on failure
  ``release_available_cached_blocks`` (oversize blocks, only with ``max_split_size``) and
  retry -> ``release_cached_blocks`` (sync events, free every unsplit cached block) and
  retry -> out of memory.
* ``release_blocks`` / ``release_block`` / ``emptyCache``: unsplit free blocks are returned
  (``segment_free``); free pages of expandable segments are unmapped (``unmap_block``).
* expandable segments (Note [Expandable Segments], ``find_expandable_block``, ``map_block``,
  ``try_allocate_expandable_block``): one growing segment per (stream, pool), mapped in pages
  of 2 MiB (small pool) or 20 MiB (large pool), new pages at the lowest free address.
* private pools (``PrivatePool``: CUDA graphs, ``torch.cuda.MemPool``): their own small and
  large pools; ``empty_cache`` does not release them (they are not freeable while the graph
  or pool lives, and a trace does not say when it dies).

Device capacity: ``cudaMalloc`` (or ``cuMemCreate``) fails when reserved + the new segment
would exceed ``device_memory`` -- the bytes the allocator can get (total memory minus the CUDA
context and other processes), not the card's nominal size.

What is not modelled: ``cudaMallocAsync``; IPC; the timing of ``free_completed`` under another
configuration (it happens when the GPU finished, so it is kept where it was recorded); when a
CUDA graph's private pool is destroyed (a trace does not say).

Checked (tests/allocator/test_simulator.py): replaying a trace's requests under its recorded settings gives
``max_memory_allocated`` and ``max_memory_reserved`` to the byte, the recorded segment events and
every block address, on the H100 recordings in tests/data/gpu (default, expandable segments,
max_split_size, garbage collection, two streams with record_stream, CUDA graphs, MemPool,
empty_cache, OOM),
snapshots/h100 and tests/data/golden; from an empty allocator, each of the four settings of
tests/data/gpu/alloc predicts the other three within 0.43%.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from memprof.errors import MemprofError

KB = 1024
MB = 1024 * 1024
kMinBlockSize = 512
kSmallSize = 1 * MB
kSmallBuffer = 2 * MB
kLargeBuffer = 20 * MB
kMinLargeAlloc = 10 * MB
kRoundLarge = 2 * MB
NO_LIMIT = (1 << 64) - 1
DEFAULT_TOTAL_MEMORY = 85_017_493_504  # an H100 80GB's cudaDeviceProp.totalGlobalMem (sizes expandable reservations)  # std::numeric_limits<size_t>::max(): max_split_size unset
N_INTERVALS = 16  # kRoundUpPowerOfTwoIntervals, from 1 MiB to 64 GiB

#: request ops
OP_ALLOC, OP_FREE_REQ, OP_FREE_DONE, OP_FREE, OP_EMPTY_CACHE, OP_OOM, OP_RELEASE = range(7)
OP_NAMES = ("alloc", "free_requested", "free_completed", "free", "empty_cache", "oom", "release")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AllocConf:
    """``PYTORCH_CUDA_ALLOC_CONF`` as the allocator reads it."""

    max_split_size: int = NO_LIMIT
    max_non_split_rounding: int = kLargeBuffer
    garbage_collection_threshold: float = 0.0
    expandable_segments: bool = False
    roundup_power2_divisions: tuple[int, ...] = (0,) * N_INTERVALS
    memory_fraction: float | None = None  # torch.cuda.set_per_process_memory_fraction

    @classmethod
    def parse(cls, text: str | None, base: "AllocConf | None" = None) -> "AllocConf":
        """Parse ``"expandable_segments:True,max_split_size_mb:128,..."`` over ``base``.

        Mirrors ``AllocatorConfig::parseArgs``: keys replace the base's values; unknown keys are
        an error (as torch raises one).
        """
        b = base or cls()
        kw: dict[str, Any] = {
            "max_split_size": b.max_split_size,
            "max_non_split_rounding": b.max_non_split_rounding,
            "garbage_collection_threshold": b.garbage_collection_threshold,
            "expandable_segments": b.expandable_segments,
            "roundup_power2_divisions": list(b.roundup_power2_divisions),
            "memory_fraction": b.memory_fraction,
        }
        text = (text or "").replace(" ", "")
        if text == "default":  # what describe() prints for torch's defaults
            text = ""
        i = 0
        items: list[tuple[str, str]] = []
        while i < len(text):  # split on top-level commas (a list value has commas inside [])
            j, depth = i, 0
            while j < len(text) and (text[j] != "," or depth):
                depth += text[j] == "["
                depth -= text[j] == "]"
                j += 1
            part = text[i:j]
            i = j + 1
            if not part:
                continue
            if ":" not in part:
                raise MemprofError(f"allocator setting {part!r} has no value (use key:value)")
            k, v = part.split(":", 1)
            items.append((k, v))
        try:
            for k, v in items:
                if k == "max_split_size_mb":
                    mb = int(v)
                    if mb < kLargeBuffer // MB:
                        raise MemprofError(f"max_split_size_mb must be >= {kLargeBuffer // MB} (torch refuses {mb})")
                    kw["max_split_size"] = mb * MB
                elif k == "max_non_split_rounding_mb":
                    kw["max_non_split_rounding"] = int(v) * MB
                elif k == "garbage_collection_threshold":
                    g = float(v)
                    if not 0.0 < g < 1.0:
                        raise MemprofError("garbage_collection_threshold must be in (0, 1)")
                    kw["garbage_collection_threshold"] = g
                elif k == "expandable_segments":
                    if v not in ("True", "False"):
                        raise MemprofError("expandable_segments takes True or False")
                    kw["expandable_segments"] = v == "True"
                elif k == "roundup_power2_divisions":
                    kw["roundup_power2_divisions"] = _parse_divisions(v)
                elif k in ("memory_fraction", "per_process_memory_fraction"):
                    kw["memory_fraction"] = float(v)
                elif k in ("backend", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
                           "pinned_num_register_threads", "pinned_use_background_threads",
                           "graph_capture_record_stream_reuse"):
                    if k == "backend" and v != "native":
                        raise MemprofError("only the native caching allocator is simulated (backend:native)")
                else:
                    raise MemprofError(f"unknown allocator setting {k!r}")
        except ValueError as e:
            raise MemprofError(f"bad allocator setting value: {e}") from None
        kw["roundup_power2_divisions"] = tuple(kw["roundup_power2_divisions"])
        return cls(**kw)

    @classmethod
    def from_snapshot(cls, settings: dict[str, Any] | None) -> "AllocConf":
        """The configuration a snapshot recorded (``allocator_settings``; torch >= 2.5)."""
        s = settings or {}
        ms = s.get("max_split_size", -1)
        div = s.get("roundup_power2_divisions") or {}
        divs = [0] * N_INTERVALS
        if isinstance(div, dict):
            for k, v in div.items():
                try:
                    idx = min(max(int(k).bit_length() - 1, 0), N_INTERVALS - 1)
                    divs[idx] = int(v)
                except (TypeError, ValueError):
                    pass
        return cls(
            max_split_size=NO_LIMIT if (ms is None or int(ms) < 0) else int(ms),
            garbage_collection_threshold=float(s.get("garbage_collection_threshold") or 0.0),
            expandable_segments=bool(s.get("expandable_segments", False)),
            roundup_power2_divisions=tuple(divs),
        )

    def describe(self) -> str:
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size != NO_LIMIT:
            parts.append(f"max_split_size_mb:{self.max_split_size // MB}")
        if self.garbage_collection_threshold:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold:g}")
        if any(self.roundup_power2_divisions):
            parts.append("roundup_power2_divisions:[" + ",".join(
                f"{1 << i}:{d}" for i, d in enumerate(self.roundup_power2_divisions)) + "]")
        if self.memory_fraction is not None:
            parts.append(f"memory_fraction:{self.memory_fraction:g}")
        return ",".join(parts) or "default"


def _parse_divisions(v: str) -> list[int]:
    """``roundup_power2_divisions``: one power of two, or ``[MB:div,...,>:div]`` per interval."""
    divs = [0] * N_INTERVALS
    if not v.startswith("["):
        d = int(v)
        if d & (d - 1):
            raise MemprofError("roundup_power2_divisions must be a power of 2")
        return [d] * N_INTERVALS
    last, first = 0, True
    for item in v.strip("[]").split(","):
        if not item:
            continue
        k, d_s = item.split(":")
        d = int(d_s)
        if d and d & (d - 1):
            raise MemprofError("roundup_power2_divisions must be powers of 2 or 0")
        if k == ">":
            for i in range(last, N_INTERVALS):
                divs[i] = d
            continue
        idx = min(max(int(k).bit_length() - 1, 0), N_INTERVALS - 1)
        if first:
            for i in range(idx):
                divs[i] = d
            first = False
        divs[idx] = d
        last = idx
    return divs


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def round_size(size: int, conf: AllocConf) -> int:
    """``DeviceCachingAllocator::round_size``."""
    if size < kMinBlockSize:
        return kMinBlockSize
    idx = min(max(size.bit_length() - 1 - 20, 0), N_INTERVALS - 1)
    div = conf.roundup_power2_divisions[idx]
    if div > 1 and size > kMinBlockSize * div:
        if size & (size - 1) == 0:
            return size
        floor = _pow2_floor(size)
        step = floor >> (div.bit_length() - 1)
        if step == 0:
            return floor << 1
        r = size & ~(step - 1)
        return size if r == size else r + step
    return kMinBlockSize * ((size + kMinBlockSize - 1) // kMinBlockSize)


def allocation_size(size: int) -> int:
    """``get_allocation_size``: the segment cudaMalloc'd for a rounded request."""
    if size <= kSmallSize:
        return kSmallBuffer
    if size < kMinLargeAlloc:
        return kLargeBuffer
    return kRoundLarge * ((size + kRoundLarge - 1) // kRoundLarge)


# --------------------------------------------------------------------------- state
class _Segment:
    __slots__ = ("addr", "size", "stream", "pool", "expandable", "page", "mapped_pages")

    def __init__(self, addr: int, size: int, stream: int, pool: "_Pool", expandable: bool = False, page: int = 0) -> None:
        self.addr, self.size, self.stream, self.pool = addr, size, stream, pool
        self.expandable, self.page = expandable, page
        self.mapped_pages: set[int] = set()


class _Block:
    __slots__ = ("addr", "size", "stream", "pool", "seg", "allocated", "prev", "next", "mapped",
                 "requested", "pending", "gc_base", "rid")

    def __init__(self, addr: int, size: int, stream: int, pool: "_Pool", seg: _Segment, mapped: bool = True) -> None:
        self.addr, self.size, self.stream, self.pool, self.seg = addr, size, stream, pool, seg
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.mapped = mapped
        self.requested = 0
        self.pending = False  # free requested, waiting for other streams' events
        self.gc_base = 0
        self.rid = -1

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class _Pool:
    """A ``BlockPool``: free mapped blocks ordered by (stream, size, addr); unmapped by (stream, addr)."""

    __slots__ = ("is_small", "pid", "keys", "by_key", "unmapped", "gc_calls")

    def __init__(self, is_small: bool, pid: int) -> None:
        self.is_small, self.pid = is_small, pid
        self.keys: list[tuple[int, int, int]] = []
        self.by_key: dict[tuple[int, int, int], _Block] = {}
        self.unmapped: list[tuple[int, int]] = []
        self.gc_calls = 0

    def insert(self, b: _Block) -> None:
        k = (b.stream, b.size, b.addr)
        insort(self.keys, k)
        self.by_key[k] = b
        b.gc_base = self.gc_calls

    def remove(self, b: _Block) -> None:
        k = (b.stream, b.size, b.addr)
        i = bisect_left(self.keys, k)
        del self.keys[i]
        del self.by_key[k]


@dataclass
class SimResult:
    """What a simulation produced.

    ``allocated``/``reserved`` -- bytes after every request (numpy int64, one per request, the
    first entry being the state before it); ``block_addr``/``block_size`` -- per request
    (alloc rows only; -1 elsewhere) the address and block size handed out; ``segment_events`` --
    list of (action, addr, size, stream, request index) with action in segment_alloc,
    segment_free, segment_map, segment_unmap.
    """

    max_allocated: int
    max_reserved: int
    max_allocated_idx: int
    max_reserved_idx: int
    allocated_start: int
    reserved_start: int
    allocated_end: int
    reserved_end: int
    allocated: np.ndarray
    reserved: np.ndarray
    requested_at_max: int
    block_addr: np.ndarray
    block_size: np.ndarray
    segment_events: list[tuple[str, int, int, int, int]]
    oom: dict[str, Any] | None
    n_segments_max: int
    conf: AllocConf
    free_cached_at_max_reserved: int = 0
    largest_free_at_max_reserved: int = 0
    allocated_at_max_reserved: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "simulated_max_memory_allocated": int(self.max_allocated),
            "simulated_max_memory_reserved": int(self.max_reserved),
            "allocated_start": int(self.allocated_start),
            "reserved_start": int(self.reserved_start),
            "allocated_end": int(self.allocated_end),
            "reserved_end": int(self.reserved_end),
            "oom": bool(self.oom),
            "oom_request": self.oom,
            "segments_allocated": sum(1 for e in self.segment_events if e[0] in ("segment_alloc", "segment_map")),
            "segments_freed": sum(1 for e in self.segment_events if e[0] in ("segment_free", "segment_unmap")),
            "fragmentation_at_max_reserved": {
                "reserved": int(self.max_reserved),
                "allocated": int(self.allocated_at_max_reserved),
                "free_cached": int(self.free_cached_at_max_reserved),
                "largest_free_block": int(self.largest_free_at_max_reserved),
                "fraction_free": (self.free_cached_at_max_reserved / self.max_reserved) if self.max_reserved else 0.0,
            },
            "alloc_conf": self.conf.describe(),
        }


class _AddressSource:
    """Where new segments live: the recorded addresses when the simulation asks for the same
    size the recording got next, else fresh addresses above everything seen."""

    def __init__(self, recorded: Sequence[tuple[int, int]] = (), floor: int = 1 << 44,
                 expandable_bases: Sequence[int] = ()) -> None:
        self.recorded = list(recorded)
        self.bases = list(expandable_bases)
        self.pos = 0
        self.top = max([a + s for a, s in self.recorded] + [floor])

    def take(self, size: int, live: dict[int, _Segment]) -> int:
        # the next recorded segment of this size that is not in use
        for j in range(self.pos, min(self.pos + 64, len(self.recorded))):
            a, s = self.recorded[j]
            if s == size and a not in live:
                if j == self.pos:
                    self.pos += 1
                else:
                    self.recorded.pop(j)
                return a
        a = self.top
        self.top += size + kSmallBuffer
        return a

    def take_expandable(self, vsize: int, live: dict[int, _Segment]) -> int:
        """An expandable segment's base: the recording's next one, else a fresh range."""
        while self.bases:
            a = self.bases.pop(0)
            if not any(s.addr <= a < s.addr + s.size for s in live.values()):
                return a
        a = self.top
        self.top += vsize
        return a


class OutOfMemory(Exception):
    pass


class Allocator:
    """One device's ``DeviceCachingAllocator``."""

    def __init__(self, conf: AllocConf | None = None, device_memory: int | None = None,
                 addresses: _AddressSource | None = None, total_memory: int | None = None) -> None:
        self.conf = conf or AllocConf()
        self.capacity = device_memory if device_memory else NO_LIMIT
        self.total_memory = total_memory or DEFAULT_TOTAL_MEMORY
        self.allowed = (int(self.conf.memory_fraction * self.total_memory)
                        if self.conf.memory_fraction is not None else None)
        self.addresses = addresses or _AddressSource()
        self.pools: dict[tuple[int, bool], _Pool] = {}
        self.segments: dict[int, _Segment] = {}
        self.active: dict[int, _Block] = {}  # rid -> block (allocated or pending)
        self.allocated = 0
        self.reserved = 0
        self.requested = 0
        self.max_allocated = 0
        self.max_reserved = 0
        self.seg_events: list[tuple[str, int, int, int, int]] = []
        self.req_idx = -1
        self._unmapped: dict[int, _Block] = {}

    # --- pools and stats
    def pool(self, size: int, pid: int = 0) -> _Pool:
        small = size <= kSmallSize
        p = self.pools.get((pid, small))
        if p is None:
            p = self.pools[(pid, small)] = _Pool(small, pid)
        return p

    def _set_alloc(self, delta: int) -> None:
        self.allocated += delta
        if self.allocated > self.max_allocated:
            self.max_allocated = self.allocated

    def _set_res(self, delta: int) -> None:
        self.reserved += delta
        if self.reserved > self.max_reserved:
            self.max_reserved = self.reserved

    # --- initial state
    def add_segment(self, addr: int, size: int, stream: int, pid: int, is_small: bool,
                    blocks: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """A segment present before the simulated window, with its allocated blocks
        ``(addr, block_size, requested, rid)``; the gaps between them are free blocks."""
        pool = self.pool(1 if is_small else kSmallSize + 1, pid)
        seg = _Segment(addr, size, stream, pool)
        self.segments[addr] = seg
        self._set_res(size)
        pos, prev = addr, None
        items = sorted(blocks)
        for baddr, bsize, req, rid in items + [(addr + size, 0, 0, -1)]:
            if baddr > pos:
                fb = _Block(pos, baddr - pos, stream, pool, seg)
                fb.prev = prev
                if prev:
                    prev.next = fb
                prev = fb
                pool.insert(fb)
            if bsize <= 0:
                break
            b = _Block(baddr, bsize, stream, pool, seg)
            b.allocated, b.requested, b.rid = True, req, rid
            b.prev = prev
            if prev:
                prev.next = b
            prev = b
            self.active[rid] = b
            self._set_alloc(bsize)
            self.requested += req
            pos = baddr + bsize

    def add_expandable_segment(self, base: int, vsize: int, stream: int, pid: int, is_small: bool, page: int,
                               ranges: Sequence[tuple[int, int]], blocks: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """An expandable segment present before the window: mapped ``ranges``, allocated ``blocks``."""
        pool = self.pool(1 if is_small else kSmallSize + 1, pid)
        seg = _Segment(base, vsize, stream, pool, expandable=True, page=page)
        self.segments[base] = seg
        pieces: list[tuple[int, int, int, int, int]] = []  # (addr, size, kind 0 unmapped/1 free/2 allocated, req, rid)
        pos = base
        items = sorted(blocks)
        for ra, rs in sorted(ranges):
            if ra > pos:
                pieces.append((pos, ra - pos, 0, 0, -1))
            p = ra
            for a, bs, req, rid in items:
                if ra <= a < ra + rs:
                    if a > p:
                        pieces.append((p, a - p, 1, 0, -1))
                    pieces.append((a, bs, 2, req, rid))
                    p = a + bs
            if ra + rs > p:
                pieces.append((p, ra + rs - p, 1, 0, -1))
            pos = ra + rs
            seg.mapped_pages.update(range((ra - base) // page, (ra + rs - base) // page))
            self._set_res(rs)
        if base + vsize > pos:
            pieces.append((pos, base + vsize - pos, 0, 0, -1))
        prev = None
        for a, sz, kind, req, rid in pieces:
            b = _Block(a, sz, stream, pool, seg, mapped=kind != 0)
            b.prev = prev
            if prev is not None:
                prev.next = b
            prev = b
            if kind == 0:
                self._unmapped_insert(b)
            elif kind == 1:
                pool.insert(b)
            else:
                b.allocated, b.requested, b.rid = True, req, rid
                self.active[rid] = b
                self._set_alloc(sz)
                self.requested += req

    # --- malloc
    def should_split(self, b: _Block, size: int) -> bool:
        remaining = b.size - size
        if b.pool.is_small or self.conf.expandable_segments:
            return remaining >= kMinBlockSize
        return size < self.conf.max_split_size and remaining > kSmallSize

    def get_free_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        c = self.conf
        if self.allowed is not None and c.garbage_collection_threshold > 0:
            pool.gc_calls += 1
        keys = pool.keys
        i = bisect_left(keys, (stream, size, -1))
        if i >= len(keys) or keys[i][0] != stream:
            return None
        b = pool.by_key[keys[i]]
        if b.seg.expandable:
            if c.expandable_segments:
                def esize(x: _Block) -> int:
                    return x.size + (x.next.size if x.next is not None and not x.next.mapped else 0)
                j = i + 1
                while b.seg.expandable and j < len(keys) and keys[j][0] == stream:
                    nb = pool.by_key[keys[j]]
                    if esize(nb) < esize(b):
                        b, i = nb, j
                        j += 1
                    else:
                        break
            else:
                while True:
                    i += 1
                    if i >= len(keys) or keys[i][0] != stream:
                        return None
                    b = pool.by_key[keys[i]]
                    if not b.seg.expandable:
                        break
        if size < c.max_split_size and b.size >= c.max_split_size:
            return None
        if size >= c.max_split_size and b.size >= size + c.max_non_split_rounding:
            return None
        pool.remove(b)
        return b

    def malloc(self, rid: int, orig: int, stream: int, pid: int = 0) -> _Block:
        size = round_size(orig, self.conf)
        pool = self.pool(size, pid)
        b = self.get_free_block(pool, stream, size)
        if b is None:
            if self.allowed is not None and self.conf.garbage_collection_threshold > 0:
                self.garbage_collect()
            alloc = allocation_size(size)
            b = self.alloc_block(pool, stream, size, alloc)
            if b is None and self.release_available_cached_blocks(pool, stream, size):
                b = self.alloc_block(pool, stream, size, alloc)
            if b is None:
                self.release_cached_blocks()
                b = self.alloc_block(pool, stream, size, alloc)
            if b is None:
                raise OutOfMemory(size)
        if self.should_split(b, size):
            rem = b
            nb = _Block(rem.addr, size, stream, pool, rem.seg)
            nb.prev = rem.prev
            if nb.prev is not None:
                nb.prev.next = nb
            nb.next = rem
            rem.prev = nb
            rem.addr += size
            rem.size -= size
            pool.insert(rem)
            b = nb
        b.allocated = True
        b.requested = orig
        b.rid = rid
        self.active[rid] = b
        self._set_alloc(b.size)
        self.requested += orig
        return b

    def alloc_block(self, pool: _Pool, stream: int, size: int, alloc: int) -> _Block | None:
        if self.allowed is not None and self.reserved + alloc > self.allowed:
            return None
        if self.conf.expandable_segments:
            return self.try_allocate_expandable_block(pool, stream, size)
        if self.reserved + alloc > self.capacity:
            return None
        addr = self.addresses.take(alloc, self.segments)
        seg = _Segment(addr, alloc, stream, pool)
        self.segments[addr] = seg
        self._set_res(alloc)
        self.seg_events.append(("segment_alloc", addr, alloc, stream, self.req_idx))
        return _Block(addr, alloc, stream, pool, seg)

    # --- expandable segments
    def _unmapped_insert(self, b: _Block) -> None:
        insort(b.pool.unmapped, (b.stream, b.addr))
        self._unmapped[(b.addr)] = b

    def _unmapped_remove(self, b: _Block) -> None:
        u = b.pool.unmapped
        del u[bisect_left(u, (b.stream, b.addr))]
        del self._unmapped[b.addr]

    def find_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block:
        def allocatable(x: _Block | None) -> bool:
            return x is not None and not x.allocated and not x.pending

        def has_space(x: _Block | None) -> bool:
            n = 0
            while n < size and allocatable(x):
                n += x.size  # type: ignore[union-attr]
                x = x.next  # type: ignore[union-attr]
            return n >= size

        u = pool.unmapped
        i = bisect_left(u, (stream, -1))
        while i < len(u) and u[i][0] == stream:
            c = self._unmapped[u[i][1]]
            if allocatable(c.prev):
                c = c.prev  # type: ignore[assignment]
            if has_space(c):
                return c
            i += 1
        page = kSmallBuffer if pool.is_small else kLargeBuffer
        space = self.total_memory + self.total_memory // 8
        vsize = page * ((space + page - 1) // page)
        addr = self.addresses.take_expandable(vsize, self.segments)
        seg = _Segment(addr, vsize, stream, pool, expandable=True, page=page)
        self.segments[addr] = seg
        c = _Block(addr, vsize, stream, pool, seg, mapped=False)
        self._unmapped_insert(c)
        return c

    def map_block(self, b: _Block, size: int) -> bool:
        seg = b.seg
        page = seg.page
        begin = (b.addr - seg.addr) // page
        end = (b.addr + size - seg.addr + page - 1) // page
        n = end - begin
        if self.reserved + n * page > self.capacity:
            return False
        for p in range(begin, end):
            seg.mapped_pages.add(p)
        mapped = n * page
        at = b.addr
        self._unmapped_remove(b)
        b.mapped = True
        if mapped < b.size:
            rem = _Block(b.addr + mapped, b.size - mapped, b.stream, b.pool, seg, mapped=False)
            rem.prev, rem.next = b, b.next
            if b.next is not None:
                b.next.prev = rem
            b.next = rem
            self._unmapped_insert(rem)
            b.size = mapped
        self._merge(b, b.prev)
        self._merge(b, b.next)
        b.pool.insert(b)
        self._set_res(mapped)
        self.seg_events.append(("segment_map", at, mapped, b.stream, self.req_idx))
        return True

    def try_allocate_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        c = self.find_expandable_block(pool, stream, size)
        if not c.mapped and not self.map_block(c, min(c.size, size)):
            return None
        # map_block merged c with its free neighbours: find the block that now holds c's start
        # map_block merges into the block it maps (try_merge_blocks(to_map, ...)), so the
        # object mapped last holds the whole candidate range
        while c.size < size:
            nxt = c.next
            assert nxt is not None and not nxt.mapped
            if not self.map_block(nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt
        c.pool.remove(c)
        return c

    # --- free
    def free_requested(self, rid: int) -> None:
        b = self.active.get(rid)
        if b is None or not b.allocated:
            return
        b.allocated = False
        b.pending = True
        self._set_alloc(-b.size)
        self.requested -= b.requested

    def free_completed(self, rid: int) -> None:
        b = self.active.pop(rid, None)
        if b is None:
            return
        if b.allocated:  # a completion without a request: treat as both
            b.allocated = False
            self._set_alloc(-b.size)
            self.requested -= b.requested
        b.pending = False
        self.free_block(b)

    def free_block(self, b: _Block) -> None:
        pool = b.pool
        self._merge(b, b.prev)
        self._merge(b, b.next)
        pool.insert(b)

    def _merge(self, dst: _Block, src: _Block | None) -> int:
        if src is None or src.allocated or src.pending or dst.mapped != src.mapped:
            return 0
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        if src.mapped:
            src.pool.remove(src)
        else:
            self._unmapped_remove(src)
        return src.size

    # --- releasing memory
    def release_block(self, b: _Block) -> None:
        b.pool.remove(b)
        del self.segments[b.seg.addr]
        self._set_res(-b.size)
        self.seg_events.append(("segment_free", b.addr, b.size, b.stream, self.req_idx))

    def unmap_block(self, b: _Block) -> None:
        seg = b.seg
        page = seg.page
        begin = (b.addr - seg.addr + page - 1) // page
        end = (b.addr + b.size - seg.addr) // page
        if begin >= end:
            return
        b.pool.remove(b)
        u_addr, u_size = seg.addr + begin * page, (end - begin) * page
        before = u_addr - b.addr
        if before > 0:
            bf = _Block(b.addr, before, b.stream, b.pool, seg)
            bf.prev, bf.next = b.prev, b
            if b.prev is not None:
                b.prev.next = bf
            b.prev = bf
            b.pool.insert(bf)
        after = b.size - before - u_size
        if after > 0:
            af = _Block(u_addr + u_size, after, b.stream, b.pool, seg)
            af.prev, af.next = b, b.next
            if b.next is not None:
                b.next.prev = af
            b.next = af
            b.pool.insert(af)
        b.addr, b.size, b.mapped = u_addr, u_size, False
        for p in range(begin, end):
            seg.mapped_pages.discard(p)
        self._merge(b, b.prev)
        self._merge(b, b.next)
        self._unmapped_insert(b)
        self._set_res(-u_size)
        self.seg_events.append(("segment_unmap", u_addr, u_size, b.stream, self.req_idx))

    def release_blocks(self, pool: _Pool) -> None:
        to_unmap = []
        for k in list(pool.keys):
            b = pool.by_key.get(k)
            if b is None:
                continue
            if b.seg.expandable:
                to_unmap.append(b)
            elif b.prev is None and b.next is None:
                self.release_block(b)
        for b in to_unmap:
            self.unmap_block(b)
            if b.prev is None and b.next is None and not b.mapped:
                self._unmapped_remove(b)
                self.segments.pop(b.seg.addr, None)

    def synchronize_and_free_events(self) -> None:
        for rid in [r for r, b in self.active.items() if b.pending]:
            self.free_completed(rid)

    def release_cached_blocks(self) -> None:
        self.synchronize_and_free_events()
        # default pools: large first, then small (release_cached_blocks order)
        for small in (False, True):
            p = self.pools.get((0, small))
            if p is not None:
                self.release_blocks(p)

    def release_available_cached_blocks(self, pool: _Pool, stream: int, size: int) -> bool:
        ms = self.conf.max_split_size
        if ms == NO_LIMIT:
            return False
        key_size = ms if size < ms else size
        keys = pool.keys
        i = bisect_left(keys, (stream, key_size, -1))
        if i >= len(keys) or keys[i][0] != stream:
            if i == 0:
                return False
            released = 0
            i -= 1
            while released < key_size and i >= 0:
                b = pool.by_key[keys[i]]
                if b.size < ms or b.stream != stream:
                    break
                released += b.size
                self.release_block(b)
                i -= 1
            return released >= key_size
        self.release_block(pool.by_key[keys[i]])
        return True

    def garbage_collect(self) -> None:
        assert self.allowed is not None
        threshold = int(self.conf.garbage_collection_threshold * self.allowed)
        if self.reserved <= threshold:
            return
        target = self.reserved - threshold
        large = self.pool(kSmallSize + 1, 0)
        cands = [large.by_key[k] for k in large.keys if not large.by_key[k].is_split()]
        if not cands:
            return
        total_age = sum(large.gc_calls - b.gc_base for b in cands)
        count = len(cands)
        reclaimed, freed = 0, True
        while reclaimed < target and freed and count > 0:
            age = total_age / count
            freed = False
            for k in list(large.keys):
                b = large.by_key.get(k)
                if b is None or b.is_split():
                    continue
                if large.gc_calls - b.gc_base >= age:
                    freed = True
                    reclaimed += b.size
                    total_age -= large.gc_calls - b.gc_base
                    count -= 1
                    self.release_block(b)

    def release_segments(self, addrs: Sequence[int]) -> None:
        """Free these segments if they are cached whole (the recording's own releases)."""
        self.synchronize_and_free_events()
        for a in addrs:
            seg = self.segments.get(a)
            if seg is None or seg.expandable:
                continue
            k = (seg.stream, seg.size, a)
            b = seg.pool.by_key.get(k)
            if b is not None and b.prev is None and b.next is None:
                self.release_block(b)

    def empty_cache(self) -> None:
        self.release_cached_blocks()

    def oom_attempt(self, size: int, stream: int, pid: int = 0) -> None:
        """A request the recording saw fail: run the OOM path (release and retry) only."""
        self.release_available_cached_blocks(self.pool(size, pid), stream, size)
        self.release_cached_blocks()

    def apply(self, op: int, rid: int, size: int, stream: int = 0, pool: int = 0) -> "_Block | None":
        """One request (OP_* code); raises :class:`OutOfMemory` when an allocation fails."""
        if op == OP_ALLOC:
            return self.malloc(rid, size, stream, pool)
        if op == OP_FREE:
            self.free_requested(rid)
            self.free_completed(rid)
        elif op == OP_FREE_REQ:
            self.free_requested(rid)
        elif op == OP_FREE_DONE:
            self.free_completed(rid)
        elif op in (OP_EMPTY_CACHE, OP_RELEASE):
            self.empty_cache()
        elif op == OP_OOM:
            self.oom_attempt(size, stream, pool)
        return None

    # --- inspection
    def free_cached(self) -> tuple[int, int]:
        """(bytes in free mapped blocks, largest free block)."""
        tot, big = 0, 0
        for p in self.pools.values():
            for k in p.keys:
                tot += k[1]
                big = max(big, k[1])
        return tot, big


# --------------------------------------------------------------------------- running requests
class InitialBlock(NamedTuple):
    """A block allocated before the first request, inside an initial segment."""

    addr: int
    size: int  # the block as torch made it (rounded, or the whole gap when it was not split)
    requested: int
    rid: int


class InitialSegment(NamedTuple):
    """A segment that existed before the first request, with its allocated blocks."""

    addr: int
    size: int
    stream: int
    pool: int  # 0 default, >0 a private pool
    small: bool
    blocks: list[InitialBlock]


class InitialExpandable(NamedTuple):
    """An expandable segment before the first request: its virtual reservation and mapped ranges."""

    base: int
    vsize: int
    stream: int
    pool: int
    small: bool
    page: int
    ranges: list[tuple[int, int]]  # mapped (addr, size)
    blocks: list[InitialBlock]


class _SnapshotSegment(NamedTuple):
    """A segment of the snapshot (alive at its end) or undone back to the trace's start."""

    size: int
    stream: int
    pool: int
    small: bool
    expandable: bool


class _BeforeWindow(NamedTuple):
    """An allocation made before the trace started, seen by its free (``requested`` from the free)."""

    rid: int
    requested: int
    stream: int


class _PreBlock(NamedTuple):
    addr: int
    requested: int
    known_size: int  # the snapshot's block size when alive to the end, -1 when the trace only freed it


@dataclass
class Requests:
    """A request stream: one row per op.

    ``op`` (OP_* codes), ``rid`` (allocation id; the same id for its alloc and frees), ``size``
    (requested bytes), ``stream``, ``pool`` (0 default, >0 a private pool); ``initial_segments``
    -- segments before the first request: (addr, size, stream, pool, is_small, [(addr,
    block_size, requested, rid), ...]); ``recorded_segments`` -- (addr, size) of segments the
    recording cudaMalloc'd, in order (used as the driver's answers); ``labels`` -- optional
    per-alloc category names.
    """

    op: np.ndarray
    rid: np.ndarray
    size: np.ndarray
    stream: np.ndarray
    pool: np.ndarray
    initial_segments: list[InitialSegment] = field(default_factory=list)
    recorded_segments: list[tuple[int, int]] = field(default_factory=list)
    event_idx: np.ndarray | None = None  # trace index of each op (when from a trace)
    releases: list[list[int]] = field(default_factory=list)  # segments each release op freed
    #: expandable segments before the first request: (base, vsize, stream, pool, is_small, page,
    #: mapped ranges [(addr, size)], allocated blocks [(addr, block_size, requested, rid)])
    initial_expandable: list[InitialExpandable] = field(default_factory=list)
    expandable_bases: list[int] = field(default_factory=list)  # where the recording's new expandable segments were
    addr: np.ndarray | None = None  # the recorded address of each op (from a trace; -1 when none)
    category: np.ndarray | None = None
    categories: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.op)

    def cold(self) -> "Requests":
        """The same requests from an empty allocator: what was allocated before the window is
        allocated first (in address order), and nothing is cached. Used to ask what another
        configuration or device would do, since the cache a recording starts with was shaped by
        the recorded configuration."""
        pre = sorted((b.addr, b.requested, b.rid, seg.pool, seg.stream) for seg in self.initial_segments for b in seg.blocks)
        k = len(pre)
        cat = None
        if self.category is not None:
            cat = np.concatenate([np.full(k, -1, dtype=self.category.dtype), self.category])
        return Requests(
            op=np.concatenate([np.full(k, OP_ALLOC, dtype=np.int8), self.op]),
            rid=np.concatenate([np.array([p[2] for p in pre], dtype=np.int64), self.rid]),
            size=np.concatenate([np.array([p[1] for p in pre], dtype=np.int64), self.size]),
            stream=np.concatenate([np.array([p[4] for p in pre], dtype=np.int64), self.stream]),
            pool=np.concatenate([np.array([p[3] for p in pre], dtype=np.int64), self.pool]),
            initial_segments=[], recorded_segments=[],
            event_idx=None if self.event_idx is None else np.concatenate([np.full(k, -1, dtype=np.int64), self.event_idx]),
            releases=self.releases, category=cat, categories=self.categories,
        )


def simulate(req: Requests, conf: AllocConf | None = None, device_memory: int | None = None,
             total_memory: int | None = None, use_recorded_addresses: bool = True,
             stop_at_oom: bool = True, exact_releases: bool = False, recorded_releases: bool = True,
             reset_peak_at: int | None = None) -> SimResult:
    """Run a request stream through the allocator model.

    Release points a trace recorded (``OP_RELEASE``: segments freed just before a new one, which
    is ``malloc``'s retry on a full device or an ``empty_cache()``): with ``exact_releases`` (the
    recorded configuration) the very segments the recording freed are freed; otherwise
    ``release_cached_blocks`` runs there when ``recorded_releases``, and is left to the
    simulated device capacity when not. ``reset_peak_at``: the request index where
    ``reset_peak_memory_stats()`` was called (the maxima count from there).
    """
    conf = conf or AllocConf()
    addrs = _AddressSource(req.recorded_segments if use_recorded_addresses else (),
                           expandable_bases=req.expandable_bases if use_recorded_addresses else ())
    al = Allocator(conf, device_memory=device_memory, addresses=addrs, total_memory=total_memory)
    for seg_addr, seg_size, stream, pid, small, blocks in req.initial_segments:
        al.add_segment(seg_addr, seg_size, stream, pid, small, blocks)
    for base, vsize, stream, pid, small, page, ranges, blocks in req.initial_expandable:
        al.add_expandable_segment(base, vsize, stream, pid, small, page, ranges, blocks)
    al.max_allocated, al.max_reserved = al.allocated, al.reserved  # reset_peak_memory_stats()
    a_start, r_start = al.allocated, al.reserved
    n = len(req.op)
    allocated = np.empty(n + 1, dtype=np.int64)
    reserved = np.empty(n + 1, dtype=np.int64)
    allocated[0], reserved[0] = a_start, r_start
    block_addr = np.full(n, -1, dtype=np.int64)
    block_size = np.full(n, -1, dtype=np.int64)
    op, rid, size, stream, pool = (req.op.tolist(), req.rid.tolist(), req.size.tolist(),
                                   req.stream.tolist(), req.pool.tolist())
    oom = None
    max_a, max_a_i, max_r, max_r_i = a_start, -1, r_start, -1
    req_at_max = al.requested
    frag = (0, 0, a_start)
    last = n
    for i in range(n):
        al.req_idx = i
        if i == reset_peak_at:
            al.max_allocated, al.max_reserved = al.allocated, al.reserved
            max_a, max_a_i, max_r, max_r_i = al.allocated, i - 1, al.reserved, i - 1
            req_at_max = al.requested
            fc, big = al.free_cached()
            frag = (fc, big, al.allocated)
        o = op[i]
        try:
            if o == OP_ALLOC:
                b = al.malloc(rid[i], size[i], stream[i], pool[i])
                block_addr[i], block_size[i] = b.addr, b.size
            elif o == OP_FREE:
                al.free_requested(rid[i])
                al.free_completed(rid[i])
            elif o == OP_FREE_REQ:
                al.free_requested(rid[i])
            elif o == OP_FREE_DONE:
                al.free_completed(rid[i])
            elif o == OP_EMPTY_CACHE or o == OP_RELEASE:
                if exact_releases and not conf.expandable_segments:
                    al.release_segments(req.releases[rid[i]])
                elif o == OP_EMPTY_CACHE or recorded_releases:
                    al.empty_cache()
            elif o == OP_OOM:
                al.oom_attempt(size[i], stream[i], pool[i])
        except OutOfMemory:
            oom = {"request_index": i, "requested_bytes": int(size[i]),
                   "rounded_bytes": int(round_size(int(size[i]), conf)),
                   "allocated_bytes": int(al.allocated), "reserved_bytes": int(al.reserved),
                   "device_memory": device_memory}
            if req.event_idx is not None:
                oom["trace_idx"] = int(req.event_idx[i])
            if stop_at_oom:
                allocated[i + 1], reserved[i + 1] = al.allocated, al.reserved
                last = i + 1
                break
        allocated[i + 1], reserved[i + 1] = al.allocated, al.reserved
        if al.allocated > max_a:
            max_a, max_a_i, req_at_max = al.allocated, i, al.requested
        if al.reserved > max_r:
            max_r, max_r_i = al.reserved, i
            fc, big = al.free_cached()
            frag = (fc, big, al.allocated)
    if max_r_i < 0:
        fc, big = al.free_cached()
        frag = (fc, big, a_start)
    return SimResult(
        max_allocated=int(al.max_allocated), max_reserved=int(al.max_reserved),
        max_allocated_idx=max_a_i, max_reserved_idx=max_r_i,
        allocated_start=int(a_start), reserved_start=int(r_start),
        allocated_end=int(al.allocated), reserved_end=int(al.reserved),
        allocated=allocated[: last + 1], reserved=reserved[: last + 1],
        requested_at_max=int(req_at_max), block_addr=block_addr, block_size=block_size,
        segment_events=al.seg_events, oom=oom, n_segments_max=len(al.segments), conf=conf,
        free_cached_at_max_reserved=frag[0], largest_free_at_max_reserved=frag[1],
        allocated_at_max_reserved=frag[2],
    )


# --------------------------------------------------------------------------- from a snapshot
def _pool_code(pool_id: Any, codes: dict[str, int]) -> int:
    s = str(pool_id)
    if s in ("(0, 0)", "None", "", "nan"):
        return 0
    return codes.setdefault(s, len(codes) + 1)


def _expandable_start(end_segs: dict[int, _SnapshotSegment], action: np.ndarray, addr: np.ndarray,
                      size: np.ndarray, stream: np.ndarray, a_map: int, a_unmap: int, total_memory: int
                      ) -> tuple[list[tuple[int, int, int, int, bool, int, list[tuple[int, int]]]], list[int]]:
    """Expandable segments before the window: (base, vsize, stream, pool, is_small, page, mapped
    ranges) for those with pages mapped at the start, and the bases of those the trace creates.

    The snapshot lists an expandable segment's mapped ranges as segments; a trace's
    ``segment_map``/``segment_unmap`` are undone from the end. Ranges of one stream within one
    virtual reservation (1 1/8 of the device, ``find_expandable_block``) are one segment.
    """
    pieces: list[tuple[int, int, int, int, int]] = []  # (addr, size, stream, pool, small: 1/0/-1 unknown)
    for a, (sz, st, pid, small, exp) in end_segs.items():
        if exp:
            pieces.append((a, sz, st, pid, int(small)))
    rows = np.flatnonzero((action == a_map) | (action == a_unmap))
    for i in rows:
        pieces.append((int(addr[i]), int(size[i]), int(stream[i]), 0, -1))
    if not pieces:
        return [], []
    space = total_memory + total_memory // 8
    clusters: list[dict[str, Any]] = []
    for a, sz, st, pid, small_code in sorted(pieces):  # small_code: 1/0, -1 unknown
        c = next((c for c in clusters if c["stream"] == st and c["base"] <= a < c["base"] + space), None)
        if c is None:
            c = {"base": a, "stream": st, "pool": pid, "small": small_code, "sizes": []}
            clusters.append(c)
        if small_code >= 0:
            c["small"], c["pool"] = small_code, pid
        c["sizes"].append(sz)
    for c in clusters:
        if c["small"] < 0:
            c["small"] = int(any(x % kLargeBuffer for x in c["sizes"]))
        c["page"] = kSmallBuffer if c["small"] else kLargeBuffer
        c["pages"] = set()
    def cluster_of(a: int, st: int) -> dict[str, Any]:
        return next(c for c in clusters if c["stream"] == st and c["base"] <= a < c["base"] + space)
    for a, (sz, st, pid, small, exp) in end_segs.items():
        if exp:
            c = cluster_of(a, st)
            c["pages"].update(range(a, a + sz, c["page"]))
    first_map: dict[int, int] = {}
    for i in rows[::-1]:
        a, sz, st = int(addr[i]), int(size[i]), int(stream[i])
        c = cluster_of(a, st)
        pg = range(a, a + sz, c["page"])
        if action[i] == a_map:
            c["pages"].difference_update(pg)
            first_map[c["base"]] = int(i)
        else:
            c["pages"].update(pg)
    initial = []
    for c in clusters:
        page = c["page"]
        vsize = page * ((space + page - 1) // page)
        if c["pages"]:
            ranges: list[tuple[int, int]] = []
            for p in sorted(c["pages"]):
                if ranges and ranges[-1][0] + ranges[-1][1] == p:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + page)
                else:
                    ranges.append((p, page))
            initial.append((c["base"], vsize, c["stream"], c["pool"], bool(c["small"]), page, ranges))
    bases = [b for b, _ in sorted(((b, i) for b, i in first_map.items() if not any(x[0] == b for x in initial)),
                                  key=lambda t: t[1])]
    return initial, bases


def _infer_private_pools(req: Requests, conf: AllocConf, trace_segments: list[tuple[int, int]], at_end: set[int],
                         rounds: int = 8) -> None:
    """Give a private pool to segments the trace created and freed (the snapshot no longer
    names their pool): a segment the recording cudaMalloc'd although the default pool had a block
    for the request was made for another pool (a CUDA graph's or a ``MemPool``'s)."""
    gone = sorted((a, s) for a, s in trace_segments if a not in at_end)
    if not gone or req.addr is None or conf.expandable_segments:
        return
    starts = np.array([a for a, _ in gone], dtype=np.int64)
    is_alloc = req.op == OP_ALLOC
    for _ in range(rounds):
        r = simulate(req, conf, exact_releases=True)
        bad = np.flatnonzero(is_alloc & (r.block_addr != req.addr) & (req.pool == 0) & (req.addr >= 0))
        if not len(bad):
            return
        a = int(req.addr[bad[0]])
        k = int(np.searchsorted(starts, a, side="right")) - 1
        if k < 0 or a >= gone[k][0] + gone[k][1]:
            return  # not a segment freed in the window: nothing to infer
        lo, hi = gone[k][0], gone[k][0] + gone[k][1]
        pid = int(req.pool.max()) + 1
        req.pool[(req.addr >= lo) & (req.addr < hi)] = pid


def requests_from_snapshot(snap: Any, device: int = 0, total_memory: int | None = None) -> tuple[Requests, AllocConf]:
    """The request stream a trace recorded, the allocator state before it, and its configuration.

    * allocs, ``free_requested`` and ``free_completed`` pair by address in trace order; a
      request immediately followed by its completion is one ``free``;
    * a run of ``segment_free``/``segment_unmap`` that no new segment or ``oom`` follows
      (so not ``malloc``'s own release-and-retry) is an ``empty_cache()`` call;
    * an ``oom`` entry is a request that failed (its size is the rounded size);
    * segments before the window are the snapshot's segments with the trace's segment events
      undone; blocks allocated before the window are the trace's frees without an alloc and
      the snapshot's active blocks the trace never allocated, each as large as torch made it
      (``round_size``, and the whole gap when ``should_split`` would not have split it).
    """
    from memprof.snapshot.tables import A_ALLOC, A_FREE, A_FREE_DONE, A_FREE_REQ, A_OOM, A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP

    conf = AllocConf.from_snapshot(snap.info.get("allocator_settings"))
    total_memory = total_memory or DEFAULT_TOTAL_MEMORY
    ev = snap.device_events(device)
    action = ev["action"].to_numpy()
    addr = ev["addr"].to_numpy()
    size = ev["size"].to_numpy()
    stream = ev["stream"].to_numpy()
    idx = ev["idx"].to_numpy()

    seg = snap.segments
    seg = seg[seg["device"].to_numpy() == device]
    codes: dict[str, int] = {}
    end_segs = {int(a): _SnapshotSegment(int(s), int(st), _pool_code(p, codes), t == "small", bool(x))
                for a, s, st, p, t, x in zip(seg["address"], seg["total_size"], seg["stream"], seg["pool_id"],
                                             seg["segment_type"], seg["is_expandable"])}
    # segments alive at the start: undo the trace's segment events from the end
    start_segs = {a: v for a, v in end_segs.items() if not v.expandable}
    seg_rows = np.flatnonzero((action == A_SEG_ALLOC) | (action == A_SEG_FREE))
    for i in seg_rows[::-1]:
        a = int(addr[i])
        if action[i] == A_SEG_ALLOC:
            start_segs.pop(a, None)
        else:
            s = int(size[i])
            start_segs[a] = _SnapshotSegment(s, int(stream[i]), 0, s == kSmallBuffer, False)
    recorded = [(int(addr[i]), int(size[i])) for i in np.flatnonzero(action == A_SEG_ALLOC)]
    exp_initial, exp_bases = _expandable_start(end_segs, action, addr, size, stream, A_SEG_MAP, A_SEG_UNMAP, total_memory)

    # pool of an address: the segment (alive at the end) that holds it
    pool_starts = np.array(sorted(a for a, v in end_segs.items() if v.pool), dtype=np.int64)
    pool_ends = np.array([a + end_segs[int(a)].size for a in pool_starts], dtype=np.int64)
    pool_ids = np.array([end_segs[int(a)].pool for a in pool_starts], dtype=np.int64)

    def pool_of(a: int) -> int:
        if not len(pool_starts):
            return 0
        k = int(np.searchsorted(pool_starts, a, side="right")) - 1
        return int(pool_ids[k]) if k >= 0 and a < pool_ends[k] else 0

    ops: list[int] = []
    rids: list[int] = []
    sizes: list[int] = []
    streams: list[int] = []
    pools: list[int] = []
    eidx: list[int] = []
    live: dict[int, int] = {}
    pre: dict[int, _BeforeWindow] = {}  # addr -> allocated before the window
    releases: list[list[int]] = []
    next_rid = 0
    # plain lists: indexing them is several times faster than numpy scalars in this loop
    action_l, addr_l, size_l, stream_l, idx_l = action.tolist(), addr.tolist(), size.tolist(), stream.tolist(), idx.tolist()
    n = len(action)
    skip = -1
    for i in range(n):
        if i == skip:
            continue
        act = action_l[i]
        if act == A_ALLOC:
            a = int(addr_l[i])
            live[a] = next_rid
            ops.append(OP_ALLOC); rids.append(next_rid); sizes.append(int(size_l[i]))
            streams.append(int(stream_l[i])); pools.append(pool_of(a)); eidx.append(int(idx_l[i]))
            next_rid += 1
        elif act in (A_FREE_REQ, A_FREE, A_FREE_DONE):
            a = int(addr_l[i])
            rid = live.get(a)
            if rid is None:
                if act == A_FREE_DONE and a in pre:
                    rid = pre[a].rid
                else:
                    rid = next_rid
                    next_rid += 1
                    pre[a] = _BeforeWindow(rid, int(size_l[i]), int(stream_l[i]))
            whole = act == A_FREE or (act == A_FREE_REQ and i + 1 < n and action_l[i + 1] == A_FREE_DONE and addr_l[i + 1] == a)
            if whole:
                skip = i + 1 if act == A_FREE_REQ else -1
                live.pop(a, None)
                o = OP_FREE
            elif act == A_FREE_REQ:
                o = OP_FREE_REQ
            else:
                live.pop(a, None)
                o = OP_FREE_DONE
            ops.append(o); rids.append(rid); sizes.append(int(size_l[i])); streams.append(int(stream_l[i]))
            pools.append(pool_of(a)); eidx.append(int(idx_l[i]))
        elif act in (A_SEG_FREE, A_SEG_UNMAP):
            if ops and ops[-1] in (OP_EMPTY_CACHE, OP_RELEASE) and i > 0 and action_l[i - 1] in (A_SEG_FREE, A_SEG_UNMAP):
                releases[-1].append(int(addr_l[i]))
                continue  # same run
            j = i
            while j < n and action_l[j] in (A_SEG_FREE, A_SEG_UNMAP, A_FREE_DONE):
                j += 1
            if j < n and action_l[j] == A_OOM:
                continue  # the failing malloc's own release, replayed by the oom op
            # followed by a new segment: malloc's release-and-retry (device full) or an
            # empty_cache() just before an allocation -- the trace cannot tell them apart
            o = OP_RELEASE if j < n and action_l[j] in (A_SEG_ALLOC, A_SEG_MAP) else OP_EMPTY_CACHE
            ops.append(o); rids.append(len(releases)); sizes.append(0); streams.append(0); pools.append(0)
            eidx.append(int(idx_l[i]))
            releases.append([int(addr_l[i])])
        elif act == A_OOM:
            ops.append(OP_OOM); rids.append(-1); sizes.append(int(size_l[i])); streams.append(int(stream_l[i]))
            pools.append(0); eidx.append(int(idx_l[i]))

    # blocks allocated before the window: frees with no alloc, plus active blocks never traced
    pre_rid = {a: p.rid for a, p in pre.items()}
    pre_blocks: list[_PreBlock] = [_PreBlock(a, p.requested, -1) for a, p in pre.items()]
    blk = snap.blocks
    blk = blk[(blk["device"].to_numpy() == device) & (blk["state"].to_numpy() == "active_allocated")]
    for a, req, bsize in zip(blk["addr"].to_numpy(), blk["requested_size"].to_numpy(), blk["size"].to_numpy()):
        a = int(a)
        if a in live or a in pre_rid:
            continue
        pre_rid[a] = next_rid
        next_rid += 1
        pre_blocks.append(_PreBlock(a, int(req), int(bsize)))  # alive to the end: the snapshot knows its size

    # where a block freed in the window ended: the first alloc that started inside its slack
    op_arr = np.array(ops, dtype=np.int8)
    rid_arr = np.array(rids, dtype=np.int64)
    free_pos = {int(r): k for k, r in zip(np.flatnonzero(op_arr != OP_ALLOC), rid_arr[op_arr != OP_ALLOC]) if r >= 0}
    alloc_pos = np.flatnonzero(op_arr == OP_ALLOC)
    alloc_addr = np.array([0], dtype=np.int64)
    if len(alloc_pos):
        ev_addr = dict(zip(idx.tolist(), addr.tolist()))
        alloc_addr = np.array([ev_addr[eidx[k]] for k in alloc_pos], dtype=np.int64)
    order = np.argsort(alloc_addr, kind="stable")
    s_addr, s_pos = alloc_addr[order], alloc_pos[order] if len(alloc_pos) else np.zeros(1, np.int64)

    def block_end(a: int, r: int, limit: int, free_at: int) -> int | None:
        lo = int(np.searchsorted(s_addr, a + r, side="left"))
        hi = int(np.searchsorted(s_addr, a + r + limit, side="right"))
        for k in range(lo, hi):
            if s_pos[k] < free_at:
                return int(s_addr[k])
        return None

    initial: list[InitialSegment] = []
    pb = sorted(pre_blocks)
    starts = np.array([p.addr for p in pb], dtype=np.int64)
    for sa in sorted(start_segs):
        ssize, sstream, pid, small, _exp = start_segs[sa]
        lo = int(np.searchsorted(starts, sa, side="left"))
        hi = int(np.searchsorted(starts, sa + ssize, side="left"))
        inside = pb[lo:hi]
        blocks: list[InitialBlock] = []
        for k, (a, req, known) in enumerate(inside):
            nxt = inside[k + 1].addr if k + 1 < len(inside) else sa + ssize
            gap = nxt - a
            if known > 0:
                blocks.append(InitialBlock(a, min(known, gap), req, pre_rid[a]))
                continue
            r = min(round_size(req, conf), gap)
            rem = gap - r
            if small:
                whole = rem < kMinBlockSize
            else:
                whole = not (r < conf.max_split_size and rem > kSmallSize)
            if whole:
                bs = gap
            elif small:
                bs = r
            else:
                # an unsplit block may hold up to 1 MiB (or, oversize, max_non_split_rounding) of slack
                limit = conf.max_non_split_rounding if r >= conf.max_split_size else kSmallSize
                end = block_end(a, r, min(limit, rem), int(free_pos.get(pre_rid[a], len(ops))))
                bs = (end - a) if end is not None else r
            blocks.append(InitialBlock(a, bs, req, pre_rid[a]))
        initial.append(InitialSegment(sa, ssize, sstream, pid, small, blocks))
    initial_exp: list[InitialExpandable] = []
    for base, vsize, st, pid, small, page, ranges in exp_initial:
        blocks = []
        for ra, rs in ranges:
            lo = int(np.searchsorted(starts, ra, side="left"))
            hi = int(np.searchsorted(starts, ra + rs, side="left"))
            inside = pb[lo:hi]
            for k, (a, req, known) in enumerate(inside):
                nxt = inside[k + 1].addr if k + 1 < len(inside) else ra + rs
                bs = known if known > 0 else round_size(req, conf)
                blocks.append(InitialBlock(a, min(bs, nxt - a), req, pre_rid[a]))
        initial_exp.append(InitialExpandable(base, vsize, st, pid, small, page, ranges, blocks))

    ev_addr_of = dict(zip(idx.tolist(), addr.tolist()))
    req = Requests(
        addr=np.array([ev_addr_of.get(e, -1) for e in eidx], dtype=np.int64),
        op=np.array(ops, dtype=np.int8), rid=np.array(rids, dtype=np.int64), size=np.array(sizes, dtype=np.int64),
        stream=np.array(streams, dtype=np.int64), pool=np.array(pools, dtype=np.int64),
        initial_segments=initial, recorded_segments=recorded, event_idx=np.array(eidx, dtype=np.int64),
        releases=releases, initial_expandable=initial_exp, expandable_bases=exp_bases,
    )
    if any(v.pool for v in end_segs.values()):  # private pools exist: some freed segments may have been theirs
        _infer_private_pools(req, conf, [(int(addr[i]), int(size[i])) for i in seg_rows if action[i] == A_SEG_ALLOC],
                             set(end_segs))
    return req, conf


def min_device_memory(req: Requests, conf: AllocConf, hi: int | None = None, granularity: int = kRoundLarge) -> int:
    """The least device memory on which the requests run without running out (from an empty
    allocator; the OOM path releases the cache and retries, as torch does), to ``granularity``."""
    cold = req.cold()
    free = simulate(cold, conf, recorded_releases=False)  # no device limit: one run gives both bounds
    top = hi or free.max_reserved
    lo = max(free.max_allocated - 1, 0)  # never below what is live at once
    if simulate(cold, conf, device_memory=top, recorded_releases=False).oom is not None:
        return top
    from memprof.allocator.search import bisect

    top, _ = bisect(top, lo, lambda m: simulate(cold, conf, device_memory=m, recorded_releases=False).oom is None,
                    step=granularity, align=False)
    return top


def recorded_segment_events(snap: Any, device: int = 0) -> list[tuple[str, int, int]]:
    """The trace's own (action, addr, size) segment events, in order."""
    from memprof.snapshot.tables import ACTIONS, A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP

    ev = snap.device_events(device)
    action = ev["action"].to_numpy()
    m = np.isin(action, [A_SEG_ALLOC, A_SEG_FREE, A_SEG_MAP, A_SEG_UNMAP])
    return [(ACTIONS[a], int(x), int(s)) for a, x, s in zip(action[m], ev["addr"].to_numpy()[m], ev["size"].to_numpy()[m])]


def trace_agreement(snap: Any, device: int = 0) -> tuple[SimResult, bool]:
    """The replay under the recorded settings, and whether it put every allocation at its recorded
    address and made the recorded segment events (when it does, its counters are torch's)."""
    req, conf = requests_from_snapshot(snap, device)
    r = simulate(req, conf, exact_releases=True)
    m = req.op == OP_ALLOC
    same_addr = req.addr is not None and bool(np.array_equal(r.block_addr[m], req.addr[m]))
    return r, same_addr and [e[:3] for e in r.segment_events] == recorded_segment_events(snap, device)


def simulate_snapshot(snap: Any, device: int = 0, conf: AllocConf | None = None, alloc_conf: str | None = None,
                      device_memory: int | None = None, total_memory: int | None = None) -> SimResult:
    """Replay a snapshot's request stream through the model, under its own configuration or another."""
    req, rec_conf = requests_from_snapshot(snap, device)
    c = conf or (AllocConf.parse(alloc_conf, base=rec_conf) if alloc_conf is not None else rec_conf)
    return simulate(req, c, device_memory=device_memory, total_memory=total_memory,
                    use_recorded_addresses=True, exact_releases=(c == rec_conf and device_memory is None),
                    recorded_releases=device_memory is None)
