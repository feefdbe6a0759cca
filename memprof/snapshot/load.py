"""Read a PyTorch memory snapshot file into columns: :func:`load`.

The rooms of :mod:`memprof.snapshot`, in the order a file goes through them: :mod:`.read` (the
file's format from its bytes, bounded decompression, decoding without running code, one error
ladder), :mod:`.columns` (the raw object -> :class:`.tables.Snapshot`, or the C loader's columns),
:mod:`.frames` (stacks interned once, library frames, labels) and :mod:`.cache` (Arrow IPC per
file, keyed by path, size and mtime). It reads ``.pickle``, ``.pickle.gz`` and ``.json``
snapshots written by torch 2.0 to 2.14. No torch import is needed here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from memprof.errors import MemprofError
from memprof.snapshot import background, limits, malloc_tuning
from memprof.snapshot.cache import cache_dir, cache_key, read_cache, write_cache
from memprof.snapshot.columns import columns_from_raw, load_fast
from memprof.snapshot.meta import snapshot_beside
from memprof.snapshot.read import one_line_errors, open_checked, read_raw_sized
from memprof.snapshot.tables import Snapshot

__all__ = ["Snapshot", "load", "load_uncached", "iter_snapshot_files"]


def load(path: str | os.PathLike[str], use_cache: bool = True) -> Snapshot:
    """Load a snapshot file (``.pickle``, ``.pickle.gz``, ``.json``) as columns, using the cache when fresh.

    A ``NAME.meta.json`` stands for the snapshot beside it."""
    p = snapshot_beside(path)
    if not p.exists():
        raise MemprofError(f"no such file: {p}")
    if p.is_dir():
        raise MemprofError(f"{p} is a folder, not a snapshot file")
    where = cache_dir() / cache_key(p) if use_cache else None
    if where is not None and (where / "info.json").exists():
        try:
            snap = read_cache(str(p), where)
            snap.cache_entry = where
            return snap
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(where, ignore_errors=True)
    with malloc_tuning.mapped_while_loading():  # the loader's growing buffers resized in place
        snap = load_uncached(p)
    if where is not None:
        # on another core while the analysis goes on; a read-only or full cache folder (or settings
        # JSON cannot hold) only costs the next run its time (memprof.background)
        snap.cache_entry = where
        background.submit(write_cache, snap, where)
    return snap


def pickle_format(p: Path) -> str | None:
    """The file's format from its bytes ('pickle', 'pickle.gz', 'pickle.xz', ...), None for JSON."""
    reader, fmt = open_checked(p)
    reader.close()
    return None if fmt.startswith("json") else fmt


def load_uncached(p: Path, fast: bool = True) -> Snapshot:
    """Read a snapshot file: the C loader for pickles when it can, else the restricted unpickler
    (always with MEMPROF_LOADER=pure or python)."""
    if fast and os.environ.get("MEMPROF_LOADER") not in ("pure", "python"):
        snap = load_fast(p)
        if snap is not None:
            return snap
    raw, fmt, nbytes = read_raw_sized(p)
    with one_line_errors(p):
        limits.check_expansion(raw, nbytes, str(p))
        return columns_from_raw(raw, source=str(p), file_format=fmt, file_size=p.stat().st_size)


def iter_snapshot_files(folder: str | os.PathLike[str]) -> Iterable[Path]:
    """Snapshot files under ``folder`` (recursively), sorted by path."""
    root = Path(folder)
    pats = ("*.pickle", "*.pickle.gz", "*.pkl", "*.pkl.gz", "*.json", "*.json.gz")
    found: set[Path] = set()
    for pat in pats:
        found.update(p for p in root.rglob(pat) if ".meta.json" not in p.name and p.is_file())
    return sorted(found)
