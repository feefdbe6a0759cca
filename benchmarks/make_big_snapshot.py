"""Write a realistic large snapshot, streaming: a training loop's allocator trace with shared stacks.

    python benchmarks/make_big_snapshot.py OUT.pickle [--entries 1000000] [--seed 0]

The file has the shape ``torch.cuda.memory._dump_snapshot`` writes (pickle protocol 4 with 64 KiB
frames; every dict and list memoised with a PUT, as CPython's pickler does):

* each iteration allocates a layer's worth of tensors (forward) and frees most of them (backward);
  every free is a ``free_requested`` + ``free_completed`` pair on the same stack list object;
* allocations are carved from segments the way the caching allocator rounds them (512 B blocks,
  2 MiB segments for requests <= 1 MiB, 20 MiB below 10 MiB, else the request rounded to 2 MiB);
  a ``segment_alloc`` precedes the first block of each segment, and every ``--empty-cache-every``
  iterations an ``empty_cache`` releases the segments with nothing alive (``segment_free``), so
  reserved memory follows the working set instead of climbing for ever;
* stacks come from a pool of frame dicts shared by reference (memoised once), as torch's
  symbolizer shares them.

The opcodes are written directly, so memory stays flat (the live allocations only) whatever
``--entries`` is: 10M entries (~0.75 GB) build in a few minutes with ~100 MB of RSS.
"""

from __future__ import annotations

import argparse
import io
import pickle
import random
import struct
from typing import BinaryIO, Iterator

SMALL, SMALL_SEG, LARGE_SEG, MIN_LARGE, ROUND_LARGE = 1 << 20, 2 << 20, 20 << 20, 10 << 20, 2 << 20
FRAME_SIZE = 64 * 1024


def segment_size(size: int) -> int:
    if size <= SMALL:
        return SMALL_SEG
    if size < MIN_LARGE:
        return LARGE_SEG
    return (size + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


class Writer:
    """Pickle opcodes into 64 KiB protocol-4 frames, with a memo counter."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = io.BytesIO()
        self.memo = 0
        f.write(b"\x80\x04")

    def w(self, b: bytes) -> None:
        self.buf.write(b)
        if self.buf.tell() >= FRAME_SIZE:
            self.flush()

    def flush(self) -> None:
        data = self.buf.getvalue()
        if data:
            self.f.write(b"\x95" + struct.pack("<Q", len(data)) + data)
        self.buf = io.BytesIO()

    def put(self) -> int:
        i = self.memo
        self.memo += 1
        self.w(b"\x94")  # MEMOIZE, as protocol 4 writes it
        return i

    @staticmethod
    def get(i: int) -> bytes:
        return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)

    @staticmethod
    def int_(v: int) -> bytes:
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if -(2**31) <= v < 2**31:
            return b"J" + struct.pack("<i", v)
        n = (v.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)

    def str_(self, s: str) -> int:
        b = s.encode()
        self.w(b"\x8c" + bytes([len(b)]) + b if len(b) < 256 else b"X" + struct.pack("<I", len(b)) + b)
        return self.put()

    def end(self) -> None:
        self.w(b".")
        self.flush()


def stacks_pool(w: Writer, rng: random.Random) -> tuple[dict[str, int], list[list[int]]]:
    """Memoise key strings and frame dicts (kept on the stack, then popped); return their memo ids."""
    files = [f"/home/user/project/model/layer_{i}.py" for i in range(40)] + [
        "/usr/lib/python3.11/site-packages/torch/nn/modules/module.py",
        "/usr/lib/python3.11/site-packages/torch/nn/functional.py",
        "/usr/lib/python3.11/site-packages/torch/_tensor.py",
    ]
    keys: dict[str, int] = {}
    w.w(b"(")  # MARK: everything memoised here is popped afterwards (POP_MARK)
    for k in ("action", "addr", "size", "stream", "time_us", "frames", "filename", "line", "name",
              "alloc", "free_requested", "free_completed", "segment_alloc", "segment_free"):
        keys[k] = w.str_(k)
    file_ids = [w.str_(f) for f in files]
    frames: list[int] = []

    def frame(fid: int, line: int, name: str) -> int:
        w.w(b"}")
        i = w.put()
        w.w(b"(" + w.get(keys["filename"]) + w.get(fid) + w.get(keys["line"]) + w.int_(line) + w.get(keys["name"]))
        w.str_(name)
        w.w(b"u")
        return i

    cpp_file = w.str_("??")
    cpp = [frame(cpp_file, 0, n) for n in ("c10::cuda::CUDACachingAllocator::malloc", "at::empty_strided")]
    for i in range(600):
        frames.append(frame(rng.choice(file_ids), rng.randint(1, 900), f"fn_{i}"))
    w.w(b"1")  # POP_MARK
    stacks = [cpp + rng.sample(frames, rng.randint(8, 24)) for _ in range(400)]
    return keys, stacks


def entries(rng: random.Random, n: int, empty_cache_every: int) -> Iterator[tuple[str, int, int, int, int]]:
    """(action, addr, size, time_us, list id; -1 for segment events) for ``n`` trace entries.

    A small model of the caching allocator: blocks are carved from the segment in use for their
    pool; a segment whose blocks are all free is cached and reused (best fit) before a new one is
    allocated; ``empty_cache`` frees the cached ones.
    """
    t = 1_700_000_000_000_000
    next_seg = 0x7F0000000000
    segs: dict[int, list[int]] = {}  # base -> [size, bump offset, live blocks]
    cached: set[int] = set()  # segments with nothing alive
    open_seg = {"small": 0, "large": 0}  # pool -> segment being carved
    live: list[tuple[int, int, int, int]] = []  # (addr, size, segment base, list id)
    count = it = list_id = 0
    while count < n:
        it += 1
        for _ in range(rng.randint(20, 60)):
            size = rng.choice([512, 4096, 65536, 1 << 20, 4 << 20, 16 << 20]) * rng.randint(1, 4)
            block = max(512, (size + 511) // 512 * 512)
            pool = "small" if block <= SMALL else "large"
            want = segment_size(block)
            base = open_seg[pool] if block < MIN_LARGE else 0
            if not base or segs[base][1] + block > segs[base][0]:
                fit = [b for b in cached if segs[b][0] >= block and (segs[b][0] == want if block < MIN_LARGE else True)]
                if fit:
                    base = min(fit, key=lambda b: (segs[b][0], b))
                    cached.discard(base)
                    segs[base][1] = 0
                else:
                    base = next_seg
                    next_seg += want
                    segs[base] = [want, 0, 0]
                    yield ("segment_alloc", base, want, t, -1)
                    count += 1
                    t += rng.randint(1, 5)
                if block < MIN_LARGE:
                    old = open_seg[pool]
                    if old and old in segs and segs[old][2] == 0:
                        cached.add(old)
                    open_seg[pool] = base
            seg = segs[base]
            addr = base + seg[1]
            seg[1] += block
            seg[2] += 1
            list_id += 1
            yield ("alloc", addr, size, t, list_id)
            live.append((addr, size, base, list_id))
            count += 1
            t += rng.randint(1, 30)
        rng.shuffle(live)
        while len(live) > 30:
            addr, size, base, lid = live.pop()
            yield ("free_requested", addr, size, t, lid)
            yield ("free_completed", addr, size, t, lid)
            seg = segs[base]
            seg[2] -= 1
            if seg[2] == 0:
                if base in open_seg.values():
                    seg[1] = 0  # the segment in use starts over
                else:
                    cached.add(base)
            count += 2
            t += rng.randint(1, 20)
        if it % empty_cache_every == 0:
            for base in sorted(cached):
                yield ("segment_free", base, segs.pop(base)[0], t, -1)
                count += 1
                t += rng.randint(1, 5)
            cached.clear()


def write(f: BinaryIO, n: int, seed: int = 0, empty_cache_every: int = 50) -> None:
    rng = random.Random(seed)
    w = Writer(f)
    keys, stacks = stacks_pool(w, rng)
    g = w.get
    w.w(b"}")
    w.put()
    w.w(b"(")
    w.str_("segments")
    w.w(b"]")
    w.put()
    w.str_("device_traces")
    w.w(b"]")
    w.put()
    w.w(b"]")  # the trace of device 0
    w.put()
    lists: dict[int, int] = {}  # live allocation -> memo id of its frames list
    emitted = 0
    batch = 0
    for action, addr, size, t, lid in entries(rng, n, empty_cache_every):
        if emitted == n:
            break
        if batch == 0:
            w.w(b"(")
        w.w(b"}")
        w.put()
        w.w(b"(" + g(keys["action"]) + g(keys[action]) + g(keys["addr"]) + w.int_(addr) + g(keys["size"]) + w.int_(size)
            + g(keys["stream"]) + b"K\x00" + g(keys["time_us"]) + w.int_(t) + g(keys["frames"]))
        if action == "alloc" or lid < 0:
            w.w(b"]")
            mid = w.put()
            if lid >= 0:
                lists[lid] = mid
            w.w(b"(" + b"".join(g(i) for i in stacks[rng.randrange(len(stacks))]) + b"e")
        elif action == "free_requested":
            w.w(g(lists[lid]))
        else:  # free_completed shares the list with its free_requested and alloc
            w.w(g(lists.pop(lid)))
        w.w(b"u")
        emitted += 1
        batch += 1
        if batch == 1000:
            w.w(b"e")
            batch = 0
    if batch:
        w.w(b"e")
    w.w(b"a")  # append the trace to device_traces
    w.str_("allocator_settings")
    w.w(b"}")
    w.put()
    w.str_("external_annotations")
    w.w(b"]")
    w.put()
    w.w(b"u")
    w.end()


def make(entries_: int, seed: int = 0) -> dict:
    """The snapshot as a dict (small sizes, for tests): written to memory, read back with pickle."""
    buf = io.BytesIO()
    write(buf, entries_, seed)
    return pickle.loads(buf.getvalue())  # noqa: S301 - our own bytes, just written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--empty-cache-every", type=int, default=50, help="iterations between empty_cache() calls (default 50)")
    a = ap.parse_args()
    with open(a.out, "wb") as f:
        write(f, a.entries, a.seed, a.empty_cache_every)


if __name__ == "__main__":
    main()
