"""Reading an untrusted snapshot file: its format from its bytes, bounded decompression, and
the raw object decoded without running code (the C VM or the restricted unpickler; JSON with
bounds). Every error becomes one :class:`memprof.errors.MemprofError` line through one ladder,
:func:`one_line_errors`.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import os
import pickle
from pathlib import Path
from typing import IO, Any, Iterator, cast

from memprof.errors import MemprofError, UnsafePickleError
from memprof.snapshot import limits
from memprof.snapshot.safe_pickle import safe_load, scan

def open_checked(p: Path) -> tuple[limits.BoundedReader, str]:
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
        raise decode_error(p, e) from None
    except BaseException:
        reader.close()
        raise
    return reader, kind + comp


def decode_error(p: Path, e: BaseException) -> MemprofError:
    """A decompressor's or the OS's error as one line."""
    if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and e.errno is not None:
        return MemprofError(f"{p}: cannot read ({e.strerror or e})")
    return MemprofError(f"{p}: truncated or corrupt file ({type(e).__name__}: {e or 'unexpected end of data'})")


def json_bytes(data: bytes, source: str, limit: int | None = None) -> Any:
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
    reader, _ = open_checked(p)
    with reader:
        try:
            fp = fastpickle_module()
        except ImportError:
            scan(cast(IO[bytes], reader), str(p), reader.limit)  # a file-like reader (read, readline)
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
    raw, fmt, _ = read_raw_sized(Path(path))
    return raw, fmt


def read_raw_sized(p: Path) -> tuple[Any, str, int]:
    """(raw object, format name, decompressed bytes)."""
    reader, fmt = open_checked(p)
    is_json = fmt.startswith("json")
    with one_line_errors(p, "JSON" if is_json else "pickle"):
        with reader:
            if is_json:
                raw = json_bytes(reader.read(), str(p), reader.limit)
                reader.drain()
                return raw, fmt, reader.count
        _scan_pickle(p)
        reader, fmt = open_checked(p)
        with reader:
            gc_was = gc.isenabled()
            gc.disable()  # building millions of containers: the cyclic GC only slows it down
            try:
                raw = safe_load(cast(IO[bytes], reader))  # a file-like reader (read, readline)
            finally:
                if gc_was:
                    gc.enable()
            reader.drain()
            return raw, fmt, reader.count


def normalise(raw: Any, source: str) -> dict[str, Any]:
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


SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


@contextlib.contextmanager
def one_line_errors(p: Path, decoding: str | None = None) -> Iterator[None]:
    """Every error of reading ``p`` or shaping what it holds as one line, never a traceback.

    ``decoding`` ("JSON" or "pickle") while a decoder runs: what it raises means "not a readable
    file of that kind"; None while the decoded object is turned into columns: what goes wrong
    there means "not a snapshot this tool understands".
    """
    try:
        yield
    except MemprofError:
        raise
    except RecursionError:
        raise limits.limit_error("depth", f"{p}: a container") from None
    except limits.DECOMPRESS_ERRORS as e:
        raise decode_error(p, e) from None
    except MemoryError:
        raise MemprofError(f"{p}: out of memory while reading ({limits.MEMORY_HINT})") from None
    except (pickle.UnpicklingError, UnicodeDecodeError, *SHAPE_ERRORS) as e:
        if decoding is not None:
            raise MemprofError(f"{p}: not a readable {decoding} file ({type(e).__name__}: {str(e)[:120]})") from None
        raise shape_error(p, e) from None


def shape_error(path: Path, e: BaseException) -> MemprofError:
    """A file that decodes but holds the wrong shapes: one line, never a traceback."""
    return MemprofError(f"{path}: not a snapshot this tool understands ({type(e).__name__}: {str(e)[:120]})")


def fastpickle_module() -> Any:
    """The C extension (built by setup.py). MEMPROF_LOADER=python acts as if it were not built."""
    if os.environ.get("MEMPROF_LOADER") == "python":
        raise ImportError("MEMPROF_LOADER=python")
    import importlib

    # by name: the C extension is no Python module, and `from memprof import _fastpickle` reads to
    # the import checker as an import of the whole package (and so of the recorder and torch)
    return importlib.import_module("memprof.snapshot._fastpickle")
