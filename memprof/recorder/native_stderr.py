"""Keep torch's native log noise out of the terminal while recording, and say once what mattered.

torch.profiler (used for every CPU recording and for the GPU-busy profile) writes straight to
file descriptor 2 from C++: a ``USDT: ... profiler_start`` / ``profiler_stop`` line each time it
starts or stops, and on CPU one ``[W... CPUAllocator.cpp:NNN] Memory block of unknown size was
allocated before the profiling started ...`` warning for every free of a block allocated before
it started. Python cannot catch those, so :class:`NativeStderrFilter` points fd 2 at a pipe for
the duration, forwards everything else (progress bars, the user's own output) to the real stderr
as it comes, and counts the noise. Only the counts are kept; :meth:`NativeStderrFilter.note`
turns them into one line.

No torch import here: this sits between the CLI and the recorder.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

#: (kind, pattern) of native lines that are dropped and counted; a pattern runs to the end of its line
#: and may start mid-line (right after a progress bar drawn without a newline).
NOISE = (
    ("profiler_start_stop", re.compile(r"USDT:.*profiler_(start|stop)\s*$")),
    ("unknown_size_frees", re.compile(r"\[W\d{4} [^\]]*CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated before.*$")),
)
_STARTS = ("USDT:", "[W")  # where a noise line can begin: an unterminated tail from here on is held back


class NativeStderrFilter:
    """Context manager: fd 2 -> pipe -> filter thread -> the original stderr.

    ``counts`` maps each :data:`NOISE` kind to how many lines were dropped. Segments are split on
    ``\\n`` and ``\\r`` (tqdm redraws with ``\\r``), so a noise line written right after a progress
    bar is still recognised. Disabled (a no-op) when fd 2 cannot be duplicated.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {k: 0 for k, _ in NOISE}
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NativeStderrFilter":
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            r, w = os.pipe()
        except (OSError, ValueError, AttributeError):
            self._saved = None
            return self
        os.dup2(w, 2)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, args=(r,), name="memprof-stderr", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._saved)
        self._saved = None

    def _write(self, text: str) -> None:
        if text and self._saved is not None:
            data = text.encode("utf-8", "replace")
            while data:
                try:
                    n = os.write(self._saved, data)
                except OSError:
                    return
                data = data[n:]

    def _keep(self, seg: str, sep: str) -> str:
        """What of one complete segment (and its separator) goes through: the noise (with its newline) is cut."""
        for kind, pat in NOISE:
            m = pat.search(seg)
            if m:
                self.counts[kind] += 1
                return seg[: m.start()]
        return seg + sep

    def _pump(self, r: int) -> None:
        pending = ""
        with os.fdopen(r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                pending += chunk.decode("utf-8", "replace")
                done, pending = _segments(pending)
                out = [self._keep(seg, sep) for seg, sep in done]
                hold = _hold_from(pending)
                out.append(pending[:hold])  # a progress bar being drawn: show it now
                pending = pending[hold:]
                self._write("".join(out))
        if pending:
            self._write(self._keep(pending, ""))

    def note(self) -> str | None:
        """One line saying what the dropped noise meant, or None when there was none."""
        n = self.counts["unknown_size_frees"]
        if n:
            return (f"memprof: note: torch.profiler reported {n:,} free(s) of CPU blocks allocated before it started, without their size "
                    f"({n:,} warning(s) hidden); memprof tracks the tensors alive at the start itself")
        return None


def _segments(text: str) -> tuple[list[tuple[str, str]], str]:
    """``text`` split into complete (segment, separator) pairs and the unterminated rest."""
    parts = re.split(r"([\r\n])", text)
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)], parts[-1]


def _hold_from(tail: str) -> int:
    """Where in an unterminated ``tail`` a noise line may have begun (``len(tail)``: nowhere)."""
    at = [i for i in (tail.find(m) for m in _STARTS) if i >= 0]
    for m in _STARTS:  # ... or is beginning at the very end ("US", "[")
        for k in range(len(m) - 1, 0, -1):
            if tail.endswith(m[:k]):
                at.append(len(tail) - k)
                break
    return min(at) if at else len(tail)
