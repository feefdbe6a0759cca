"""Snapshots dropped into the running dashboard (as into pytorch.org/memory_viz).

An upload is untrusted bytes. It is size-limited (:data:`MAX_UPLOAD_BYTES`, also enforced by the
browser's ``dcc.Upload(max_size=...)``), written only into a private temporary folder of this
process (mode 0700, removed at exit; never into the served folder), and parsed only through
:func:`memprof.snapshot.load.load` (the restricted unpickler or the C loader: no code runs). A file that
does not load is deleted and its one-line reason shown. The library then lists it as
``uploaded/NAME`` with an id like any other snapshot.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import itertools
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from memprof.dashboard.state import Entry, Library
from memprof.errors import MemprofError
from memprof.snapshot.meta import SNAPSHOT_SUFFIXES

MAX_UPLOAD_BYTES = int(os.environ.get("MEMPROF_UPLOAD_MAX_MB", "256")) << 20
_DIR: Path | None = None
_LOCK = threading.Lock()
_COUNT = itertools.count()  # file names unique for the life of the process


def upload_dir(lib: Library) -> Path:
    """This process's private folder for uploads (created on first use, 0700, removed at exit)."""
    global _DIR
    with _LOCK:
        if _DIR is None or not _DIR.is_dir():
            d = Path(tempfile.mkdtemp(prefix="memprof-uploads-")).resolve()
            _DIR = d
            atexit.register(shutil.rmtree, d, True)
        if lib.inside(_DIR):
            raise MemprofError("uploads are off: the temporary folder lies inside the served folder")
        return _DIR


def safe_name(filename: str) -> str:
    """The file's own name, reduced to safe characters, with a snapshot suffix (else refused)."""
    base = re.sub(r"[^A-Za-z0-9._@+-]", "_", os.path.basename(str(filename or "").replace("\\", "/")))[-120:].lstrip(".")
    low = base.lower()
    if not base or low.endswith(".meta.json") or not any(low.endswith(s) for s in SNAPSHOT_SUFFIXES):
        raise MemprofError(f"{filename!r}: not a snapshot file name (use {', '.join(SNAPSHOT_SUFFIXES)})")
    return base


def decode(contents: str) -> bytes:
    """The bytes of a ``dcc.Upload`` data URL (``data:...;base64,XXXX``), size-checked before decoding."""
    if not isinstance(contents, str) or "," not in contents:
        raise MemprofError("the upload carried no file")
    b64 = contents.split(",", 1)[1]
    if len(b64) * 3 // 4 > MAX_UPLOAD_BYTES + 3:
        raise MemprofError(f"file too large: uploads are limited to {MAX_UPLOAD_BYTES >> 20} MiB (use `memprof serve FILE`)")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise MemprofError("the upload is not valid base64") from None


def save_upload(lib: Library, filename: str, contents: str) -> Entry:
    """Store, parse (safely) and register one dropped snapshot; returns its library entry."""
    from memprof.snapshot.load import load

    name = safe_name(filename)
    data = decode(contents)
    d = upload_dir(lib)
    with _LOCK:
        n = next(_COUNT)
        path = d / f"{n}-{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        load(path)
    except MemprofError as e:
        path.unlink(missing_ok=True)
        raise MemprofError(f"{name}: {str(e).replace(str(path), name)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the bytes do to the loader, the server stays up
        path.unlink(missing_ok=True)
        raise MemprofError(f"{name}: not a readable snapshot ({type(e).__name__})") from None
    with _LOCK:
        lib.uploads.append(path)
        lib._entries = None  # rescan: the upload joins the list with the next id
    return next(e for e in lib.entries() if e.path == path)
