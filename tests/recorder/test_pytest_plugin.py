"""The pytest plugin on CPU: @pytest.mark.limit_gpu_memory passes and fails (failure text asserted),
--memprof's table, --memprof-dir, skipped tests, pytest-xdist workers, the pytest11 entry point.

Each case runs pytest in a subprocess (pytester), as a user would: torch's profiler state stays there.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from memprof.pytest_plugin import snapshot_name, table
from memprof.snapshot.safe_pickle import safe_load

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[2]
MIB = 2**20

TESTS = '''
import pytest
import torch


def make():
    return torch.ones(4 * 1024 * 1024)  # 16 MiB of float32


@pytest.mark.limit_gpu_memory("10 MiB", device="cpu")
def test_small():
    a = torch.ones(1024, 1024)  # 4 MiB
    assert float(a.sum()) == 1024 * 1024


@pytest.mark.limit_gpu_memory("20 MiB", device="cpu")
def test_big():
    a = make()
    b = torch.zeros(2 * 1024 * 1024)  # 8 MiB
    assert float(a.sum() + b.sum()) > 0


@pytest.mark.limit_gpu_memory("1 MiB", device="cpu")
def test_skips_inside():
    pytest.skip("not today")


@pytest.mark.skip(reason="skipped by marker")
@pytest.mark.limit_gpu_memory("1 MiB", device="cpu")
def test_skipped_by_marker():
    raise AssertionError("never runs")


@pytest.mark.limit_gpu_memory("1 GiB", device="cpu")
def test_raises():
    raise ValueError("its own failure")


def test_unmarked():
    torch.ones(256, 1024)  # 1 MiB, freed at once


@pytest.mark.limit_gpu_memory("lots", device="cpu")
def test_bad_limit():
    pass
'''


def plugin_args() -> list[str]:
    """This checkout's plugin, whether or not the installed memprof registers it (entry point ``memprof``)."""
    return ["-p", "no:memprof", "-p", "memprof.pytest_plugin"]


def plain_peak(raw: dict) -> int:
    """Peak allocated bytes of a snapshot dict, in plain Python."""
    traced = {e["addr"] for e in raw["device_traces"][0] if e["action"] == "alloc"}
    cur = sum(b["size"] for s in raw["segments"] for b in s["blocks"] if b["state"] == "active_allocated" and b["address"] not in traced)
    peak = cur
    for e in raw["device_traces"][0]:
        cur += e["size"] if e["action"] == "alloc" else -e["size"] if e["action"] == "free_completed" else 0
        peak = max(peak, cur)
    return peak


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subprocesses import this checkout's memprof."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_mem=TESTS)
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", "-p", "no:randomly", *args, timeout=300)


def test_marker_pass_fail_skip_and_table(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # GIVEN tests under and over their limits, skipped ones and one that fails by itself
    keep = tmp_path / "snaps"
    # WHEN pytest runs them with --memprof (the table) and --memprof-dir (keep the snapshots)
    r = run(pytester, "--memprof", "--memprof-dir", str(keep), "-W", "ignore::pytest.PytestRemovedIn10Warning")
    out = r.stdout.str()
    # THEN the one over its limit fails with a short message naming the peak, the limit, the sites and the snapshot
    r.assert_outcomes(passed=2, failed=3, skipped=2)
    m = re.search(r"limit_gpu_memory: peak 24\.0 MiB \(([\d,]+) B\) exceeds the limit 20\.0 MiB \(20,971,520 B\) by 4\.0 MiB  "
                  r"\[cpu, recorded history\]", out)
    assert m, out
    peak = int(m.group(1).replace(",", ""))
    assert "top sites at the peak:\n     16.0 MiB  test_mem.py:6:make\n      8.0 MiB  test_mem.py:18:test_big\n" in out
    snap = keep / snapshot_name("test_mem.py::test_big")
    assert f"snapshot: {snap}\n" in out and snap.is_file()
    # the reported peak is the snapshot's, computed here in plain Python: 16 + 8 MiB and the few bytes of a sum
    with gzip.open(snap, "rb") as f:
        raw = safe_load(f)
    assert plain_peak(raw) == peak and 24 * MIB <= peak < 24 * MIB + 4096
    # its own failure is its own, not the plugin's; skips stay skips
    assert "ValueError: its own failure" in out
    assert "FAILED test_mem.py::test_raises" in out and "FAILED test_mem.py::test_big" in out
    assert "FAILED test_mem.py::test_bad_limit - Failed: memprof: not a size: 'lots'" in out  # one line, no traceback
    # the table: every recorded test, largest peak first
    rows = out[out.index("memprof: peak memory of 5 test(s)"):].splitlines()[1:7]
    assert rows[0].split()[:2] == ["test", "outcome"]
    assert rows[1].split()[:4] == ["test_mem.py::test_big", "failed", "24.0", "MiB"]
    assert rows[2].split()[:4] == ["test_mem.py::test_small", "passed", "4.0", "MiB"]
    assert {tuple(x.split()[:2]) for x in rows[3:6]} == {("test_mem.py::test_unmarked", "passed"),
                                                         ("test_mem.py::test_raises", "failed"),
                                                         ("test_mem.py::test_skips_inside", "skipped")}
    assert f"snapshots: {keep.resolve()}" in out
    kept = sorted(p.name for p in keep.glob("*.pickle.gz"))
    assert kept == sorted(snapshot_name(f"test_mem.py::{t}") for t in ("test_big", "test_small", "test_skips_inside", "test_raises", "test_unmarked"))


def test_without_memprof_dir_keeps_only_failures(pytester: pytest.Pytester) -> None:
    r = run(pytester, "-k", "small or big", "-W", "ignore::pytest.PytestRemovedIn10Warning")
    r.assert_outcomes(passed=1, failed=1)
    out = r.stdout.str()
    assert "memprof: peak memory of" not in out  # no table without --memprof
    path = Path(re.search(r"snapshot: (\S+)", out).group(1))
    assert path.is_file() and [p.name for p in path.parent.glob("*.pickle.gz")] == [path.name]
    assert [p.name for p in path.parent.glob("*.meta.json")] == [path.name.replace(".pickle.gz", ".meta.json")]


def test_xdist_workers(pytester: pytest.Pytester) -> None:
    try:
        import xdist  # noqa: F401 - in memprof's [test] extras
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pytest-xdist is missing under CI (pip install -e '.[test]')")
        pytest.skip("pytest-xdist is not installed here (it is in memprof's [test] extras)")
    r = run(pytester, "-n", "2", "--memprof", "-W", "ignore::pytest.PytestRemovedIn10Warning")
    r.assert_outcomes(passed=2, failed=3, skipped=2)
    out = r.stdout.str()
    assert re.search(r"\[gw\d\] .*\nlimit_gpu_memory: peak 24\.0 MiB", out)
    assert "memprof: peak memory of 5 test(s)" in out  # gathered on the controller from the workers' reports
    assert re.search(r"test_mem.py::test_small\s+passed\s+4.0 MiB", out)


def test_entry_point_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nmemprof = "memprof.pytest_plugin"' in text
    for e in entry_points(group="pytest11"):
        if e.name == "memprof":
            assert e.load().MARKER == "limit_gpu_memory"


def test_table_and_names() -> None:
    assert snapshot_name("tests/test_a.py::test_b[x-1]") == "tests_test_a.py__test_b_x-1_.pickle.gz"
    rows = [{"nodeid": "a", "outcome": "passed", "peak_allocated_bytes": MIB, "peak_reserved_bytes": 2 * MIB, "limit_bytes": None, "device": "cpu"},
            {"nodeid": "b", "outcome": "failed", "peak_allocated_bytes": 3 * MIB, "peak_reserved_bytes": 3 * MIB, "limit_bytes": MIB, "device": "cuda"}]
    t = table(rows)
    assert [x.split()[0] for x in t] == ["test", "b", "a"]
    assert t[1].split() == ["b", "failed", "3.0", "MiB", "3.0", "MiB", "1.0", "MiB", "cuda"]


def test_plugin_imports_no_torch(pytester: pytest.Pytester) -> None:
    r = pytester.run(sys.executable, "-c", "import sys, memprof.pytest_plugin; print('torch' in sys.modules)")
    assert r.stdout.lines[-1] == "False"


GPU_TESTS = '''
import pytest
import torch


@pytest.mark.limit_gpu_memory("100 MiB")
def test_over():
    a = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    b = torch.empty(48 * 2**20, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print("PEAK", torch.cuda.max_memory_allocated())


@pytest.mark.limit_gpu_memory("1 GiB")
def test_under():
    a = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
'''


@pytest.mark.cuda
def test_marker_on_cuda_uses_the_allocator_counter(pytester: pytest.Pytester) -> None:
    # GIVEN two CUDA tests, one over its limit; WHEN pytest runs them
    pytester.makepyfile(test_gpu=GPU_TESTS)
    r = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", "--memprof", timeout=300)
    out = r.stdout.str()
    r.assert_outcomes(passed=1, failed=1)
    # THEN the failure's peak is the caching allocator's counter, the same number the test itself read
    m = re.search(r"limit_gpu_memory: peak 112\.0 MiB \(([\d,]+) B\) exceeds the limit 100\.0 MiB \(104,857,600 B\) by 12\.0 MiB  "
                  r"\[cuda(:0)?, allocator counter\]", out)
    assert m, out
    counted = int(re.search(r"PEAK (\d+)", out).group(1))
    assert int(m.group(1).replace(",", "")) == counted == 112 * MIB
    # and the recorded history names the lines that allocated it
    assert "top sites at the peak:\n     64.0 MiB  test_gpu.py:7:test_over\n     48.0 MiB  test_gpu.py:8:test_over\n" in out
    assert re.search(r"test_gpu.py::test_under\s+passed\s+64.0 MiB", out)
