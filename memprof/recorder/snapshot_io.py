"""Writing snapshot dicts: pickle protocol 4 (pytorch.org/memory_viz cannot read 5), optional gzip."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any


def write_snapshot(path: str | os.PathLike[str], snapshot: dict[str, Any], compress: bool | None = None) -> Path:
    """Write ``snapshot`` to ``path`` atomically; gzip when asked or when the name ends in ``.gz``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if compress is None:
        compress = p.name.endswith(".gz")
    tmp = p.with_name(p.name + ".tmp")
    opener = gzip.open if compress else open
    with opener(tmp, "wb") as f:  # type: ignore[operator]
        pickle.dump(snapshot, f, protocol=4)
    os.replace(tmp, p)
    return p


def empty_snapshot() -> dict[str, Any]:
    return {"segments": [], "device_traces": [[]], "external_annotations": []}
