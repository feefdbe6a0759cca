"""Writing snapshot dicts: pickle protocol 4 (pytorch.org/memory_viz cannot read 5), optional gzip."""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any


def write_snapshot(path: str | os.PathLike[str], snapshot: dict[str, Any], compress: bool | None = None) -> Path:
    """Write ``snapshot`` to ``path`` atomically; gzip when asked or when the name ends in ``.gz``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if compress is None:
        compress = p.name.endswith(".gz")
    # A temporary name of its own (no two processes ever share one), renamed into place.
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users
    try:
        with os.fdopen(fd, "wb") as raw, (gzip.GzipFile(filename=p.name, mode="wb", fileobj=raw) if compress else raw) as f:
            pickle.dump(snapshot, f, protocol=4)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def empty_snapshot() -> dict[str, Any]:
    return {"segments": [], "device_traces": [[]], "external_annotations": []}
