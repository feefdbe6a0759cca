"""Cache writes off the critical path: one worker thread, in submission order.

Writing a 10M-entry snapshot's columnar cache and its replay takes a second or two, nearly all
of it inside Arrow with the GIL released; done on a second core it overlaps the analysis that
the user is waiting for. Writes run one at a time, in order (a replay's entry lives inside its
snapshot's entry, which must be in place first). The interpreter waits for pending writes at
exit (a CLI run leaves complete cache entries, never half-written ones: each write goes to a
temporary folder renamed into place), and :func:`flush` waits for them on demand.
``MEMPROF_SYNC_CACHE=1`` writes in the caller's thread instead.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pending: list[Future[Any]] = []


def submit(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` after the writes submitted before it; its errors are logged, never raised."""
    if os.environ.get("MEMPROF_SYNC_CACHE") == "1":
        _run(fn, *args)
        return
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memprof-cache")
        _pending[:] = [f for f in _pending if not f.done()]
        _pending.append(_pool.submit(_run, fn, *args))


def _run(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a cache that cannot be written only costs the next run its time
        log.debug("cache write failed", exc_info=True)


def flush() -> None:
    """Wait for every write submitted so far."""
    with _lock:
        pending = list(_pending)
    for f in pending:
        f.result()
