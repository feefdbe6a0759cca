"""The browser tests' fixtures: the app over a folder (``served_root``; a module overrides it to
serve other data) and one headless Chromium per module."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from chromium import REPO, chrome, require, serve

SNAPS = REPO / "snapshots"


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of snapshots/: two H100 snapshots and both sweep tables."""
    root = tmp_path_factory.mktemp("served")
    (root / "h100").mkdir()
    for name in ("transformer-small-train-eager-bf16", "transformer-small-train-compiled-bf16"):
        for suf in (".pickle.gz", ".meta.json"):
            shutil.copy(SNAPS / "h100" / (name + suf), root / "h100" / (name + suf))
    for sw in ("sweep-attention-h100", "sweep-transformer-h100"):
        (root / sw).mkdir()
        shutil.copy(SNAPS / sw / "results.csv", root / sw / "results.csv")
    return root


@pytest.fixture(scope="module")
def server(served_root: Path) -> Iterator[str]:
    require()
    with serve(served_root) as url:
        yield url


@pytest.fixture(scope="module")
def window_size() -> str:
    return "1400,1000"


@pytest.fixture(scope="module")
def driver(server: str, window_size: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = chrome(tmp_path_factory.mktemp("chrome-profile"), size=window_size)
    yield d
    d.quit()
