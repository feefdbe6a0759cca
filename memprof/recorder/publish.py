"""Live view, the publisher side: the recording process serves its memory counters on 127.0.0.1.

The protocol (``/stream``, ``/live.json``, the sample's fields) and the follower that
``memprof serve`` runs are in :mod:`memprof.live`; this module samples the device and serves.
"""


from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from memprof.errors import MemprofError
from memprof.live import DEFAULT_PORT, HISTORY, HOST, MAX_STREAMS

#: The running publisher of this process, or None. The recorder's phase timer reads this once per
#: phase; when it is None (live view off) nothing else happens.
ACTIVE: "Publisher | None" = None


# -- reading the device's counters ---------------------------------------------------------------

def counter_reader(device: Any) -> tuple[Callable[[], tuple[int, int | None]], str]:
    """(read() -> (allocated, reserved), source) for a torch.device."""
    import torch

    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        raw = getattr(torch._C, "_cuda_memoryStats", None)  # one call, no flattening of ~150 keys

        def read_cuda() -> tuple[int, int | None]:
            if raw is not None:
                s = raw(idx)
                return int(s["allocated_bytes"]["all"]["current"]), int(s["reserved_bytes"]["all"]["current"])
            s = torch.cuda.memory_stats(idx)
            return int(s.get("allocated_bytes.all.current", 0)), int(s.get("reserved_bytes.all.current", 0))

        return read_cuda, "cuda caching allocator"
    if device.type == "mps":
        return (lambda: (int(torch.mps.current_allocated_memory()), int(torch.mps.driver_allocated_memory()))), "mps allocator"
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def read_rss() -> tuple[int, int | None]:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page, None
        except (OSError, IndexError, ValueError):
            import resource  # no /proc (macOS): the peak RSS, in bytes there, KiB elsewhere

            rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            return (rss if sys.platform == "darwin" else rss * 1024), None

    return read_rss, "process rss (cpu has no allocator counter)"


# -- publisher -------------------------------------------------------------------------------------

class Publisher:
    """Samples a device's memory at ``hz`` and serves the stream on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(self, device: Any, port: int = DEFAULT_PORT, hz: float = 4.0, command: str = "",
                 iteration: Callable[[], int | None] | None = None) -> None:
        self.read, self.source = counter_reader(device)
        self.iteration = iteration  # the active recording's iteration, when no phase says it
        self.period = 1.0 / max(float(hz), 0.1)
        self.hello = {"type": "hello", "pid": os.getpid(), "command": command or " ".join(sys.argv),
                      "device": str(device), "source": self.source, "started": time.time(), "hz": float(hz)}
        self.samples: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.seq = 0
        self.end: dict[str, Any] | None = None
        self.cond = threading.Condition()
        self.streams = 0  # followers connected to /stream now
        # phase bookkeeping (written by the recording thread, read by the sampler)
        self._open: list[tuple[str, int | None, int]] = []
        self._it: int | None = None
        self._it_start: int | None = None
        self._growth: dict[str, int] = {}
        self._last_growth: list[dict[str, Any]] = []
        self._last_it_growth: int | None = None
        try:
            self.server = ThreadingHTTPServer((HOST, port), _handler(self))
        except OSError as e:
            raise MemprofError(f"live view: cannot listen on {HOST}:{port} ({e.strerror or e}); choose another with --live-port") from None
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True, name="memprof-live-http"),
                         threading.Thread(target=self._sample_loop, daemon=True, name="memprof-live-sampler")]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> "Publisher":
        global ACTIVE
        for t in self._threads:
            t.start()
        ACTIVE = self
        return self

    # phase hooks: called by memprof.recorder.core.PhaseTimer while this publisher is ACTIVE
    def enter(self, name: str, iteration: int | None) -> None:
        a = self.read()[0]
        if iteration != self._it:
            if self._it is not None and self._it_start is not None:
                self._last_growth = [{"phase": k, "bytes": v} for k, v in sorted(self._growth.items(), key=lambda kv: -abs(kv[1]))[:5]]
                self._last_it_growth = a - self._it_start
            self._it, self._it_start, self._growth = iteration, a, {}
        self._open.append((name, iteration, a))

    def exit(self, name: str, iteration: int | None) -> None:
        a = self.read()[0]
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == name:
                _, _, a0 = self._open.pop(i)
                self._growth[name] = self._growth.get(name, 0) + (a - a0)
                break

    def sample(self) -> dict[str, Any]:
        allocated, reserved = self.read()
        top = self._open[-1] if self._open else None
        phase, it = (top[0], top[1]) if top else (None, self._it)
        if it is None and self.iteration is not None:  # user loops that call rec.step() without phases
            it = self.iteration()
        return {"type": "sample", "t": time.time(), "allocated": allocated, "reserved": reserved, "phase": phase,
                "iteration": it, "growth": list(self._last_growth), "iteration_growth": self._last_it_growth}

    def _publish(self, msg: dict[str, Any]) -> None:
        with self.cond:
            if msg.get("type") == "sample":
                self.samples.append(msg)
            self.seq += 1
            self.cond.notify_all()

    def _sample_loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            try:
                self._publish(self.sample())
            except Exception:  # noqa: BLE001 - a failed read must never disturb the training process
                pass
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def stop(self, status: str = "done", snapshot: str | None = None, linger: float = 1.0) -> None:
        """Publish the last sample and the ``end`` line, let followers read it, then close the port."""
        global ACTIVE
        if ACTIVE is self:
            ACTIVE = None
        self._stop.set()
        try:
            self._publish(self.sample())
        except Exception:  # noqa: BLE001
            pass
        with self.cond:
            self.end = {"type": "end", "status": status, "snapshot": os.path.abspath(snapshot) if snapshot else None, "t": time.time()}
            self.seq += 1
            self.cond.notify_all()
        deadline = time.monotonic() + linger
        while self.streams and time.monotonic() < deadline:  # followers still reading: give them the end line
            time.sleep(0.02)
        if self._threads[0].is_alive():
            self.server.shutdown()
        self.server.server_close()

    def state(self) -> dict[str, Any]:
        with self.cond:
            return {**self.hello, "type": "state", "status": self.end["status"] if self.end else "running",
                    "snapshot": self.end["snapshot"] if self.end else None, "samples": list(self.samples)[-240:]}


def _handler(pub: Publisher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:  # quiet: this runs inside someone's training job
            pass

        def _head(self, ctype: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] in ("/", "/live.json"):
                body = json.dumps(pub.state()).encode()
                self._head("application/json")
                self.wfile.write(body)
            elif self.path.split("?")[0] == "/stream":
                self._stream()
            else:
                self.send_error(404)

        def _stream(self) -> None:
            with pub.cond:
                busy = pub.streams >= MAX_STREAMS
                if not busy:
                    pub.streams += 1
            if busy:  # each follower is a thread in someone's training process: a few at most
                self.send_error(503, "too many followers")
                return
            try:
                self._head("application/x-ndjson")
                self.wfile.write((json.dumps(pub.hello) + "\n").encode())
                with pub.cond:
                    backlog, seq = list(pub.samples), pub.seq
                for s in backlog:
                    self.wfile.write((json.dumps(s) + "\n").encode())
                self.wfile.flush()
                while True:
                    with pub.cond:
                        pub.cond.wait_for(lambda: pub.seq != seq, timeout=1.0)
                        fresh = pub.seq != seq
                        seq = pub.seq
                        last, end = (pub.samples[-1] if pub.samples else None), pub.end
                    if fresh and last is not None:
                        self.wfile.write((json.dumps(last) + "\n").encode())
                    if end is not None:
                        self.wfile.write((json.dumps(end) + "\n").encode())
                        self.wfile.flush()
                        return
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return
            finally:
                with pub.cond:
                    pub.streams -= 1

    return Handler


def start(device: Any, port: int = DEFAULT_PORT, hz: float = 4.0, command: str = "", announce: bool = True,
          iteration: Callable[[], int | None] | None = None) -> Publisher:
    """Start publishing (one publisher per process; under torchrun, rank R on ``port + R``);
    prints where to follow it on stderr."""
    if ACTIVE is not None:
        raise MemprofError(f"live view already publishing on {ACTIVE.url}")
    rank = os.environ.get("RANK", "")
    if port and rank.isdigit() and os.environ.get("WORLD_SIZE"):
        port += int(rank)  # under torchrun every rank publishes: rank R on port + R
    pub = Publisher(device, port, hz, command, iteration).start()
    if announce:
        print(f"memprof: live on {pub.url}stream (follow it in `memprof serve`, page Live, port {pub.port})", file=sys.stderr, flush=True)
    return pub
