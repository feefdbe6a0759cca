"""`stats`/`explain`/`diff`/`whatif --json` of the bundled snapshots stay byte-identical.

The files in tests/data/cli_json were written by the CLI before the layer reorganisation
(issue 20: behaviour unchanged); any change to a figure shows up here as a failing diff.
Regenerate only for a deliberate change of output, and say so in the commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "cli_json"
BUNDLED = sorted((ROOT / "snapshots" / "h100").glob("*.pickle.gz"))
DIFFS = {
    "diff-eager-compiled": ("transformer-small-train-eager-bf16", "transformer-small-train-compiled-bf16"),
    "diff-naive-sdpa": ("attention-naive-s4096-d64-b8-fwdbwd-fp32", "attention-sdpa-s4096-d64-b8-fwdbwd-fp32"),
}


def _cases() -> list[tuple[str, list[str]]]:
    cases = []
    for f in BUNDLED:
        name = f.name[: -len(".pickle.gz")]
        rel = f"snapshots/h100/{f.name}"
        cases.append((f"stats-{name}", ["stats", rel, "--json"]))
        cases.append((f"explain-{name}", ["explain", rel, "--json"]))
        cases.append((f"whatif-{name}", ["whatif", rel, "--alloc-conf", "expandable_segments:True", "--json"]))
    for key, (a, b) in DIFFS.items():
        cases.append((key, ["diff", f"snapshots/h100/{a}.pickle.gz", f"snapshots/h100/{b}.pickle.gz", "--json"]))
    return cases


def test_every_bundled_snapshot_has_a_golden_file() -> None:
    names = {n for n, _ in _cases()}
    assert len(BUNDLED) == 8
    assert names == {p.stem for p in GOLDEN.glob("*.json")}


@pytest.mark.parametrize("name,args", _cases(), ids=[n for n, _ in _cases()])
def test_cli_json_is_byte_identical(name: str, args: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, MEMPROF_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "memprof", *args], cwd=ROOT, env=env,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    want = (GOLDEN / f"{name}.json").read_bytes()
    assert out.stdout == want, f"memprof {' '.join(args)} differs from {name}.json"
