"""The per-file columnar cache: Arrow IPC tables keyed by the file's path, size and mtime, so
reopening a snapshot costs a memory map instead of a decode."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from memprof.snapshot.tables import Snapshot

CACHE_VERSION = "5"  # 5: file text escaped at load, attribution kept, empty traces (v0.2); 4: stack ids in order of first appearance

def cache_dir() -> Path:
    root = os.environ.get("MEMPROF_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "memprof"


def cache_key(path: Path) -> str:
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


def write_cache(snap: Snapshot, where: Path) -> None:
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


def read_cache(source: str, where: Path) -> Snapshot:
    import pyarrow.feather as feather

    tables = {name: feather.read_table(where / f"{name}.arrow", memory_map=True).to_pandas(split_blocks=True) for name in _TABLES}
    frames = feather.read_table(where / "stack_frames.arrow", memory_map=True).column("frame").to_numpy()
    offsets = feather.read_table(where / "stack_offsets.arrow", memory_map=True).column("offset").to_numpy()
    info = json.loads((where / "info.json").read_text())
    return Snapshot(source=source, stack_offsets=offsets, stack_frames=frames, info=info, **tables)
