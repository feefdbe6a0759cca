"""Dropping a snapshot into the dashboard: size-limited, parsed safely, kept out of the served folder."""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest

pytest.importorskip("dash")

from memprof.errors import MemprofError  # noqa: E402
from dashwalk import walk as _walk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "snapshots"
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"


def _data_url(b: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(b).decode()


@pytest.fixture()
def served(tmp_path: Path):
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    root = tmp_path / "served"
    root.mkdir()
    shutil.copy(GOLDEN, root / "mine.pickle.gz")
    create_app(root)
    yield root, library()
    create_app(ROOT)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_upload_opens_the_snapshot_from_a_private_folder(served) -> None:
    from memprof.dashboard.pages import library as page
    from memprof.dashboard.upload import upload_dir

    from memprof.snapshot.load import load
    from memprof.replay.timeline import replay

    root, lib = served
    before = _files(root)
    href, status = page.upload(_data_url(GOLDEN.read_bytes()), "C:\\Users\\me\\my snapshot.pickle.gz")
    e = lib.entries()[-1]
    assert href == f"/timeline?snap={e.id}" and status == f"opened {e.rel}"
    assert e.rel.startswith("uploaded/") and e.rel.endswith("-my_snapshot.pickle.gz")
    # kept in this process's private folder, never in the served one
    assert _files(root) == before
    assert e.path.parent == upload_dir(lib) and not e.path.resolve().is_relative_to(root.resolve())
    assert stat.S_IMODE(os.stat(e.path.parent).st_mode) == 0o700
    # and it is the same snapshot: its replayed peak is the file's
    assert lib.model(e.id, None).peak_bytes == replay(load(GOLDEN, use_cache=False)).peak_bytes
    assert [x.rel for x in lib.entries()][0] == "mine.pickle.gz"  # the folder's own entries keep their ids


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/memprof-upload-pwned",))


def test_upload_of_a_malicious_pickle_runs_nothing(served) -> None:
    from memprof.dashboard.pages import library as page

    root, lib = served
    marker = Path("/tmp/memprof-upload-pwned")
    marker.unlink(missing_ok=True)
    n = len(lib.entries())
    href, status = page.upload(_data_url(pickle.dumps(_Evil())), "evil.pickle")
    assert not isinstance(href, str)  # no navigation
    assert "memprof:" in status.children and "evil.pickle" in status.children
    assert not marker.exists()
    assert len(lib.entries()) == n and lib.uploads == []  # refused files are deleted, never listed


@pytest.mark.parametrize("name", ["notes.txt", "../../etc/passwd", "x.meta.json", ""])
def test_upload_refuses_non_snapshot_names(served, name: str) -> None:
    from memprof.dashboard.upload import save_upload

    root, lib = served
    with pytest.raises(MemprofError):
        save_upload(lib, name, _data_url(GOLDEN.read_bytes()))
    assert lib.uploads == []


def test_upload_size_limit(served, monkeypatch: pytest.MonkeyPatch) -> None:
    import memprof.dashboard.upload as up
    from memprof.dashboard.pages import library as page

    root, lib = served
    monkeypatch.setattr(up, "MAX_UPLOAD_BYTES", 1024)
    _, status = page.upload(_data_url(GOLDEN.read_bytes()), "big.pickle.gz")
    assert "too large" in status.children and lib.uploads == []
    _, status = page.upload(None, "big.pickle.gz")  # the browser refused it (max_size): no contents
    assert "size limit" in status


def test_upload_box_is_size_limited_in_the_browser_too(served) -> None:
    from memprof.dashboard.pages import library as page
    from memprof.dashboard.upload import MAX_UPLOAD_BYTES

    up = next(c for c in _walk(page.layout()) if getattr(c, "id", None) == "library-upload")
    assert up.max_size == MAX_UPLOAD_BYTES and up.multiple is False


