"""``memprof check``: limits, baseline regressions, run folders of ranks, exit codes, explanations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from memprof.cli import main
from memprof.errors import MemprofError
from memprof.analysis.checks import parse_percent, run_files
from memprof.units import parse_size
from memprof.testing import write_snapshot
from snapgen import SnapGen

REPO = Path(__file__).resolve().parents[2]
H100 = REPO / "snapshots" / "h100"
MIB = 2**20


def training(extra: int = 0) -> dict[str, Any]:
    """Two steps: weights alive before the window, activations up then down; ``extra`` bytes more at model.py:42."""
    g = SnapGen()
    g.preexisting(8 * MIB, site="model.py:3:__init__")
    for it in range(2):
        with g.phase("forward", it):
            acts = [g.alloc(4 * MIB, site="model.py:10:forward"), g.alloc(2 * MIB, site="model.py:11:forward")]
            if extra:
                acts.append(g.alloc(extra, site="model.py:42:forward"))
        with g.phase("backward", it):
            for a in reversed(acts):
                g.free(a)
    return g.raw()


def plain_peak(raw: dict[str, Any]) -> int:
    """Peak allocated bytes of a snapshot dict, in plain Python: blocks alive before + running sum of the trace."""
    traced = {e["addr"] for e in raw["device_traces"][0] if e["action"] == "alloc"}
    cur = sum(b["size"] for s in raw["segments"] for b in s["blocks"] if b["state"] == "active_allocated" and b["address"] not in traced)
    peak = cur
    for e in raw["device_traces"][0]:
        if e["action"] == "alloc":
            cur += e["size"]
        elif e["action"] == "free_completed":
            cur -= e["size"]
        peak = max(peak, cur)
    return peak


@pytest.fixture()
def snaps(tmp_path: Path) -> dict[str, Any]:
    base, grown = training(), training(extra=3 * MIB)
    return {"base": write_snapshot(tmp_path / "base.pickle", base), "grown": write_snapshot(tmp_path / "grown.pickle", grown),
            "base_peak": plain_peak(base), "grown_peak": plain_peak(grown)}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["check", *argv, "--no-cache"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_parse_size_and_percent() -> None:
    assert parse_size("2 GiB") == 2 * 2**30
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512mib") == 512 * MIB and parse_size("2G") == 2 * 2**30
    assert parse_size("1000") == 1000 and parse_size(4096) == 4096
    assert parse_percent("5%") == pytest.approx(0.05) and parse_percent("2.5") == pytest.approx(0.025)
    for bad in ("", "GiB", "1 parsec", "-1", "1e9"):
        with pytest.raises(MemprofError):
            parse_size(bad)
    with pytest.raises(MemprofError):
        parse_percent("five")


def test_max_allocated_exit_codes_and_explanation(snaps: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a snapshot whose plain-Python peak is 8 + 4 + 2 + 3 MiB
    peak = snaps["grown_peak"]
    assert peak == 17 * MIB
    # WHEN the limit is at the peak THEN it passes; one byte under THEN it fails
    rc, out, _ = run(capsys, str(snaps["grown"]), "--max-allocated", str(peak))
    assert rc == 0 and "within limits" in out
    rc, out, _ = run(capsys, str(snaps["grown"]), "--max-allocated", str(peak - 1), "--json")
    assert rc == 1
    d = json.loads(out)
    r = d["results"][0]
    assert d["ok"] is False and r["peak_allocated_bytes"] == peak and r["source"] == "recorded history"
    assert r["checks"] == [{"check": "max_allocated", "value": peak, "limit": peak - 1, "ok": False}]
    rc, out, _ = run(capsys, str(snaps["grown"]), "--max-allocated", "16MiB")
    assert rc == 1
    assert "peak allocated 17.0 MiB (17,825,792 B, recorded history) exceeds --max-allocated 16.0 MiB by 1.0 MiB" in out
    assert "model.py:10:forward 4.0 MiB" in out and "model.py:42:forward 3.0 MiB" in out  # sites alive at the peak


def test_baseline_regression(snaps: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    b, g = snaps["base_peak"], snaps["grown_peak"]
    rc, out, _ = run(capsys, str(snaps["grown"]), "--baseline", str(snaps["base"]), "--max-regression", "5%", "--json")
    assert rc == 1
    r = json.loads(out)["results"][0]
    reg = [c for c in r["checks"] if c["check"] == "regression_allocated"][0]
    assert (reg["value"], reg["baseline"], reg["ok"]) == (g, b, False)
    assert reg["change"] == pytest.approx((g - b) / b)
    # the paragraph says what grew, by site (the new 3 MiB line)
    rc, out, _ = run(capsys, str(snaps["grown"]), "--baseline", str(snaps["base"]), "--max-regression", "5%")
    assert rc == 1
    assert f"is +{(g - b) / b:.1%} over the baseline's 14.0 MiB (allowed +5.0%" in out
    assert "By source line: model.py:42:forward +3.0 MiB (appeared)" in out
    # within a generous allowance, and the baseline against itself
    assert run(capsys, str(snaps["grown"]), "--baseline", str(snaps["base"]), "--max-regression", "25%")[0] == 0
    assert run(capsys, str(snaps["base"]), "--baseline", str(snaps["base"]))[0] == 0


def test_run_folder_applies_to_every_rank(snaps: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, base_dir = tmp_path / "RUN", tmp_path / "BASE"
    for d, r1 in ((run_dir, snaps["grown"]), (base_dir, snaps["base"])):
        d.mkdir()
        shutil.copy(snaps["base"], d / "rank0.pickle")
        shutil.copy(r1, d / "rank1.pickle")
    shutil.copy(snaps["base"], run_dir / "rank10.pickle")
    assert [lab for lab, _ in run_files(run_dir)] == ["rank0", "rank1", "rank10"]  # numeric order
    rc, out, _ = run(capsys, str(run_dir), "--max-allocated", "16MiB", "--json")
    d = json.loads(out)
    assert rc == 1 and [(x["label"], x["ok"]) for x in d["results"]] == [("rank0", True), ("rank1", False), ("rank10", True)]
    rc, out, _ = run(capsys, str(run_dir), "--max-allocated", "16MiB")
    assert "FAIL rank1" in out and "rank1 (" in out and "FAIL rank0" not in out
    # a baseline run is matched by rank: each rank needs its own
    rc, _, err = run(capsys, str(run_dir), "--baseline", str(base_dir))
    assert rc == 2 and "the baseline has no rank10" in err
    (base_dir / "rank10.pickle").write_bytes((base_dir / "rank0.pickle").read_bytes())
    rc, out, _ = run(capsys, str(run_dir), "--baseline", str(base_dir), "--json")
    assert rc == 1 and [x["ok"] for x in json.loads(out)["results"]] == [True, False, True]
    shutil.copy(snaps["grown"], base_dir / "rank1.pickle")
    rc, out, _ = run(capsys, str(run_dir), "--baseline", str(base_dir), "--json")
    assert rc == 0 and all(x["ok"] for x in json.loads(out)["results"])
    rc, out, _ = run(capsys, str(run_dir), "--baseline", str(snaps["base"]), "--json")
    assert rc == 1 and [x["ok"] for x in json.loads(out)["results"]] == [True, False, True]


def test_real_h100_allocator_counter(capsys: pytest.CaptureFixture[str]) -> None:
    eager, comp = H100 / "transformer-small-train-eager-bf16.pickle.gz", H100 / "transformer-small-train-compiled-bf16.pickle.gz"
    me = json.loads((H100 / "transformer-small-train-eager-bf16.meta.json").read_text())
    mc = json.loads((H100 / "transformer-small-train-compiled-bf16.meta.json").read_text())
    rc, out, _ = run(capsys, str(eager), "--baseline", str(comp), "--max-regression", "5%", "--json")
    r = json.loads(out)["results"][0]
    # the allocator's own counters (torch.cuda.max_memory_allocated / _reserved), as the recorder wrote them
    assert r["source"] == "allocator counter"
    assert r["peak_allocated_bytes"] == me["peak_allocated_bytes"] and r["peak_reserved_bytes"] == me["peak_reserved_bytes"]
    assert r["baseline"]["peak_allocated_bytes"] == mc["peak_allocated_bytes"]
    grew = (me["peak_allocated_bytes"] - mc["peak_allocated_bytes"]) / mc["peak_allocated_bytes"]
    assert rc == (1 if grew > 0.05 else 0)
    assert r["checks"][0]["change"] == pytest.approx(grew)
    assert abs(r["replay_peak_allocated_bytes"] - r["peak_allocated_bytes"]) <= 0.01 * r["peak_allocated_bytes"]


@pytest.mark.parametrize("argv, msg", [
    (["/nonexistent/run", "--max-allocated", "1GiB"], "no such file or folder"),
    (["{grown}", "--max-allocated", "lots"], "not a size"),
    (["{grown}", "--max-regression", "5%"], "--max-regression needs --baseline"),
    (["{grown}"], "nothing to check"),
    (["{empty}", "--max-allocated", "1GiB"], "no snapshot files"),
    (["{grown}", "--baseline", "{bad}"], "memprof: "),
])
def test_bad_input_is_one_line(argv: list[str], msg: str, snaps: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pickle").write_bytes(b"not a pickle")
    argv = [a.format(grown=snaps["grown"], empty=tmp_path / "empty", bad=tmp_path / "bad.pickle") for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and msg in err and err.startswith("memprof: ") and err.count("\n") == 1 and "Traceback" not in err
