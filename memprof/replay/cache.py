"""The replay of a snapshot, cached beside its columnar (Arrow) cache: work done once per snapshot.

Replaying 10M entries takes seconds (sorting by address, cumulative sums); its result is a few
tables that read back from memory-mapped Arrow files in a fraction of that. The cache entry lives
in the snapshot's own cache folder (same key: path, size, mtime and the loader's cache version),
one folder per device, and is keyed also by the source of :mod:`memprof.replay.timeline` and
:mod:`memprof.snapshot.load`, so a change to the replay's semantics never reads an old result. A damaged
or unreadable entry is ignored and rebuilt; a cache folder that cannot be written only costs the
replay. The tables read back are the same values with the same dtypes (checked by
``tests/replay/test_scale.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from memprof.snapshot import background
from memprof.snapshot.tables import Snapshot
from memprof.snapshot.cache import cache_key, cache_dir, staged_folder
from memprof.replay.timeline import Replay, replay

_TABLES = ("allocations", "timeline", "reserved", "oom_events")
_CODE_KEY: str | None = None


def _code_key() -> str:
    """A hash of the code whose output is cached (replay and load): edits invalidate old entries."""
    global _CODE_KEY
    if _CODE_KEY is None:
        h = hashlib.sha1()
        for name in ("memprof.replay.timeline", "memprof.snapshot.load"):
            h.update(Path(sys.modules[name].__file__ or "").read_bytes())
        _CODE_KEY = h.hexdigest()[:16]
    return _CODE_KEY


def _where(snap: Snapshot, device: int) -> Path | None:
    """The cache folder for this snapshot's replay of ``device``; None when the snapshot has no cache entry."""
    base = snap.cache_entry  # loaded through the cache: read from it, or being written to it
    if base is None:
        try:
            p = Path(snap.source)
            if not p.is_file():
                return None
            base = cache_dir() / cache_key(p)
        except (OSError, ValueError):
            return None
        if not (base / "info.json").exists():
            return None  # only snapshots that were loaded through the cache (same file, same version)
    return base / f"replay-{int(device)}-{_code_key()}"


def _read(where: Path, device: int) -> Replay:
    import pyarrow.feather as feather

    scalars = json.loads((where / "replay.json").read_text())
    tables = {name: feather.read_table(where / f"{name}.arrow", memory_map=True).to_pandas(split_blocks=True) for name in _TABLES}
    names = {f.name for f in fields(Replay)}
    if set(scalars) | set(_TABLES) != names or scalars.get("device") != device:
        raise ValueError("stale replay cache")
    return Replay(**scalars, **tables)


def _write(rep: Replay, where: Path) -> None:
    import pyarrow.feather as feather

    with staged_folder(where, prefix=".tmp-replay-") as tmp:
        for name in _TABLES:
            feather.write_feather(getattr(rep, name), tmp / f"{name}.arrow", compression="uncompressed")
        scalars = {f.name: getattr(rep, f.name) for f in fields(Replay) if f.name not in _TABLES}
        (tmp / "replay.json").write_text(json.dumps(scalars))


def cached_replay(snap: Snapshot, device: int = 0) -> Replay:
    """:func:`memprof.replay.timeline.replay`, read from the snapshot's cache when it was computed before."""
    where = _where(snap, device)
    if where is not None and (where / "replay.json").exists():
        try:
            return _read(where, device)
        except Exception:  # damaged or stale: rebuilt below, never trusted
            shutil.rmtree(where, ignore_errors=True)
    rep = replay(snap, device)
    if where is not None:  # after the snapshot's own entry (same worker, in order), off this thread
        background.submit(_write, rep, where)
    return rep
