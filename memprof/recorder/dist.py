"""Recording under ``torchrun``: which rank this process is, where its snapshot goes, and dumping
it when the launcher terminates the worker.

torchrun (torch.distributed.run) starts one worker per rank with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``GROUP_RANK`` and ``TORCHELASTIC_RUN_ID`` in its environment; that is all
memprof needs (torch.distributed itself may not even be initialised yet when recording starts).
A recording asked for at ``out.pickle.gz`` (or at a folder ``out``) in a worker goes to the run
folder ``out/rank{RANK}.pickle.gz``: every rank writes its own file, so no two ranks ever write
the same path (:func:`memprof.snapshot.runs.rank_path`).

When one rank fails (an OOM), torchrun's agent sends SIGTERM to the others, then SIGKILL after
30 s. Their snapshots are what explains the imbalance, so :class:`TermDump` writes them on
SIGTERM: a Python handler (when the main thread is free) and, for a main thread blocked inside a
collective, a watcher thread woken through ``signal.set_wakeup_fd``, whichever comes first.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from memprof.snapshot.runs import rank_of, rank_path

EXIT_TERMINATED = 128 + signal.SIGTERM
#: How long the SIGTERM watcher thread leaves the main thread to start the dump itself.
HANDLER_GRACE_S = 3.0


def rank_env(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """This worker's place in a torchrun job, or None outside one.

    Keys: rank, local_rank, world_size, group_rank (the node), run_id, host, master_addr, master_port.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        return None
    return {
        "rank": rank, "local_rank": local, "world_size": world,
        "group_rank": int(env["GROUP_RANK"]) if env.get("GROUP_RANK", "").isdigit() else None,
        "run_id": env.get("TORCHELASTIC_RUN_ID"), "host": socket.gethostname(),
        "master_addr": env.get("MASTER_ADDR"), "master_port": env.get("MASTER_PORT"),
    }  # fmt: skip


def output_path(path: str | os.PathLike[str], compress: bool | None = None) -> Path:
    """Where this process writes ``path``: unchanged outside torchrun, ``RUN/rank{R}...`` in a worker
    (a path already named ``rank{R}.pickle[.gz]`` for this rank is kept)."""
    info = rank_env()
    if info is None or rank_of(path) == info["rank"]:  # outside torchrun, or already this rank's file
        return Path(path)
    return rank_path(path, info["rank"], compress)


def device_name(name: Any, info: dict[str, Any] | None) -> Any:
    """In a worker, a bare ``cuda`` (or no device) means the local rank's GPU, as torchrun scripts use it."""
    if info is None or (name not in (None, "auto", "cuda")):
        return name
    import torch

    if not torch.cuda.is_available():
        return name
    n = torch.cuda.device_count()
    return f"cuda:{info['local_rank'] if info['local_rank'] < n else 0}"


class TermDump:
    """On SIGTERM call ``dump('terminated')`` once, then exit with 143. ``close()`` restores everything.

    ``hold()`` before the recording writes its own snapshot (an error path: a rank that saw another
    rank's failure first): a SIGTERM from then on waits for that write, and ``close()`` delivers it
    to the handler that was there before once the file is written. (Closing before the write let
    torchrun's SIGTERM kill rank 0 mid-write: its snapshot was lost in 2 of 4 runs.)

    Only installable from the main thread (signal handlers are); elsewhere it does nothing.
    """

    def __init__(self, dump: Callable[[str], None]) -> None:
        self._dump = dump
        # re-entrant: the Python handler runs on the main thread, which may be inside hold()/close()
        self._lock = threading.RLock()
        self.active = False
        self._held = False
        self._pending = False
        self._in_handler = threading.Event()  # the main thread's Python handler has begun
        if threading.current_thread() is not threading.main_thread():
            return
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        try:
            self._old_handler = signal.signal(signal.SIGTERM, self._handler)
            self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(self._r)
            os.close(self._w)
            return
        self.active = True
        threading.Thread(target=self._watch, name="memprof-sigterm", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._r, 64)
            except OSError:
                return
            if not data:  # close() closed the write end
                os.close(self._r)
                return
            if signal.SIGTERM in data:
                # the main thread's handler dumps when it can run Python: the CPU profiler keeps
                # each thread's events, and a stop from this thread loses the main thread's (seen
                # under load: an empty snapshot). This thread dumps only for a main thread stuck
                # in C (a collective waiting for a dead rank): torchrun's SIGKILL comes after 30 s.
                if not self._in_handler.wait(HANDLER_GRACE_S):
                    self._fire()

    def _handler(self, signum: int, frame: Any) -> None:
        self._in_handler.set()
        self._fire()

    def _fire(self) -> None:
        with self._lock:  # a second caller waits for the first dump, then exits too
            if self._held or not self.active:  # the recording is writing (or has written) its own file
                self._pending = True
                return
            if self.active:
                try:
                    self._dump("terminated")
                except BaseException as e:  # noqa: BLE001 - we are exiting anyway; say why
                    print(f"memprof: could not write the snapshot on SIGTERM: {e}", file=sys.stderr)
                sys.stderr.flush()
                os._exit(EXIT_TERMINATED)

    def hold(self) -> None:
        """From now on a SIGTERM does not dump: it is kept for :meth:`close` (the caller writes)."""
        with self._lock:
            self._held = True

    def close(self) -> None:
        with self._lock:
            if not self.active:
                return
            self.active = False
            try:
                signal.signal(signal.SIGTERM, self._old_handler)
                signal.set_wakeup_fd(self._old_fd)
            except (ValueError, OSError):
                pass
            os.close(self._w)  # the watcher reads EOF, closes the read end and ends
            pending = self._pending
        if pending:  # a SIGTERM came while the caller wrote: deliver it as if memprof were not there
            signal.raise_signal(signal.SIGTERM)


def recorded_nothing(snapshot: dict[str, Any]) -> bool:
    """True when a snapshot holds no trace entry and no segment on any device."""
    traces = snapshot.get("device_traces") or []
    return not any(len(t) for t in traces) and not snapshot.get("segments")


def finalize_status(meta: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """A rank (or any recording) that recorded nothing is never ``ok``: status ``empty`` and why."""
    if recorded_nothing(snapshot) and meta.get("status") in (None, "ok"):
        dev = (meta.get("device") or {}).get("type", "the device")
        meta["status"] = "empty"
        meta["error"] = (f"nothing was recorded: no allocation on {dev} between the start and the end of the window "
                         "(did the script run its work on another device, or in a child process?)")
