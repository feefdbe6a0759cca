"""The command line as a new user meets it: quiet recordings, the user's own traceback, usage of
the right subcommand, refused bad values, reproducible metadata, `serve` on a file or a busy port."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from memprof.cli import main
from memprof.snapshot.meta import read_meta, snapshot_beside

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _memprof(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memprof", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_native_stderr_filter_drops_profiler_noise_and_keeps_the_rest(capfd: pytest.CaptureFixture[str]) -> None:
    from memprof.recorder.native_stderr import NativeStderrFilter

    # GIVEN torch's C++ lines written straight to fd 2, between a progress bar and the user's own output
    noise_start = b"USDT:2026-11-22 13:50:13 10057:10057 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
    noise_w = (b"[W1122 13:50:13.463534994 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the "
               b"profiling started, profiler results will not include the deallocation event\n")
    # WHEN they pass through the filter
    with NativeStderrFilter() as f:
        os.write(2, b"\rbar:  14%|#4 | 1/7")
        os.write(2, noise_start)
        os.write(2, noise_w)
        os.write(2, noise_w)
        os.write(2, b"my own warning\n")
        os.write(2, b"[not torch] a line of mine\n")
    err = capfd.readouterr().err
    # THEN only the noise is gone, counted, and said once
    assert "USDT" not in err and "CPUAllocator" not in err
    assert "\rbar:  14%|#4 | 1/7" in err and "my own warning\n" in err and "[not torch] a line of mine\n" in err
    assert f.counts == {"profiler_start_stop": 1, "unknown_size_frees": 2}
    assert f.note() is not None and "2 free(s)" in f.note()  # type: ignore[operator]


def test_cpu_record_prints_no_profiler_noise(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # WHEN a CPU attention recording runs as a user runs it (real fd 2, progress bar on)
    r = _memprof("record", "attention", "--seq-len", "64", "--d", "8", "--batch", "2", "--steps", "2", "--warmup", "1",
                 "--device", "cpu", "-o", "a.pickle", cwd=tmp_path)  # fmt: skip
    # THEN it succeeds and no torch profiler line reaches the terminal; the note is at most one line
    assert r.returncode == 0, r.stderr
    assert "USDT" not in r.stderr and "CPUAllocator.cpp" not in r.stderr
    assert sum("memprof: note:" in ln for ln in r.stderr.splitlines()) <= 1
    # and the metadata's command reproduces the run (no doubled "record")
    cmd = read_meta(tmp_path / "a.pickle")["command"]
    assert cmd.startswith("memprof record attention --seq-len 64") and "record record" not in cmd


def test_script_that_raises_shows_the_users_traceback(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "boom.py"
    script.write_text("import torch\n\n\ndef inner():\n    x = torch.randn(1000)\n    raise RuntimeError('boom')\n\n\ndef outer():\n"
                      "    inner()\n\n\nouter()\n")
    r = _memprof("record", "-o", "boom.pickle", "--device", "cpu", "--", "python", "boom.py", cwd=tmp_path)
    assert r.returncode == 1
    err = r.stderr
    # the user's frames, innermost last, as Python prints them; none of memprof's or runpy's
    assert "Traceback (most recent call last):" in err
    assert 'boom.py", line 13, in <module>' in err and 'boom.py", line 10, in outer' in err and 'boom.py", line 6, in inner' in err
    assert "RuntimeError: boom" in err
    assert "memprof/commands" not in err and "runpy" not in err
    assert "snapshot still written: boom.pickle" in err and (tmp_path / "boom.pickle").exists()
    meta = read_meta(tmp_path / "boom.pickle")
    assert meta["status"] == "error" and meta["command"] == "memprof record -o boom.pickle --device cpu -- python boom.py"


def test_meta_json_argument_uses_the_snapshot_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "run.pickle.gz"
    shutil.copy(GOLDEN, snap)
    (tmp_path / "run.meta.json").write_text(json.dumps({"status": "ok", "peak_allocated_bytes": 123}))
    assert snapshot_beside(tmp_path / "run.meta.json") == snap
    assert main(["stats", str(snap), "--json", "--no-cache"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["stats", str(tmp_path / "run.meta.json"), "--json", "--no-cache"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b and b["allocator_peak_bytes"] == 123  # the same snapshot, and its metadata read
    assert main(["explain", str(tmp_path / "run.meta.json"), "--no-cache"]) == 0
    # a metadata file with no snapshot beside it: one clear line
    (tmp_path / "lonely.meta.json").write_text("{}")
    assert main(["stats", str(tmp_path / "lonely.meta.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no snapshot lonely.pickle" in err[0]


@pytest.mark.parametrize("argv, usage", [
    (["stats", str(GOLDEN), "--bogus"], "usage: memprof stats"),
    (["explain", str(GOLDEN), "--top", "-1"], "usage: memprof explain"),
    (["stats", str(GOLDEN), "--top", "-1"], "usage: memprof stats"),
    (["diff", str(GOLDEN), str(GOLDEN), "--top", "-1"], "usage: memprof diff"),
    (["report", str(GOLDEN), "--top", "-1"], "usage: memprof report"),
    (["record", "attention", "--seq-len", "abc"], "usage: memprof record attention"),
    (["record", "transformer", "--bogus"], "usage: memprof record transformer"),
    (["sweep", "attention", "--d", "x"], "usage: memprof sweep attention"),
])  # fmt: skip
def test_bad_flags_print_the_subcommands_usage(argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert "usage: memprof [-h]" not in err and "memprof: memprof" not in err
    assert err.strip().splitlines()[-1].startswith(usage[len("usage: "):] + ": error: ")


def test_sweep_help_has_descriptions_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for kind, needles in (("attention", ["(default: 256,1024,4096,8192,16384)", "head dimensions", "(default: naive,compiled,sdpa)"]),
                          ("transformer", ["(default: small,medium,large,xl,2.7B)", "(default: both)", "context length"])):
        with pytest.raises(SystemExit):
            main(["sweep", kind, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for n in needles + ["measured steps per configuration (default: 3)", "(default: 2)"]:
            assert n in out, (kind, n)


def test_sweep_primes_the_process_before_the_first_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from memprof.commands.sweep_run import prime_process

    calls: list[tuple[str, object, int]] = []

    def fake_record(w, path, dev, steps, warmup, **k):  # type: ignore[no-untyped-def]
        calls.append((w, path, steps))
        return {}

    todo = [{"kind": "transformer", "size": "tiny", "compile": True}, {"kind": "transformer", "size": "small", "compile": False}]
    cfg = prime_process(todo, "cpu", fake_record, lambda kind, **o: (kind, o["size"]))
    # the first eager config, one step, no snapshot
    assert cfg is todo[1] and calls == [(("transformer", "small"), None, 1)]


def test_serve_on_a_busy_port_fails_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(GOLDEN), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out and f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


def test_serve_missing_path_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nope.pickle")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_serve_file_is_a_library_of_one(tmp_path: Path) -> None:
    pytest.importorskip("dash")
    from memprof.dashboard.state import Library

    from memprof.errors import MemprofError

    shutil.copy(GOLDEN, tmp_path / "mine.pickle.gz")
    shutil.copy(GOLDEN, tmp_path / "other.pickle.gz")
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "results.csv").write_text("seq_len,status\n1,ok\n")
    lib = Library(tmp_path / "mine.pickle.gz")
    assert [e.rel for e in lib.entries()] == ["mine.pickle.gz"] and lib.default_entry().rel == "mine.pickle.gz"  # type: ignore[union-attr]
    assert lib.sweeps() == []
    with pytest.raises(MemprofError):
        lib.get("other.pickle.gz")
    assert lib.model(0).peak_bytes > 0


def test_readme_tour_matches_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from memprof.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A tour"):readme.index("| command | what it does |")]
    # the tour's commands, in `memprof --help` order, each a real subcommand
    cmds = [ln.split()[1] for ln in tour.splitlines() if ln.startswith("    memprof ")]
    assert cmds and set(cmds) <= set(COMMANDS)
    assert [c for c in COMMANDS if c in cmds] == list(dict.fromkeys(cmds))
    # the stats block is what `memprof stats` prints today, byte for byte
    block = tour[tour.index("    $ memprof stats "):].split("\n\n")[0].splitlines()
    argv = block[0].split()[2:]
    assert main(argv) == 0
    out = capsys.readouterr().out.rstrip("\n").splitlines()
    assert [ln[4:] for ln in block[1:]] == out


def test_analysis_commands_let_glibc_keep_freed_memory_and_record_does_not(monkeypatch, capsys):
    """memprof.malloc_tuning: only in processes that read snapshots, never in one that runs user code."""
    import sys

    from memprof.snapshot import malloc_tuning
    from memprof.cli import ANALYSIS_COMMANDS, build_parser

    calls = []
    monkeypatch.setattr(malloc_tuning, "keep_freed_memory", lambda: calls.append(1) or True)
    golden = Path(__file__).parents[1] / "data" / "golden" / "transformer_train3.pickle.gz"
    assert main(["stats", str(golden)]) == 0
    assert calls == [1]
    assert "record" not in ANALYSIS_COMMANDS and "sweep" not in ANALYSIS_COMMANDS and "predict" not in ANALYSIS_COMMANDS
    subs = build_parser()._subparsers._group_actions[0].choices  # every analysis command named is a real one
    assert {"stats", "explain", "diff", "report", "serve", "whatif", "export", "check"} <= set(subs)
    if sys.platform.startswith("linux"):
        monkeypatch.undo()
        assert malloc_tuning.keep_freed_memory() is True  # glibc accepts the settings


def test_a_cut_pipe_never_reads_as_a_pass(tmp_path: Path) -> None:
    # GIVEN a failing check whose output a reader stops reading after one line (`| head -n 1`)
    snap = str(ROOT / "snapshots" / "h100" / "transformer-small-train-eager-bf16.pickle.gz")
    p = subprocess.Popen([sys.executable, "-m", "memprof", "check", snap, "--max-allocated", "1KiB", "--max-reserved", "1KiB"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert p.stdout is not None
    p.stdout.close()  # the reader is gone before memprof writes
    rc = p.wait(timeout=120)
    # THEN the exit status says the run was cut (128 + SIGPIPE), never 0, and no traceback
    assert rc == 141, p.stderr.read() if p.stderr else b""
    assert b"Traceback" not in (p.stderr.read() if p.stderr else b"")


def test_stdout_is_a_text_stream_for_click() -> None:
    # GIVEN the CLI's escaping stdout WHEN click probes it with bytes (`memprof serve`'s banner)
    import io

    from memprof.escape import EscapingWriter

    out = io.StringIO()
    w = EscapingWriter(out)
    with pytest.raises(TypeError):
        w.write(b"")  # type: ignore[arg-type]
    # THEN it is treated as text: nothing like b'' reaches the terminal, text still passes escaped
    w.write("ok\x1b[2J\n")
    assert out.getvalue() == "ok\\x1b[2J\n"
