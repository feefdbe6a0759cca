"""Live view: the stream protocol and its follower. A recording process publishes a small stream of its memory on a loopback port.

Publisher side (the recording process, ``memprof record --live`` or ``memprof.record(..., live=True)``):
a daemon thread samples the device's counters a few times a second and serves them over HTTP on
127.0.0.1 only:

* ``GET /stream`` — newline-delimited JSON: one ``hello`` line (pid, command, device, source),
  then one line per sample as it is taken, and a last ``end`` line (status, snapshot path) when the
  recording ends. ``memprof serve``'s Live page follows this.
* ``GET /live.json`` — the hello, the last samples and the status in one object (for curl).

A sample is ``{"t": epoch seconds, "allocated": bytes, "reserved": bytes or null, "phase": name or
null, "iteration": int or null, "growth": [{"phase", "bytes"}...], "iteration_growth": bytes or null}``.

Where the numbers come from: on CUDA the caching allocator's own counters
(``allocated_bytes.all.current`` and ``reserved_bytes.all.current`` of ``torch.cuda.memory_stats``);
on MPS ``torch.mps.current_allocated_memory`` / ``driver_allocated_memory``; on CPU, which has no
allocator counter, the process's resident set size (``/proc/self/statm``), said so in ``source``.
``growth`` is the net change of allocated bytes over each phase of the last completed iteration
(read at the phase's start and end, only while a publisher runs), largest change first;
``iteration_growth`` the change over that whole iteration: a leak shows as a positive number every
iteration.

Cost: nothing when off (the recorder's phase timer checks one module attribute). When on, two counter
reads per phase and one sample per period on a background thread; measured in
``benchmarks/results/live_overhead_h100.md``.

Follower side (``memprof serve``; no torch): :func:`follow` keeps one background reader per port.
Everything read from the port is untrusted: lines are size-limited, fields type-checked.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from memprof.errors import MemprofError

DEFAULT_PORT = 8765
HOST = "127.0.0.1"
MAX_LINE = 64 * 1024
HISTORY = 2400  # samples kept (10 minutes at 4 Hz)
MAX_STREAMS = 8  # followers one recording process serves at once
MAX_FOLLOWERS = 16  # ports one dashboard follows at once (each is a thread; a page can ask for any port)


# -- follower (the app side; no torch) ---------------------------------------------------------------

def _num(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 2**63 else None


def _clean_sample(d: dict[str, Any]) -> dict[str, Any] | None:
    t, a = d.get("t"), _num(d.get("allocated"))
    if not isinstance(t, (int, float)) or isinstance(t, bool) or a is None:
        return None
    growth = []
    for g in d.get("growth") or []:
        if isinstance(g, dict) and isinstance(g.get("phase"), str) and _num(g.get("bytes")) is not None:
            growth.append({"phase": g["phase"][:80], "bytes": _num(g["bytes"])})
    ph = d.get("phase")
    return {"t": float(t), "allocated": a, "reserved": _num(d.get("reserved")), "phase": ph[:80] if isinstance(ph, str) else None,
            "iteration": _num(d.get("iteration")), "growth": growth[:10], "iteration_growth": _num(d.get("iteration_growth"))}


class Follower:
    """Reads one publisher's ``/stream`` in a background thread; reconnects while the page is open."""

    def __init__(self, port: int, host: str = HOST, idle_stop: float = 120.0) -> None:
        self.port, self.host = int(port), host
        self.samples: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.hello: dict[str, Any] = {}
        self.status = "waiting"  # waiting -> running -> done / error / lost
        self.snapshot: str | None = None
        self.error = ""
        self.version = 0
        self.last_read = time.monotonic()
        self.idle_stop = idle_stop
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"memprof-live-follow-{port}")
        self.thread.start()

    def view(self) -> dict[str, Any]:
        """A copy of what is known now (status, hello, samples, snapshot, version)."""
        self.last_read = time.monotonic()
        with self.lock:
            return {"status": self.status, "hello": dict(self.hello), "samples": list(self.samples), "snapshot": self.snapshot,
                    "error": self.error, "version": self.version, "port": self.port}

    def _set(self, **kw: Any) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, v)
            self.version += 1

    def _loop(self) -> None:
        while time.monotonic() - self.last_read < self.idle_stop:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/stream", timeout=5.0) as resp:
                    self._read(resp)
            except (urllib.error.URLError, OSError, ValueError) as e:
                if self.status == "running":
                    self._set(status="lost", error=str(e)[:200])
            time.sleep(0.5)

    def _read(self, resp: Any) -> None:
        while True:
            line = resp.readline(MAX_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LINE:
                self._set(error="a line over 64 KiB: not a memprof stream")
                return
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if not isinstance(d, dict):
                continue
            kind = d.get("type")
            if kind == "hello":
                hello = {k: (str(d[k])[:500] if k in ("command", "device", "source") else _num(d.get(k)))
                         for k in ("pid", "command", "device", "source", "started") if k in d}
                with self.lock:
                    if self.status in ("done", "error") or self.hello.get("pid") != hello.get("pid"):
                        self.samples.clear()  # a new run on this port
                        self.snapshot = None
                    self.hello, self.status, self.error = hello, "running", ""
                    self.version += 1
            elif kind == "sample":
                s = _clean_sample(d)
                if s is not None:
                    with self.lock:
                        if not self.samples or s["t"] > self.samples[-1]["t"]:
                            self.samples.append(s)
                            self.version += 1
            elif kind == "end":
                snap = d.get("snapshot")
                st = d.get("status")
                self._set(status=st if st in ("done", "ok", "oom", "error") else "done",
                          snapshot=snap[:4096] if isinstance(snap, str) else None)
                return


_FOLLOWERS: dict[int, Follower] = {}
_FLOCK = threading.Lock()


def follow(port: int) -> Follower:
    """The follower of 127.0.0.1:``port`` (started on first use, restarted after it went idle)."""
    if not 0 < int(port) < 65536:
        raise MemprofError(f"port {port}: not a port number")
    with _FLOCK:
        for k in [k for k, v in _FOLLOWERS.items() if not v.thread.is_alive()]:
            del _FOLLOWERS[k]
        f = _FOLLOWERS.get(int(port))
        if f is None:
            if len(_FOLLOWERS) >= MAX_FOLLOWERS:
                raise MemprofError(f"already following {MAX_FOLLOWERS} ports; close a Live page or wait two minutes")
            f = _FOLLOWERS[int(port)] = Follower(int(port))
        return f
