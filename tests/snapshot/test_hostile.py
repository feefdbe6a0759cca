"""Hostile snapshot files (issue 10) and what the bytes decide (issue 9): one clean line each,
within 20 s and under a 4 GiB address-space limit, on every loader path.

The files are built by ``tests/fuzz/hostile.py`` (small ones committed in ``tests/data/hostile/``);
each runs through ``memprof stats`` in a child process (``tests/fuzz/run_files.py``) that sets
``RLIMIT_AS`` first, so a crash or a bomb fails the test instead of the test run.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

import memprof  # noqa: F401
from fuzz import hostile
from memprof.snapshot import _fastpickle, limits
from memprof.cli import main
from memprof.errors import MemprofError
from memprof.escape import printable
from memprof.snapshot.safe_pickle import scan

L = sys.modules["memprof.snapshot.load"]
from memprof.snapshot import tables as T  # noqa: E402
ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "fuzz" / "run_files.py"
GOLDEN = ROOT / "tests" / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"
LOADERS = ("c", "pure", "python")


def run_files(files: list[Path], loader: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> list[dict]:
    env = dict(os.environ, MEMPROF_LOADER=loader, PYTHONPATH=str(ROOT))
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, str(RUNNER), "--as-gib", "4", *map(str, files)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(rows) == len(files), (
        f"the child died (rc {proc.returncode}) after {len(rows)} of {len(files)} files; "
        f"next: {files[len(rows)] if len(rows) < len(files) else '-'}\n{proc.stderr[-2000:]}"
    )
    return rows


def assert_one_clean_line(row: dict, must_mention: str | None) -> None:
    err = row["err"]
    name = Path(row["file"]).name
    assert row["rc"] not in (0, -1), (name, row)
    assert err.startswith("memprof: ") and err.count("\n") == 1 and err.endswith("\n"), (name, err)
    assert "Traceback" not in err and "\x1b" not in err and "\r" not in err, (name, err)
    assert row["seconds"] < 20, (name, row["seconds"])
    if must_mention:
        assert must_mention in err, (name, err)


def committed() -> list[Path]:
    return sorted(hostile.HOSTILE_DIR.iterdir())


def _expected(path: Path) -> str | None:
    name = path.name
    if name not in hostile.SMALL and name.endswith(".gz"):
        name = name[:-3]
    return hostile.SMALL[name][1]


def test_committed_hostile_files_are_what_the_builders_write(tmp_path: Path) -> None:
    written = {p.name: p.read_bytes() for p in hostile.write_small(tmp_path)}
    assert written == {p.name: p.read_bytes() for p in committed()}


@pytest.mark.parametrize("loader", LOADERS)
def test_every_hostile_file_is_one_clean_line(loader: str) -> None:
    files = [p for p in committed() if p.name not in hostile.GOOD]
    assert len(files) == len(hostile.SMALL)
    for row in run_files(files, loader):
        assert_one_clean_line(row, _expected(Path(row["file"])))


@pytest.mark.parametrize("loader", ("c", "pure"))
def test_gzip_bombs_are_refused_fast_and_small(tmp_path: Path, loader: str) -> None:
    """10 MB of gzip expanding to 10 GiB: zeros, one BINBYTES8 string, a list of None, 10^8+ trace entries."""
    files = []
    for name, build in hostile.BOMBS.items():
        (tmp_path / name).write_bytes(build())
        files.append(tmp_path / name)
    want = {"bomb_zeros.pickle.gz": "invalid opcode", "bomb_binbytes8.pickle.gz": "limit on decompressed data",
            "bomb_none_list.pickle.gz": "memory limit", "bomb_trace_entries.pickle.gz": "memory limit"}
    for row in run_files(files, loader):
        assert_one_clean_line(row, want[Path(row["file"]).name])
        assert "MEMPROF_MAX_BYTES" in row["err"] or "invalid opcode" in row["err"]


def test_gzip_bombs_without_the_c_extension(tmp_path: Path) -> None:
    """The pure-Python scan reaches the same verdicts (at its speed: a lower limit keeps this test short)."""
    files = []
    for name, build in hostile.BOMBS.items():
        (tmp_path / name).write_bytes(build(total=1 << 30))
        files.append(tmp_path / name)
    for row in run_files(files, "python", {"MEMPROF_MAX_BYTES": "48M"}):
        assert_one_clean_line(row, None)
        assert "48.0 MiB" in row["err"] or "invalid opcode" in row["err"], row["err"]


@pytest.mark.parametrize("loader", LOADERS)
def test_good_edge_files_load_identically(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMPROF_LOADER", "c")
    ref = {n: L.load_uncached(hostile.HOSTILE_DIR / n) for n in hostile.GOOD}
    monkeypatch.setenv("MEMPROF_LOADER", loader)
    from fuzz.harness import fingerprint

    for n in hostile.GOOD:
        got = L.load_uncached(hostile.HOSTILE_DIR / n)
        assert fingerprint(got) == fingerprint(ref[n]), n
    # issue 9: unsigned 64-bit line 2^64-1 is kept as the -1 C++ meant ("no line"); addresses wrap
    s = ref["line_2_64_minus_1.pickle"]
    assert s.frames["line"].tolist() == [-1]
    assert s.segments["address"].tolist() == [-4096] and s.blocks["addr"].tolist() == [-4096]
    # a duplicated key: the last value wins, on both paths, and leaves no trace of the first
    d = ref["duplicated_action_key.pickle"]
    assert d.events["action"].tolist()[0] == T.A_ALLOC and d.info["unknown_actions"] == []


def test_frame_text_is_escaped_in_every_output(capsys: pytest.CaptureFixture[str]) -> None:
    p = hostile.HOSTILE_DIR / "terminal_injection_frame.pickle"
    snap = L.load(p, use_cache=False)
    name = snap.frames["name"].iloc[0]
    assert "\x1b" not in name and "\n" not in name and "\\x1b[2K\\r" in name
    assert snap.annotations["name"].tolist() == [f"memprof/x\\n{hostile.INJECTED}/0"]
    assert snap.info["user_metadata_values"] == [f"memprof/fwd\\n{hostile.INJECTED}/0"]
    for cmd in ("stats", "explain"):
        assert main([cmd, str(p), "--no-cache"]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
        assert not any(line.lstrip().startswith(hostile.INJECTED) for line in out.splitlines()), out


def test_error_messages_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(hostile.HOSTILE_DIR / "terminal_injection_global.pickle")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    assert "\\x1b[2K\\rmemprof: OK" in err  # shown, not obeyed


def test_printable() -> None:
    assert printable("a\x1b[2Kb\r\nc\t\u202ed") == "a\\x1b[2Kb\\r\\nc\\t\\u202ed"
    assert printable("line\nnext\tcol", keep_lines=True) == "line\nnext\tcol"
    assert printable("héllo ✓ 日本") == "héllo ✓ 日本"
    with pytest.raises(TypeError):
        printable(["a"])


# ---------------------------------------------------------------------------
# limits: named, raisable


def test_max_bytes_names_the_limit_and_is_raisable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMPROF_MAX_BYTES", "4K")
    assert main(["stats", str(GOLDEN), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "4.0 KiB" in err and "--max-bytes" in err and "MEMPROF_MAX_BYTES" in err
    assert main(["stats", str(GOLDEN), "--no-cache", "--max-bytes", "1G"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("MEMPROF_MAX_BYTES", "4K")
    assert main(["--max-bytes=1G", "stats", str(GOLDEN), "--no-cache"]) == 0
    capsys.readouterr()
    assert main(["stats", str(GOLDEN), "--max-bytes", "lots"]) == 2
    assert "not a size" in capsys.readouterr().err


def test_depth_and_rows_limits_are_raisable(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = {"segments": [], "device_traces": [[{"action": "alloc", "addr": 1, "size": 2}]],
            "allocator_settings": {"x": [[[[[[[[[[1]]]]]]]]]]}}
    data = pickle.dumps(deep, protocol=4)
    monkeypatch.setenv("MEMPROF_MAX_DEPTH", "8")
    for fn in (lambda: _fastpickle.load(io.BytesIO(data), T.ACTIONS, 1 << 30, 8),
               lambda: _fastpickle.scan(io.BytesIO(data), 1 << 30, 8)):
        with pytest.raises(_fastpickle.Limit) as e:
            fn()
        assert e.value.args[0] == "depth"
    with pytest.raises(limits.LimitError, match="MEMPROF_MAX_DEPTH"):
        scan(io.BytesIO(data))
    monkeypatch.setenv("MEMPROF_MAX_DEPTH", "16")
    scan(io.BytesIO(data))
    # rows: 3000 references to one 1000-block segment = 3M rows from a few KB; raising the floor admits it
    seg = {"device": 0, "address": 0, "total_size": 1, "blocks": [{"address": 0, "size": 1, "state": "inactive"}] * 1000}
    raw = {"segments": [seg] * 3000, "device_traces": [[{"action": "alloc", "addr": 0, "size": 1}]]}
    with pytest.raises(limits.LimitError, match="MEMPROF_MAX_ROWS"):
        limits.check_expansion(raw, 5000, "f")
    monkeypatch.setenv("MEMPROF_MAX_ROWS", "4000000")
    limits.check_expansion(raw, 5000, "f")


def test_parse_size() -> None:
    assert limits.parse_size("2G") == 2 << 30 and limits.parse_size("512MiB") == 512 << 20
    assert limits.parse_size("1000") == 1000 and limits.parse_size("1.5k") == 1536
    with pytest.raises(MemprofError):
        limits.parse_size("-3")


def test_to_i64() -> None:
    assert limits.to_i64(2**64 - 1) == -1 and limits.to_i64(2**63) == -(2**63)
    assert limits.to_i64(2**64) == 2**63 - 1 and limits.to_i64(-(2**70)) == -(2**63)
    assert limits.to_i64(12) == 12 and limits.to_i64(True) == 1


# ---------------------------------------------------------------------------
# issue 9: the format is decided by the bytes, not the name


@pytest.mark.parametrize(
    "name,encode,fmt",
    [
        ("memory_snapshot.json", lambda d: pickle.dumps(d, protocol=4), "pickle"),  # pickle saved as .json
        ("snap.pickle", lambda d: gzip.compress(pickle.dumps(d, protocol=4)), "pickle.gz"),  # gzip without .gz
        ("snap.pickle.xz", lambda d: lzma.compress(pickle.dumps(d, protocol=4)), "pickle.xz"),
        ("snap.bin", lambda d: bz2.compress(pickle.dumps(d, protocol=2)), "pickle.bz2"),
        ("snap.pickle", lambda d: json.dumps(d).encode(), "json"),  # JSON saved as .pickle
        ("snap.json.gz", lambda d: gzip.compress(b"\xef\xbb\xbf \n\t" + json.dumps(d).encode()), "json.gz"),  # BOM, blanks
        ("snap", lambda d: lzma.compress(pickle.dumps(d, protocol=5)), "pickle.xz"),
    ],
)
@pytest.mark.parametrize("loader", ("c", "pure"))
def test_format_by_bytes(tmp_path: Path, name: str, encode, fmt: str, loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = hostile.small_snapshot()
    p = tmp_path / name
    p.write_bytes(encode(snap))
    monkeypatch.setenv("MEMPROF_LOADER", loader)
    s = L.load_uncached(p)
    entries = snap["device_traces"][0]  # independent: the entries as written
    assert s.events["size"].tolist() == [e["size"] for e in entries]
    assert s.events["addr"].tolist() == [e["addr"] for e in entries]
    assert s.segments["total_size"].tolist() == [seg["total_size"] for seg in snap["segments"]]
    assert s.info["format"] == fmt


def test_trailing_garbage_after_a_gzip_member_is_corrupt_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    p = hostile.HOSTILE_DIR / "gzip_trailing_garbage.pickle.gz"
    for loader in ("c", "pure"):
        monkeypatch.setenv("MEMPROF_LOADER", loader)
        with pytest.raises(MemprofError, match="corrupt"):
            L.load_uncached(p)


def test_data_after_stop_inside_the_stream_is_ignored_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as pickle.load: a pickle ends at STOP; the container (gzip) must still be intact to its end
    p = tmp_path / "s.pickle.gz"
    p.write_bytes(gzip.compress(pickle.dumps(hostile.small_snapshot(), protocol=4) + b"anything"))
    got = set()
    for loader in ("c", "pure"):
        monkeypatch.setenv("MEMPROF_LOADER", loader)
        got.add(tuple(L.load_uncached(p).events["size"]))
    assert got == {(1 << 20, 1 << 20)}


# ---------------------------------------------------------------------------
# the two scans (C and pure Python) reach the same verdicts


def _verdict(fn, data: bytes) -> str:
    try:
        fn(data)
        return "ok"
    except _fastpickle.Limit as e:
        return f"limit:{e.args[0]}"
    except limits.LimitError as e:
        for kind, key in (("depth", "levels deep"), ("memo", "memo index"), ("bytes", "decompressed"), ("memory", "memory limit")):
            if key in str(e):
                return f"limit:{kind}"
        return "limit:?"
    except (_fastpickle.Malformed, _fastpickle.Unsupported, pickle.UnpicklingError, MemprofError, UnicodeDecodeError):
        return "refused"


def test_c_and_python_scans_agree_on_hostile_and_mutated_inputs() -> None:
    from fuzz.harness import Mutator, load_seeds

    def c_scan(d: bytes) -> None:
        _fastpickle.scan(io.BytesIO(d), 1 << 30, 64)

    def py_scan(d: bytes) -> None:
        scan(io.BytesIO(d), max_bytes=1 << 30, max_depth=64)

    inputs = [b() for b, _ in hostile.SMALL.values() if b is not hostile.gzip_trailing_garbage]
    mut = Mutator([s for s in load_seeds() if len(s) < 40_000], random.Random(7))
    inputs += [mut()[1] for _ in range(1500)]
    differ = [(i, _verdict(c_scan, d), _verdict(py_scan, d)) for i, d in enumerate(inputs)]
    differ = [x for x in differ if x[1] != x[2]]
    assert not differ, differ[:10]
