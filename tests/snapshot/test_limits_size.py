"""The byte limit scales with the file: what a real snapshot of its size on disk could need."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from memprof.snapshot import limits
from memprof.errors import MemprofError
from memprof.snapshot.load import load

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "transformer_train3.pickle.gz"


def test_default_limit_follows_the_size_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMPROF_MAX_BYTES", raising=False)
    assert limits.max_bytes() == limits.DEFAULT_MAX_BYTES
    assert limits.max_bytes(730 << 20, False) == 730 * limits.RAW_FACTOR << 20  # a 10M-entry pickle loads without a flag
    assert limits.max_bytes(10 << 20, True) == max(limits.DEFAULT_MAX_BYTES, (10 << 20) * limits.COMPRESSED_FACTOR)
    assert limits.max_bytes(1 << 10, True) == limits.DEFAULT_MAX_BYTES
    monkeypatch.setenv("MEMPROF_MAX_BYTES", "1G")  # an explicit limit always wins
    assert limits.max_bytes(730 << 20, False) == 1 << 30


def test_a_file_larger_than_the_floor_loads_and_a_bomb_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a floor far below what the golden file needs (as 2 GiB is below a 10M-entry pickle's needs)
    monkeypatch.delenv("MEMPROF_MAX_BYTES", raising=False)
    monkeypatch.setattr(limits, "DEFAULT_MAX_BYTES", 4096)
    raw = tmp_path / "plain.pickle"
    with gzip.open(GOLDEN) as f, open(raw, "wb") as out:
        shutil.copyfileobj(f, out)
    # WHEN loaded uncompressed and gzip'd: THEN both load, the limit coming from their sizes
    assert len(load(raw, use_cache=False).events) > 0
    assert len(load(GOLDEN, use_cache=False).events) > 0
    # AND a gzip that inflates far beyond what its size could hold is refused, naming the limit
    bomb = tmp_path / "bomb.pickle.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(b"\x80\x04" + b"N0" * (4 << 20))  # 8 MiB of NONE/POP: inflates ~1000x
    with pytest.raises(MemprofError, match="limit"):
        load(bomb, use_cache=False)
