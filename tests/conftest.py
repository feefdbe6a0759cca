from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/support (snapgen, corpus, viewer, chromium, ...) and tests/ (the fuzz package) are importable
# from every test module, whichever folder of tests/ it sits in
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "support"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its columnar cache to a temp folder, never ~/.cache."""
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "memprof-cache"))
    yield
    from memprof.snapshot import background

    background.flush()  # cache writes run on a worker thread: none outlives its test


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
