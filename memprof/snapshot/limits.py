"""What one snapshot file may cost to read, and the byte layer that enforces it.

Snapshot files are untrusted. A real one is a few levels deep (root -> device_traces -> trace
-> entry -> frames -> frame), memoises each object once in order, and holds at most a few rows
per byte; anything it needs grows with its size. A hostile one can be tiny and still ask for
gigabytes (a gzip bomb, a memo index of 2^29, one list referenced 10^5 times) or nest deeply
enough to overflow the C stack when CPython hashes it. Every resource is bounded here, each
bound generous for real snapshots, and each refusal is one :class:`LimitError` line that
names the limit and how to raise it:

* decompressed bytes and the memory estimated to build what they describe: ``max_bytes``
  (default 2 GiB; ``memprof --max-bytes SIZE`` or ``MEMPROF_MAX_BYTES=SIZE``);
* nesting depth of containers: ``MEMPROF_MAX_DEPTH`` (default 64; snapshots nest about 6);
* rows expanded by shared references (segments x blocks x frames): at least 1,000,000 and one
  per decompressed byte (``MEMPROF_MAX_ROWS`` raises the floor);
* memo: a pickle may store only at the next free memo index or below (what ``pickle`` writes);
* devices: indices 0..4095.

The format is decided by the bytes, never by the name: gzip, xz and bzip2 by their magic
numbers, then JSON when the first non-blank byte is ``{`` or ``[``, else pickle.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from pathlib import Path
from typing import IO, Any, cast

from memprof.errors import MemprofError
from memprof.units import fmt_bytes, parse_size

DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_DEPTH = 64
DEFAULT_ROW_FLOOR = 1_000_000
MAX_DEVICES = 4096

_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_BZ2 = b"BZh"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"

#: Errors a decompressor raises on a corrupt stream.
DECOMPRESS_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, OSError)


MEMORY_HINT = "a smaller MEMPROF_MAX_BYTES makes memprof refuse such a file up front"


class LimitError(MemprofError):
    """A file asks for more than a bound allows: the message names the bound and how to raise it."""


def _env_int(name: str, default: int, parse: Any = int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        v = parse(raw)
    except (ValueError, MemprofError):
        raise MemprofError(f"{name}={raw!r} is not a valid value") from None
    if v <= 0:
        raise MemprofError(f"{name}={raw!r} must be positive")
    return int(v)


#: What a real file may need, as a multiple of its size on disk: an uncompressed pickle builds about
#: 3.4x its size (a 70.8 MiB 1M-entry file: 240 MiB of estimate), and gzip'd real snapshots inflate
#: 20-36x (the corpus), so about 120x. Both with room to spare; a bomb inflates 1000x.
RAW_FACTOR = 8
COMPRESSED_FACTOR = 256


def max_bytes(size_on_disk: int = 0, compressed: bool = False) -> int:
    """Most decompressed bytes (and estimated bytes of memory) one file may take.

    ``MEMPROF_MAX_BYTES`` (or ``memprof --max-bytes``) when set; otherwise 2 GiB, or what a real
    snapshot of this size on disk could need when that is more (a 10M-entry, 730 MB pickle loads
    without a flag; a 10 MB gzip bomb still stops at 2.5 GiB).
    """
    if os.environ.get("MEMPROF_MAX_BYTES"):
        return _env_int("MEMPROF_MAX_BYTES", DEFAULT_MAX_BYTES, parse_size)
    return max(DEFAULT_MAX_BYTES, int(size_on_disk) * (COMPRESSED_FACTOR if compressed else RAW_FACTOR))


def max_depth() -> int:
    return _env_int("MEMPROF_MAX_DEPTH", DEFAULT_MAX_DEPTH)


def row_floor() -> int:
    return _env_int("MEMPROF_MAX_ROWS", DEFAULT_ROW_FLOOR)


_HOW = {
    "bytes": "raise it with `memprof --max-bytes SIZE` or MEMPROF_MAX_BYTES=SIZE",
    "memory": "raise it with `memprof --max-bytes SIZE` or MEMPROF_MAX_BYTES=SIZE",
    "depth": "snapshots nest about 6 levels; raise it with MEMPROF_MAX_DEPTH=N",
    "rows": "raise it with MEMPROF_MAX_ROWS=N",
}


def limit_error(kind: str, detail: str, source: str = "", limit: int | None = None) -> LimitError:
    """One line: what was exceeded, the limit (``limit``: the file's byte limit), and how to raise it."""
    if kind == "bytes":
        msg = f"{detail}, more than the {fmt_bytes(limit or max_bytes())} limit on decompressed data ({_HOW['bytes']})"
    elif kind == "memory":
        msg = f"{detail}, more than the {fmt_bytes(limit or max_bytes())} memory limit ({_HOW['memory']})"
    elif kind == "depth":
        msg = f"{detail}: nested more than {max_depth()} levels deep ({_HOW['depth']})"
    elif kind == "rows":
        msg = f"{detail} ({_HOW['rows']})"
    elif kind == "memo":
        msg = f"{detail}: pickle stores only at the next memo index, not a snapshot"
    else:
        msg = detail
    return LimitError(f"{source}: {msg}" if source else msg)


# ---------------------------------------------------------------------------
# The byte layer: open, decompress (bounded), detect the format


class BoundedReader:
    """A read-only binary stream over a (decompressed) file that refuses to go past ``limit`` bytes."""

    def __init__(self, raw: IO[bytes], limit: int, source: str, compressed: bool) -> None:
        self._raw = raw
        self._pending = b""  # bytes read ahead by :meth:`sniff`, served first
        self.limit = limit
        self.source = source
        self.compressed = compressed
        self.count = 0

    def _read_raw(self, n: int) -> bytes:
        want = min(n, self.limit - self.count + 1)
        data = self._raw.read(want) if want > 0 else b""
        self.count += len(data)
        if self.count > self.limit:
            what = "decompresses to" if self.compressed else "holds"
            raise limit_error("bytes", f"the file {what} more than {fmt_bytes(self.limit)}", self.source, self.limit)
        return data

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.limit - self.count + 1 + len(self._pending)
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out if len(out) == n else out + self._read_raw(n - len(out))
        return self._read_raw(n)

    def readinto(self, b: Any) -> int:  # used by pickle's C unpickler for large strings
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            c = self.read(1)
            if not c:
                break
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def sniff(self) -> str:
        """'json' when the first non-blank byte (after a UTF-8 BOM) is '{' or '[', else 'pickle'."""
        while True:
            chunk = self._read_raw(1 << 16)
            self._pending += chunk
            body = self._pending[3:] if self._pending.startswith(_BOM) else self._pending
            first = body.lstrip(_BLANK)[:1]
            if first or not chunk:
                return "json" if first in (b"{", b"[") else "pickle"
            self._pending = b" "  # only blanks so far: keep one, never buffer a blank bomb

    def drain(self) -> None:
        """Read to the end, so a corrupt or padded container (bad CRC, trailing garbage) is an error."""
        self._pending = b""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "BoundedReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_snapshot(path: Path, limit: int | None = None) -> tuple[BoundedReader, str]:
    """Open ``path`` by its bytes: returns (bounded decompressed stream, compression suffix '' / '.gz' / '.xz' / '.bz2')."""
    f = open(path, "rb")
    try:
        magic = f.read(6)
        f.seek(0)
        if magic.startswith(_GZIP):
            raw: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=f, mode="rb"))
            comp = ".gz"
        elif magic.startswith(_XZ):
            raw = lzma.LZMAFile(f, "rb")
            comp = ".xz"
        elif magic.startswith(_BZ2):
            raw = bz2.BZ2File(f, "rb")
            comp = ".bz2"
        elif magic.startswith(_ZSTD):
            raise MemprofError(f"{path}: zstd-compressed; decompress it first (zstd -d)")
        else:
            raw, comp = f, ""
    except BaseException:
        f.close()
        raise
    if limit is None:
        try:
            limit = max_bytes(os.fstat(f.fileno()).st_size, bool(comp))
        except BaseException:
            f.close()
            raise
    reader = BoundedReader(raw, limit, str(path), bool(comp))
    if comp:
        inner_close = reader.close

        def close() -> None:
            inner_close()
            f.close()

        reader.close = close  # type: ignore[method-assign]
    return reader, comp


# ---------------------------------------------------------------------------
# Integers: no value may reject a file


I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def to_i64(v: Any) -> int:
    """An integer field as int64: unsigned 64-bit values wrap as C++ stores them (2^64-1 -> -1),
    anything wider is clamped. Floats are truncated; bools are ints."""
    v = int(v)
    if I64_MIN <= v <= I64_MAX:
        return v
    if I64_MAX < v < (1 << 64):
        return v - (1 << 64)
    return I64_MAX if v > 0 else I64_MIN


# ---------------------------------------------------------------------------
# Shape bounds checked between decoding and interpretation


_SCALAR = (str, int, float, bool, type(None))


def _text_fields(d: dict[Any, Any], keys: tuple[str, ...], what: str, source: str) -> None:
    """Fields shown as text hold scalars (a container there would be printed by its repr)."""
    for k in keys:
        v = d.get(k)
        if not isinstance(v, _SCALAR) and not (
            k == "segment_pool_id" and isinstance(v, (list, tuple)) and all(isinstance(x, _SCALAR) for x in v)
        ):
            raise MemprofError(f"{source}: a {what}'s {k!r} holds a {type(v).__name__}: not a snapshot this tool understands")


def _fold(d: dict[Any, Any]) -> None:
    """Out-of-range integers of one segment, block or annotation dict as :func:`to_i64`, in place."""
    for k, v in d.items():
        if type(v) is int and not I64_MIN <= v <= I64_MAX:
            d[k] = to_i64(v)


def check_expansion(root: Any, nbytes: int, source: str) -> None:
    """Refuse a decoded snapshot whose shared references expand beyond what its size can hold,
    or whose device indices are out of range; fold integers beyond int64 in segments, blocks and
    annotations (:func:`to_i64`). Costs O(distinct objects), never O(expanded rows)."""
    if isinstance(root, list):
        traces: list[Any] = []
        annotations: list[Any] = []
        segments = root
    elif isinstance(root, dict):
        segments = root.get("segments") or []
        traces = root.get("device_traces") or []
        annotations = root.get("external_annotations") or []
        for key in ("allocator_settings", "user_metadata"):  # kept as they are: JSON, reports
            v = root.get(key)
            if v is not None and not isinstance(v, dict):
                raise MemprofError(f"{source}: its {key} is a {type(v).__name__}, not a dict: not a snapshot this tool understands")
            check_depth(v, key, source)
    else:
        return
    cap = max(row_floor(), nbytes)
    rows = 0
    if isinstance(traces, list):
        if len(traces) > MAX_DEVICES:
            raise MemprofError(f"{source}: {len(traces)} device traces; memprof reads at most {MAX_DEVICES} devices")
        for t in traces:
            if isinstance(t, list):
                rows += len(t)
            elif isinstance(t, dict) and isinstance(t.get("n"), int):  # the C loader's columns
                rows += t["n"]
    block_cost: dict[int, int] = {}

    def blocks_rows(blocks: Any) -> int:
        c = block_cost.get(id(blocks))
        if c is None:
            c = 0
            for b in blocks:
                c += 1
                if isinstance(b, dict):
                    _fold(b)
                    _text_fields(b, ("state",), "block", source)
                    fr = b.get("frames")
                    c += len(fr) if isinstance(fr, (list, tuple)) else 0
                    h = b.get("history")
                    c += len(h) if isinstance(h, list) else 0
            block_cost[id(blocks)] = c
        return c

    seg_cost: dict[int, int] = {}
    if isinstance(segments, list):
        for s in segments:
            c = seg_cost.get(id(s))
            if c is None:
                c = 1
                if isinstance(s, dict):
                    _check_device(s.get("device", 0), "segment", source)
                    _fold(s)
                    _text_fields(s, ("segment_type", "segment_pool_id"), "segment", source)
                    bl = s.get("blocks")
                    if isinstance(bl, (list, tuple)):
                        c += blocks_rows(bl)
                    fr = s.get("frames")
                    c += len(fr) if isinstance(fr, (list, tuple)) else 0
                seg_cost[id(s)] = c
            rows += c
            if rows > cap:
                break
    if isinstance(annotations, list):
        rows += len(annotations)
        for a in annotations if rows <= cap else ():
            if isinstance(a, dict):
                _check_device(a.get("device", 0), "annotation", source)
                _fold(a)
                _text_fields(a, ("stage", "name"), "annotation", source)
    if rows > cap:
        raise limit_error(
            "rows",
            f"{source}: its shared references expand to more than {cap:,} rows (trace entries, segments, "
            f"blocks and frames), more than a {fmt_bytes(nbytes)} snapshot can hold",
        )


def _children(o: Any) -> Any:
    return (x for kv in o.items() for x in kv) if isinstance(o, dict) else iter(o)


_CONTAINERS = (list, tuple, dict, set, frozenset)


def check_depth(root: Any, what: str, source: str) -> None:
    """Refuse a structure nested deeper than :func:`max_depth` or referring to itself.

    Iterative (no recursion) and O(distinct containers): the depth counted while unpickling can be
    fooled by lists filled through memo copies after they were themselves added; this walk cannot.
    """
    if not isinstance(root, _CONTAINERS):
        return
    limit = max_depth()
    height: dict[int, int] = {}  # id -> height of a container fully walked
    on_path = {id(root)}
    stack: list[list[Any]] = [[root, _children(root), 1]]  # container, its items, 1 + tallest child so far
    while stack:
        top = stack[-1]
        for c in top[1]:
            if not isinstance(c, _CONTAINERS):
                continue
            h = height.get(id(c))
            if h is None:
                if id(c) in on_path:
                    raise MemprofError(f"{source}: its {what} refers to itself: not a snapshot this tool understands")
                if len(stack) + 1 > limit:
                    raise limit_error("depth", f"{source}: its {what}")
                on_path.add(id(c))
                stack.append([c, _children(c), 1])
                break
            if len(stack) + h > limit:
                raise limit_error("depth", f"{source}: its {what}")
            top[2] = max(top[2], h + 1)
        else:
            stack.pop()
            on_path.discard(id(top[0]))
            height[id(top[0])] = top[2]
            if stack:
                stack[-1][2] = max(stack[-1][2], top[2] + 1)


def _check_device(d: Any, what: str, source: str) -> None:
    if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < MAX_DEVICES:
        shown = d if isinstance(d, int) else type(d).__name__
        raise MemprofError(f"{source}: a {what} is on device {shown}; memprof reads devices 0..{MAX_DEVICES - 1}")
