"""Server-side state of the dashboard: the folder it serves, its snapshots, and per-view caches.

Only files found by scanning the served folder are ever opened, and they are named by an
opaque id (their index in the scan) or by a relative path checked to resolve inside the
folder. Snapshots are parsed only through :func:`memprof.load.load`. Models and views are
cached per (file, device) and per (file, device, visible range) in LRU caches: there is no
global figure shared by all users.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import pandas as pd

from memprof.analysis import analyze
from memprof.errors import MemprofError
from memprof.format import fmt_bytes
from memprof.load import iter_snapshot_files
from memprof.meta import read_meta
from memprof.views import TimelineModel, build_model

log = logging.getLogger("memprof.app")
T = TypeVar("T")


class LRU:
    """A small thread-safe LRU cache: ``get_or_make(key, make)``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Any, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


@dataclass(frozen=True)
class Entry:
    """One snapshot file found under the root: its id is its index in the scan."""

    id: int
    path: Path
    rel: str
    mtime_ns: int
    size: int


class Library:
    """The snapshots and sweep folders under one root folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.only: Path | None = None  # ``memprof serve FILE``: a library of that one snapshot
        p = Path(root).resolve()
        if p.is_file():
            self.only, p = p, p.parent
        self.root = p
        if not self.root.is_dir():
            raise MemprofError(f"{root}: no such file or folder")
        self._entries: list[Entry] | None = None
        self.uploads: list[Path] = []  # snapshots dropped into the dashboard: kept in a private temp folder (app.upload)
        self.models = LRU(6)
        self.views = LRU(64)

    def inside(self, p: Path) -> bool:
        try:
            return p.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):
            return False

    def entries(self, rescan: bool = False) -> list[Entry]:
        if self._entries is None or rescan:
            out = []
            for p in ([self.only] if self.only else iter_snapshot_files(self.root)):
                if not self.inside(p) or p.name == "results.json":
                    continue  # a symlink pointing outside the served folder is never served
                st = p.stat()
                out.append(Entry(len(out), p, p.relative_to(self.root).as_posix(), st.st_mtime_ns, st.st_size))
            for p in self.uploads:  # after the folder's own, under their own prefix; never inside the root
                st = p.stat()
                out.append(Entry(len(out), p, "uploaded/" + p.name, st.st_mtime_ns, st.st_size))
            self._entries = out
        return self._entries

    def get(self, key: Any) -> Entry:
        """The entry for an id (int or digit string) or a relative path inside the root."""
        entries = self.entries()
        if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
            i = int(key)
            if 0 <= i < len(entries):
                return entries[i]
            raise MemprofError(f"no snapshot with id {key}")
        if isinstance(key, str) and key and not os.path.isabs(key):
            cand = (self.root / key)
            if self.inside(cand):
                r = cand.resolve()
                for e in entries:
                    if e.path.resolve() == r:
                        return e
        raise MemprofError("no such snapshot in the served folder")

    def default_entry(self) -> Entry | None:
        """The most recently recorded snapshot (what the app opens on): by its metadata's ``created``
        time, else its file's modification time (a copy or checkout changes mtimes, not recordings)."""
        entries = self.entries()
        return max(entries, key=lambda e: (self.recorded_ns(e), e.size)) if entries else None

    def recorded_ns(self, e: Entry) -> int:
        """When ``e`` was recorded (metadata ``created``), else its mtime, in ns since the epoch."""
        created = self.meta(e).get("created")
        if isinstance(created, str) and created:
            try:
                return int(pd.Timestamp(created).value)
            except (ValueError, TypeError, OverflowError):
                pass
        return e.mtime_ns

    def meta(self, e: Entry) -> dict[str, Any]:
        try:
            return read_meta(e.path)
        except MemprofError:
            return {}

    def model(self, key: Any, device: int | None = None) -> TimelineModel:
        e = self.get(key)
        return self.models.get_or_make((str(e.path), e.mtime_ns, device), lambda: _make_model(e.path, device))

    def run_of(self, e: Entry) -> str | None:
        """The run folder (relative to the root) of a ``rank{R}.pickle[.gz]`` file, else None."""
        from memprof.run import rank_of

        return None if rank_of(e.path) is None else (e.path.parent.relative_to(self.root).as_posix() or ".")

    def runs(self) -> dict[str, dict[int, Entry]]:
        """Every run folder under the root: ``{relative folder: {rank: entry}}``."""
        from memprof.run import rank_of

        out: dict[str, dict[int, Entry]] = {}
        for e in self.entries():
            rel = self.run_of(e)
            if rel is not None:
                out.setdefault(rel, {})[int(rank_of(e.path))] = e  # type: ignore[arg-type]
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def sweeps(self) -> list[tuple[int, str, Path]]:
        """Folders holding a ``results.csv``: (id, relative folder, csv path)."""
        found = sorted(p for p in self.root.rglob("results.csv") if p.is_file() and self.inside(p)) if self.only is None else []
        return [(i, p.parent.relative_to(self.root).as_posix() or ".", p) for i, p in enumerate(found)]

    def table(self) -> pd.DataFrame:
        """One row per snapshot with its metadata (the Library page).

        Columns: id, name, workload, options, device, status, peak_allocated_mib,
        peak_reserved_mib, forward_ms, backward_ms, file_size (e.g. '13.2 KiB'), recorded (metadata
        ``created``, else the file's mtime; UTC).
        """
        rows = []
        for e in self.entries():
            m = self.meta(e)
            wl = m.get("workload") or {}
            tm = m.get("timings_ms") or {}
            rows.append({
                "id": e.id,
                "name": e.rel,
                "workload": str(wl.get("kind", "")),
                "options": ", ".join(f"{k}={v}" for k, v in wl.items() if k != "kind"),
                "device": str((m.get("device") or {}).get("name", "")),
                "status": str(m.get("status", "")),
                "peak_allocated_mib": _mib(m.get("peak_allocated_bytes")),
                "peak_reserved_mib": _mib(m.get("peak_reserved_bytes")),
                "forward_ms": _ms(tm.get("forward")),
                "backward_ms": _ms(tm.get("backward")),
                "file_size": fmt_bytes(e.size),
                "recorded": pd.Timestamp(self.recorded_ns(e), unit="ns").strftime("%Y-%m-%d %H:%M"),
            })
        return pd.DataFrame(rows, columns=["id", "name", "workload", "options", "device", "status", "peak_allocated_mib",
                                           "peak_reserved_mib", "forward_ms", "backward_ms", "file_size", "recorded"])


def collapse_runs(lib: Library, df: pd.DataFrame) -> pd.DataFrame:
    """``lib.table()`` with each run folder (``RUN/rank{R}.pickle.gz``) as one row, where its first
    rank was: ``name`` ``RUN/ (N ranks)``, ``id`` rank 0's snapshot, peaks the largest of any rank,
    ``status`` ``ok`` or which ranks are not, and two more columns: ``ranks`` (how many; empty for a
    single snapshot) and ``run`` (the run's relative folder; '' for a single snapshot)."""
    runs = lib.runs()
    where = {e.id: rel for rel, es in runs.items() for e in es.values()}
    groups: dict[str, list[dict[str, Any]]] = {}
    out: list[dict[str, Any]] = []
    for row in df.to_dict("records"):
        rel = where.get(int(row["id"]))
        if rel is None:
            out.append({**row, "ranks": None, "run": ""})
        elif rel in groups:
            groups[rel].append(row)
        else:
            groups[rel] = [row]
            out.append({"run": rel})  # the run's row, filled in below
    for i, row in enumerate(out):
        rr = groups.get(row["run"]) if row["run"] else None
        if rr is None:
            continue
        rel = row["run"]
        bad = [f"rank {r}: {x.get('status') or '?'}" for r, x in zip(runs[rel], rr) if x.get("status") != "ok"]
        merged = {**rr[0], "name": f"{rel}/ ({len(rr)} ranks)", "status": ", ".join(bad) or "ok", "ranks": len(rr), "run": rel}
        for c in ("peak_allocated_mib", "peak_reserved_mib", "modified"):
            vals = [x[c] for x in rr if c in x and x[c] is not None and x[c] == x[c]]
            if c in rr[0]:
                merged[c] = max(vals) if vals else None
        if "file_mib" in rr[0]:
            merged["file_mib"] = round(sum(x["file_mib"] or 0 for x in rr), 2)
        out[i] = merged
    return pd.DataFrame(out, columns=[*df.columns, "ranks", "run"])


def _mib(v: Any) -> float | None:
    try:
        return round(float(v) / 2**20, 1)
    except (TypeError, ValueError):
        return None


def _ms(t: Any) -> float | None:
    try:
        return round(float(t["mean"]), 3)
    except (TypeError, ValueError, KeyError):
        return None


def _make_model(path: Path, device: int | None) -> TimelineModel:
    a = analyze(path, device=device)  # loads once (Arrow cache), replays once, reads the .meta.json
    try:
        return build_model(a.snap, a.rep, a.meta, analysis=a)
    except MemprofError:
        raise
    except Exception:  # an odd snapshot must not take the timeline down: fall back to lifetimes-only categories
        log.exception("memprof.analysis failed on %s; using the built-in categories", path)
        return build_model(a.snap, a.rep, a.meta)


_LIBRARY: Library | None = None


def configure(root: str | os.PathLike[str]) -> Library:
    """Set the folder this process serves (called once by ``create_app``)."""
    global _LIBRARY
    _LIBRARY = Library(root)
    return _LIBRARY


def library() -> Library:
    if _LIBRARY is None:
        raise MemprofError("the dashboard has no folder configured")
    return _LIBRARY
