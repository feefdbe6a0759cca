"""The layout of a run of many ranks: ``RUN/rank{R}.pickle.gz`` and the files beside each one.

Path functions only (no file is opened): the recorder names its output with them, the analysis
(:mod:`memprof.analysis.ranks`) finds a run's ranks and their summaries with them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from memprof.snapshot.meta import SNAPSHOT_SUFFIXES

RANK_RE = re.compile(r"^rank(\d+)(\.pickle\.gz|\.pickle|\.pkl\.gz|\.pkl)$")


# -- the folder -----------------------------------------------------------------------------------
def rank_path(path: str | os.PathLike[str], rank: int, compress: bool | None = None) -> Path:
    """``out.pickle.gz`` -> ``out/rank3.pickle.gz``; a folder ``out`` -> ``out/rank3.pickle.gz``
    (``.pickle`` when ``compress`` is False)."""
    p = Path(path)
    base = strip_suffix(p)
    if base != p:  # a snapshot name: keep its suffix (a JSON name becomes .pickle.gz)
        suf = p.name[len(base.name):]
        suf = ".pickle.gz" if suf.startswith(".json") else suf
    else:
        suf = ".pickle.gz"
    if compress is not None:
        suf = ".pickle.gz" if compress else ".pickle"
    return base / f"rank{rank}{suf}"


def strip_suffix(p: Path) -> Path:
    """``a/out.pickle.gz`` -> ``a/out``; a name without a snapshot suffix is kept."""
    for suf in SNAPSHOT_SUFFIXES:
        if p.name.endswith(suf) and p.name != suf:
            return p.with_name(p.name[: -len(suf)])
    return p


def rank_files(folder: str | os.PathLike[str]) -> dict[int, Path]:
    """``{rank: snapshot path}`` of a run folder ({} when it is not one)."""
    d = Path(folder)
    if not d.is_dir():
        return {}
    out: dict[int, Path] = {}
    for p in d.iterdir():
        m = RANK_RE.match(p.name)
        if m and p.is_file():
            out.setdefault(int(m.group(1)), p)
    return dict(sorted(out.items()))


def is_run(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``rank{R}.pickle[.gz]`` files."""
    return bool(rank_files(path))


def rank_of(path: str | os.PathLike[str]) -> int | None:
    """The rank of a file named ``rank{R}.pickle[.gz]`` inside a folder, else None."""
    m = RANK_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def summary_path(snapshot: str | os.PathLike[str]) -> Path:
    p = strip_suffix(Path(snapshot))
    return p.with_name(p.name + ".summary")
