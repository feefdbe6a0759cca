"""Server-side state of the dashboard: the folder it serves, its snapshots, and per-view caches.

Only files found by scanning the served folder are ever opened, and they are named by an
opaque id (their index in the scan) or by a relative path checked to resolve inside the
folder. Every open (snapshot, ``.meta.json``, a sweep's ``results.csv``) resolves the path
again and refuses anything that is not a regular file inside the folder, so a file replaced
by a symlink after start-up is not followed out. Snapshots are parsed only through
:func:`memprof.snapshot.load.load`.

Models and views are cached per (file, device) and per (file, device, visible range) in LRU
caches bounded by bytes (:class:`ByteLRU`), with one build per key at a time (single
flight): twenty clients opening the same large file wait for one build instead of each
making its own. There is no global figure shared by all users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd

from memprof.analysis import analyze
from memprof.errors import MemprofError
from memprof.units import fmt_bytes
from memprof.snapshot.load import iter_snapshot_files
from memprof.snapshot.meta import meta_path
from memprof.present.views import TimelineModel, build_model

log = logging.getLogger("memprof.app")
T = TypeVar("T")

CACHE_ENV = "MEMPROF_SERVE_CACHE_MB"
DEFAULT_CACHE_MB = 1024
MAX_META_BYTES = 16 << 20
MAX_CSV_BYTES = 64 << 20


def approx_nbytes(obj: Any, _depth: int = 0) -> int:
    """Approximate memory held by ``obj``: numpy buffers, DataFrame columns, and containers of them.

    Python strings inside object columns are counted as pointers only (they are mostly shared
    labels), so this undercounts a little; it is for bounding caches, not for reporting."""
    if _depth > 6 or obj is None or isinstance(obj, (bool, int, float)):
        return 8
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes) + 112
    if isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
        mu = obj.memory_usage(index=True, deep=False)
        return int(mu.sum() if hasattr(mu, "sum") else mu)
    if isinstance(obj, (str, bytes)):
        return len(obj) + 49
    if isinstance(obj, dict):
        return 64 + sum(approx_nbytes(k, _depth + 1) + approx_nbytes(v, _depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        if len(obj) > 256 and all(isinstance(x, (int, float, bool)) for x in list(obj)[:64]):
            return 56 + 32 * len(obj)  # a list of numbers: pointer + boxed number each
        return 56 + sum(approx_nbytes(x, _depth + 1) for x in obj)
    if isinstance(obj, type):
        return 64
    to_json = getattr(obj, "to_plotly_json", None)
    if callable(to_json):  # a plotly figure or a Dash component: what it serialises to
        return approx_nbytes(to_json(), _depth + 1)
    if dataclasses.is_dataclass(obj):
        return 64 + sum(approx_nbytes(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        return 64 + sum(approx_nbytes(v, _depth + 1) for v in d.values())
    return 64


class _Flight:
    """One build in progress: the others asking for the same key wait on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ByteLRU:
    """A thread-safe LRU cache bounded by the bytes its values hold, with single-flight builds.

    ``get_or_make(key, make)``: a hit returns the cached value; on a miss the first caller runs
    ``make()`` while later callers for the same key wait for its result (or its error) instead
    of building their own. At most ``max_builds`` different keys build at once (None: no limit;
    keep None where a build may itself ask this cache for another key). The newest
    value is kept even when it alone exceeds ``max_bytes`` (the page asking for it needs it);
    older ones are evicted until the total fits."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = approx_nbytes, max_builds: int | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.sizeof = sizeof
        self._d: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._flights: dict[Any, _Flight] = {}
        self._lock = threading.Lock()
        self._builds: Any = threading.BoundedSemaphore(max(1, max_builds)) if max_builds else contextlib.nullcontext()
        self.total = 0
        self.n_builds = 0  # how many times make() ran (for tests and benchmarks)

    def get_or_make(self, key: Any, make: Callable[[], T]) -> T:
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit[0]
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not owner:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            with self._builds:
                with self._lock:
                    self.n_builds += 1
                value = make()
            size = self.sizeof(value)
        except BaseException as e:
            flight.error = e
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()
            raise
        with self._lock:
            self._d[key] = (value, size)
            self.total += size
            while self.total > self.max_bytes and len(self._d) > 1:
                _, (_, sz) = self._d.popitem(last=False)
                self.total -= sz
            self._flights.pop(key, None)
        flight.value = value
        flight.done.set()
        return value

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.total = 0


LRU = ByteLRU  # the old name


def cache_budget_bytes() -> int:
    """Bytes the dashboard's caches may hold: ``$MEMPROF_SERVE_CACHE_MB`` (default 1024 MiB)."""
    raw = os.environ.get(CACHE_ENV, "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_CACHE_MB
    except ValueError:
        raise MemprofError(f"${CACHE_ENV}={raw!r}: not a number of MiB") from None
    if not 0 < mb < 2**40:
        raise MemprofError(f"${CACHE_ENV}={raw!r}: must be a positive number of MiB")
    return int(mb * 2**20)


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

    def __init__(self, root: str | os.PathLike[str], cache_bytes: int | None = None) -> None:
        self.only: Path | None = None  # ``memprof serve FILE``: a library of that one snapshot
        self.given = Path(root).absolute()
        p = Path(root).resolve()
        if p.is_file():
            self.only, p, self.given = p, p.parent, self.given.parent
        self.root = p
        if not self.root.is_dir():
            raise MemprofError(f"{root}: no such file or folder")
        self._entries: list[Entry] | None = None
        self.uploads: list[Path] = []  # snapshots dropped into the dashboard: kept in a private temp folder (app.upload)
        budget = cache_budget_bytes() if cache_bytes is None else int(cache_bytes)
        self.models = ByteLRU(budget * 7 // 8, max_builds=2)   # models: the bulk (a 1M-entry file is ~10^8 B)
        self.views = ByteLRU(budget // 8)                      # trace data per visible range, figures (nested builds)

    def inside(self, p: Path) -> bool:
        try:
            return p.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):
            return False

    def relative(self, text: str) -> str:
        """``text`` with the served folder's absolute path taken out (what error boxes show)."""
        for r in sorted({str(self.root), str(self.given)}, key=len, reverse=True):
            text = text.replace(r + os.sep, "").replace(r, ".")
        return text

    def checked(self, p: Path) -> tuple[Path, os.stat_result]:
        """The real path and stat of ``p`` when it is a regular file inside the served folder.

        Called at every open, not only when scanning: a file replaced by a symlink that leads out
        of the folder, or by a folder or a device, is refused."""
        name = self._name(p)
        try:
            real = p.resolve(strict=True)
        except FileNotFoundError:
            raise MemprofError(f"{name}: no longer in the served folder") from None
        except (OSError, RuntimeError):
            raise MemprofError(f"{name}: cannot be resolved (a symlink loop?)") from None
        if not real.is_relative_to(self.root) and real not in {u.resolve() for u in self.uploads}:
            raise MemprofError(f"{name}: leads outside the served folder; not served")
        try:
            st = os.stat(real, follow_symlinks=False)
        except OSError as e:
            raise MemprofError(f"{name}: cannot read ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise MemprofError(f"{name}: not a regular file; not served")
        return real, st

    def read_bytes(self, p: Path, limit: int) -> bytes:
        """The bytes of a small file inside the folder (checked, opened without following links)."""
        real, _ = self.checked(p)
        name = self._name(p)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise MemprofError(f"{name}: cannot read ({e.strerror or e})") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise MemprofError(f"{name}: not a regular file; not served")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise MemprofError(f"{name}: larger than {limit >> 20} MiB; not read")
        return data

    def _name(self, p: Path) -> str:
        try:
            return Path(os.path.abspath(p)).relative_to(self.given).as_posix()
        except ValueError:
            try:
                return Path(os.path.abspath(p)).relative_to(self.root).as_posix()
            except ValueError:
                return p.name

    def entries(self, rescan: bool = False) -> list[Entry]:
        if self._entries is None or rescan:
            out: list[Entry] = []
            for p in ([self.only] if self.only else iter_snapshot_files(self.root)):
                if p.name == "results.json":
                    continue
                try:
                    _, st = self.checked(p)
                except MemprofError:
                    continue  # a symlink pointing outside the served folder is never listed
                out.append(Entry(len(out), p, p.relative_to(self.root).as_posix(), st.st_mtime_ns, st.st_size))
            for p in self.uploads:  # after the folder's own, under their own prefix; never inside the root
                st = p.stat()
                out.append(Entry(len(out), p, "uploaded/" + p.name, st.st_mtime_ns, st.st_size))
            self._entries = out
        return self._entries

    def get(self, key: Any) -> Entry:
        """The entry for an id (int or digit string) or a relative path inside the root.

        The file is checked again (:meth:`checked`): it must still be a regular file inside the folder."""
        e = self._lookup(key)
        self.checked(e.path)
        return e

    def _lookup(self, key: Any) -> Entry:
        entries = self.entries()
        if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit() and len(key.strip()) <= 12:
            key = int(key.strip())
        if isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(entries):
                return entries[key]
            raise MemprofError(f"no snapshot with id {key}")
        if isinstance(key, str) and 0 < len(key) <= 4096 and "\x00" not in key and not os.path.isabs(key):
            cand = self.root / key
            if self.inside(cand):
                r = cand.resolve()
                for e in entries:
                    if e.path.resolve() == r:
                        return e
        shown = key[:60] if isinstance(key, str) else type(key).__name__
        raise MemprofError(f"no such snapshot in the served folder: {shown!r}")

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
        """The ``.meta.json`` beside a snapshot, read only if it is a regular file inside the folder; else {}."""
        mp = meta_path(e.path)
        if not os.path.lexists(mp):
            return {}
        try:
            data = json.loads(self.read_bytes(mp, MAX_META_BYTES))
        except MemprofError as err:
            log.warning("%s", self.relative(str(err)))
            return {}
        except (ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def identity(self, key: Any) -> tuple[str, int, int, int]:
        """(real path, mtime_ns, size, inode) of a snapshot as it is now (checked): what caches key on."""
        real, st = self.checked(self._lookup(key).path)
        return (str(real), st.st_mtime_ns, st.st_size, st.st_ino)

    def model(self, key: Any, device: Any = None) -> TimelineModel:
        dev = parse_device(device)
        e = self._lookup(key)
        real, st = self.checked(e.path)

        def make() -> TimelineModel:
            m = _make_model(real, dev, self.meta(e), self)
            _release_soon()
            _, st2 = self.checked(e.path)  # swapped while it was read: refuse what was read
            if (st2.st_ino, st2.st_dev, st2.st_size, st2.st_mtime_ns) != (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns):
                raise MemprofError(f"{e.rel}: changed while it was being read; reload the page")
            return m

        return self.models.get_or_make((str(real), st.st_mtime_ns, st.st_size, st.st_ino, dev), make)

    def run_of(self, e: Entry) -> str | None:
        """The run folder (relative to the root) of a ``rank{R}.pickle[.gz]`` file, else None."""
        from memprof.snapshot.runs import rank_of

        return None if rank_of(e.path) is None else (e.path.parent.relative_to(self.root).as_posix() or ".")

    def check_run(self, folder: Path) -> None:
        """Every file :func:`memprof.analysis.ranks.load_summaries` will read in a run folder (rank snapshots, their
        ``.meta.json`` and ``.summary``) must be a regular file inside the served folder, as at every open."""
        from memprof.snapshot.meta import meta_path
        from memprof.snapshot.runs import rank_files, summary_path

        for p in rank_files(folder).values():
            self.checked(p)
            for q in (meta_path(p), summary_path(p)):
                if os.path.lexists(q):
                    self.checked(q)

    def runs(self) -> dict[str, dict[int, Entry]]:
        """Every run folder under the root: ``{relative folder: {rank: entry}}``."""
        from memprof.snapshot.runs import rank_of

        out: dict[str, dict[int, Entry]] = {}
        for e in self.entries():
            rel = self.run_of(e)
            if rel is not None:
                out.setdefault(rel, {})[int(rank_of(e.path))] = e  # type: ignore[arg-type]
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def sweeps(self) -> list[tuple[int, str, Path]]:
        """Folders holding a ``results.csv``: (id, relative folder, csv path)."""
        found = []
        for p in (sorted(self.root.rglob("results.csv")) if self.only is None else []):
            try:
                self.checked(p)
            except MemprofError:
                continue
            found.append(p)
        return [(i, p.parent.relative_to(self.root).as_posix() or ".", p) for i, p in enumerate(found)]

    def read_csv(self, p: Path) -> pd.DataFrame:
        """A sweep's ``results.csv``, checked at open like every other file."""
        data = self.read_bytes(p, MAX_CSV_BYTES)
        try:
            return pd.read_csv(io.BytesIO(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise MemprofError(f"{self._name(p)}: unreadable ({str(e)[:120]})") from None

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


def parse_device(device: Any) -> int | None:
    """A device index from a request: None/"" for the default, else a small non-negative integer."""
    if device is None or device == "":
        return None
    if isinstance(device, bool):
        raise MemprofError("device must be an integer")
    if isinstance(device, str):
        d = device.strip()
        if not (d.isascii() and d.isdigit() and len(d) <= 4):
            raise MemprofError("device must be an integer")
        return int(d)
    if isinstance(device, int) and 0 <= device < 10_000:
        return device
    if isinstance(device, float) and device.is_integer() and 0 <= device < 10_000:
        return int(device)
    raise MemprofError("device must be an integer")


def error_message(e: BaseException) -> str:
    """What an error box says: a :class:`MemprofError`'s message, or a plain line for anything else;
    paths are shown relative to the served folder, never absolute."""
    if isinstance(e, MemprofError):
        text = str(e)
    else:
        # not a message written for users: its text may name server paths, so only its type is shown
        log.warning("a dashboard request failed", exc_info=e)
        text = f"this request could not be answered ({type(e).__name__}; details in the server's log)"
    return _LIBRARY.relative(text) if _LIBRARY is not None else text


def parse_key(key: Any) -> tuple[int, int | None]:
    """(snapshot id, device) from a page's ``{"snap": id, "device": d}`` store, checked."""
    if not isinstance(key, dict):
        raise MemprofError("this page lost track of its snapshot: reload it")
    e = library()._lookup(key.get("snap"))
    return e.id, parse_device(key.get("device"))


def _release_soon(delay_s: float = 10.0) -> None:
    """Give the free heap pages of a model build back to the system once its first page is drawn
    (``memprof serve`` lets glibc keep freed memory while it works: :mod:`memprof.snapshot.malloc_tuning`)."""
    from memprof.snapshot import malloc_tuning

    t = threading.Timer(delay_s, malloc_tuning.release)
    t.daemon = True
    t.start()


def _make_model(path: Path, device: int | None, meta: dict[str, Any], lib: Library | None = None) -> TimelineModel:
    a = analyze(path, device=device, meta=meta)  # loads once (Arrow cache), replays once
    return build_model(a.snap, a.rep, a.meta, analysis=a)


_LIBRARY: Library | None = None


def configure(root: str | os.PathLike[str], cache_bytes: int | None = None) -> Library:
    """Set the folder this process serves (called once by ``create_app``)."""
    global _LIBRARY
    _LIBRARY = Library(root, cache_bytes)
    return _LIBRARY


def library() -> Library:
    if _LIBRARY is None:
        raise MemprofError("the dashboard has no folder configured")
    return _LIBRARY
