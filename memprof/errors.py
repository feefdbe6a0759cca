"""The one error type users see: a short message and an exit code, never a traceback."""

from __future__ import annotations


class MemprofError(Exception):
    """A problem the user can act on. The CLI prints ``memprof: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UnsafePickleError(MemprofError):
    """The file asked the unpickler to build something other than plain data."""
