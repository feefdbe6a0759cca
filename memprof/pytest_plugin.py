"""pytest plugin (entry point ``pytest11``): GPU memory limits on tests, and a per-test peak table.

    @pytest.mark.limit_gpu_memory("2 GiB")          # fail when the test's peak exceeds 2 GiB
    def test_train_step(): ...

    pytest --memprof                     # record every test; a table of peaks at the end
    pytest --memprof --memprof-dir DIR   # and keep every test's snapshot in DIR

Only the test's call is recorded (fixtures' setup is not), but what is alive when it starts counts
toward its peak, as it does on the device. On CUDA the peak is the caching allocator's own counter
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``), with the allocator's
history recorded for the failure's explanation; on CPU it is memprof's CPU recorder (torch.profiler
memory events, replayed), so the same marker runs in CI without a GPU. The device is the marker's
``device=``, else ``--memprof-device``, else cuda when available, else cpu.

A failing test's snapshot is always kept (its path is in the failure message, for ``memprof serve``);
with ``--memprof-dir`` every recorded test's is. Works under pytest-xdist: workers record, and the
controller gathers each test's numbers from its report (``user_properties``) for the table.
torch is imported only when a test is recorded.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

MARKER = "limit_gpu_memory"
_PROP = "memprof"
_DIR = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("memprof", "GPU memory of each test (memprof)")
    g.addoption("--memprof", action="store_true", default=False, help="record every test; print a table of peaks at the end")
    g.addoption("--memprof-dir", metavar="DIR", default=None, help="keep every recorded test's snapshot in DIR")
    g.addoption("--memprof-device", metavar="DEVICE", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    g.addoption("--memprof-top", type=int, default=3, metavar="N", help="sites listed in a limit failure (default 3)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(limit, device=None): fail the test when its peak device memory exceeds limit ('2 GiB', '512MB')")
    config.pluginmanager.register(Collector(config), "memprof-collector")


def _snapshot_dir(config: pytest.Config) -> Path:
    if _DIR not in config.stash:
        d = config.getoption("memprof_dir")
        if d:
            p = Path(d)
        else:
            factory = getattr(config, "_tmp_path_factory", None)  # pytest's own temp folder (keeps the last 3 runs)
            p = factory.getbasetemp() / "memprof" if factory is not None else Path(tempfile.mkdtemp(prefix="memprof-pytest-"))
        p.mkdir(parents=True, exist_ok=True)
        config.stash[_DIR] = p.resolve()
    return config.stash[_DIR]


def snapshot_name(nodeid: str) -> str:
    """A file name for a test id: ``tests/test_a.py::test_b[x-1]`` -> ``tests_test_a.py__test_b_x-1_.pickle.gz``."""
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "_", nodeid.replace("::", "__"))
    return (s[:180] or "test") + ".pickle.gz"


def _device(item: pytest.Item, marker: pytest.Mark | None) -> str | None:
    return (marker.kwargs.get("device") if marker is not None else None) or item.config.getoption("memprof_device")


def _limit(marker: pytest.Mark) -> int:
    from memprof.errors import MemprofError
    from memprof.units import parse_size

    args = list(marker.args) + ([marker.kwargs["limit"]] if "limit" in marker.kwargs else [])
    if len(args) != 1:
        raise MemprofError(f"@pytest.mark.{MARKER} takes one limit, e.g. {MARKER}('2 GiB')")
    return parse_size(args[0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    marker = item.get_closest_marker(MARKER)
    if marker is None and not item.config.getoption("memprof"):
        return (yield)
    from memprof.errors import MemprofError

    try:
        limit = _limit(marker) if marker is not None else None
        from memprof.recorder.api import record
        from memprof.workloads import resolve_device

        device = resolve_device(_device(item, marker))
    except MemprofError as e:  # a bad limit or device: the test fails with one line
        raise pytest.fail.Exception(f"memprof: {e}", pytrace=False) from None

    path = _snapshot_dir(item.config) / snapshot_name(item.nodeid)
    recs: list[Any] = []
    try:
        with record(path, device=device, compress=True,
                    workload={"kind": "pytest", "nodeid": item.nodeid}, command=f"pytest {item.nodeid}") as rec:
            recs.append(rec)
            result = yield
    except BaseException as e:
        skipped = isinstance(e, pytest.skip.Exception)
        try:
            _finish(item, path, limit, "skipped" if skipped else "failed", recs)
        except Exception:  # noqa: BLE001 - never hide the test's own outcome behind a measuring problem
            pass
        raise
    try:
        _finish(item, path, limit, "passed", recs)
    except MemprofError as e:
        raise pytest.fail.Exception(f"memprof: {e}", pytrace=False) from None
    return result


def _finish(item: pytest.Item, path: Path, limit: int | None, outcome: str, recs: list[Any]) -> None:
    """Measure the saved snapshot, report it, and fail the test when it is over the limit."""
    from memprof.units import fmt_bytes
    from memprof.analysis.checks import Measurement, measure
    from memprof.snapshot.meta import meta_path, read_meta

    m: Measurement | None = None
    if outcome != "skipped":
        m = measure(item.nodeid, path, use_cache=False) if _has_trace(recs) else _no_trace(item.nodeid, path, recs)
    over = m is not None and limit is not None and m.allocated_bytes > limit
    keep = bool(item.config.getoption("memprof_dir")) or over
    dev = (m.meta if m is not None else read_meta(path)).get("device") or {}
    item.user_properties.append((_PROP, {
        "nodeid": item.nodeid, "outcome": "failed" if over else outcome, "device": str(dev.get("type", "")),
        "peak_allocated_bytes": None if m is None else m.allocated_bytes,
        "peak_reserved_bytes": None if m is None else m.reserved_bytes, "source": None if m is None else m.source,
        "limit_bytes": limit, "snapshot": str(path) if keep else None,
    }))
    if not keep:
        path.unlink(missing_ok=True)
        meta_path(path).unlink(missing_ok=True)
    if not over:
        return
    assert m is not None and limit is not None  # implied by ``over``
    top = item.config.getoption("memprof_top")
    lines = [f"{MARKER}: peak {fmt_bytes(m.allocated_bytes)} ({m.allocated_bytes:,} B) exceeds the limit "
             f"{fmt_bytes(limit)} ({limit:,} B) by {fmt_bytes(m.allocated_bytes - limit)}  "
             f"[{dev.get('type', '?')}{':' + str(dev['index']) if dev.get('index') is not None else ''}, {m.source}]"]
    bs = m.analysis.peak.by_site if m.analysis is not None else None
    sites = [] if bs is None else [(s, b) for s, b in zip(bs["site"], bs["bytes"]) if b >= 0.01 * m.allocated_bytes][:top]
    if sites:  # sites holding 1% of the peak or more
        lines.append("top sites at the peak:")
        lines += [f"  {fmt_bytes(b):>11}  {s}" for s, b in sites]
    lines.append(f"snapshot: {path}")
    lines.append(f"  memprof explain {path}   |   memprof serve {path.parent}")
    raise pytest.fail.Exception("\n".join(lines), pytrace=False)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-test table: test, outcome, peak allocated, peak reserved, limit; largest peak first."""
    from memprof.units import fmt_bytes

    rows = sorted(rows, key=lambda r: (-int(r.get("peak_allocated_bytes") or 0), str(r.get("nodeid"))))
    w = max([len("test")] + [len(str(r["nodeid"])) for r in rows])
    out = [f"{'test':<{w}}  {'outcome':<8} {'peak allocated':>15} {'peak reserved':>15} {'limit':>11}  device"]
    for r in rows:
        lim = r.get("limit_bytes")
        out.append(f"{r['nodeid']:<{w}}  {r['outcome']:<8} {fmt_bytes(r['peak_allocated_bytes']):>15} "
                   f"{fmt_bytes(r['peak_reserved_bytes']):>15} {fmt_bytes(lim) if lim is not None else '-':>11}  {r.get('device', '')}")
    return out


def _has_trace(recs: list[Any]) -> bool:
    snap = recs[0].stop() if recs else None
    return bool(snap and any(len(t) for t in snap.get("device_traces") or []))


def _no_trace(label: str, path: Path, recs: list[Any]) -> Any:
    """The test allocated nothing on the device: its peak is what was alive when it started."""
    from memprof.analysis.checks import Measurement
    from memprof.snapshot.meta import read_meta

    meta = read_meta(path)
    rec = recs[0]
    if rec.backend == "cuda":
        a, r = int(meta["peak_allocated_bytes"]), int(meta["peak_reserved_bytes"])
        return Measurement(label, str(path), rec.device.index or 0, a, r, "allocator counter", a, r, None, meta)
    n = sum(rec._pre.sizes.values()) if rec._pre is not None else 0  # the synthesized segments hold exactly these
    return Measurement(label, str(path), 0, n, n, "recorded history", n, n, None, meta)


class Collector:
    """Gathers each recorded test's numbers from its call report (also from xdist workers' reports)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in getattr(report, "user_properties", ()):
            if name == _PROP and isinstance(value, dict):
                self.rows.append(value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        config = self.config
        if not config.getoption("memprof") or hasattr(config, "workerinput"):
            return
        tr = terminalreporter
        tr.write_sep("=", f"memprof: peak memory of {len(self.rows)} test(s)")
        for line in table(self.rows):
            tr.write_line(line)
        d = config.getoption("memprof_dir")
        if d:
            tr.write_line(f"snapshots: {Path(d).resolve()}   (memprof serve {Path(d).resolve()})")
