"""One escaping function for every string that came from a snapshot file and reaches a terminal.

A file can hold any bytes in a frame's name, a global's name or a key. Printed raw, control
characters (ESC sequences, carriage returns, newlines, bidi overrides) let the file rewrite what
the user sees: erase memprof's error and print "memprof: OK, snapshot is clean" in its place.
:func:`printable` shows each such character as a visible escape (``\\x1b``, ``\\n``,
``\\u202e``) and leaves every other character as it is.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: Any, keep_lines: bool = False) -> str:
    """``text`` with control characters escaped; with ``keep_lines``, newlines and tabs pass.

    A container is not text: TypeError (its repr would differ with how it was loaded).
    """
    if isinstance(text, (list, tuple, dict, set, frozenset)):
        raise TypeError(f"expected text, found a {type(text).__name__}")
    s = text if isinstance(text, str) else str(text)
    pat = _CONTROL_KEEP_LINES if keep_lines else _CONTROL
    return pat.sub(_visible, s) if pat.search(s) else s


class EscapingWriter:
    """A text stream that writes through :func:`printable` (newlines and tabs kept): the CLI's stdout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, s: str) -> int:
        if not isinstance(s, str):  # a text stream, as sys.stdout is: click probes with write(b"")
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._stream.write(printable(s, keep_lines=True))
        return len(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
