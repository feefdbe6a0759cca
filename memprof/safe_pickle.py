"""A restricted unpickler: snapshot files are untrusted input.

PyTorch snapshots are plain data (dicts, lists, strings, numbers). The C unpickler
builds those without ever consulting ``find_class``; only globals (and persistent
ids) would run code. We refuse every global except the handful that older pickle
protocols use to spell plain containers, so loading is as fast as ``pickle.load``
and nothing in the file can execute.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any, Callable

from memprof.errors import UnsafePickleError


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 spells ``bytes`` as _codecs.encode(str, 'latin1'): allow exactly that.
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise UnsafePickleError("refused _codecs.encode with a non-latin1 codec in pickle")
    return codecs.encode(obj, "latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("_codecs", "encode"): _latin1_encode,
}
# Protocols 0-2 written by Python 3 spell builtins as Python 2's ``__builtin__`` (fix_imports).
_ALLOWED.update({("__builtin__", n): f for (m, n), f in list(_ALLOWED.items()) if m == "builtins"})


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds only dict, list, tuple, set, frozenset, str, bytes, int, float, bool, None."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: a memory snapshot holds only plain data "
                "(is this file a torch.cuda.memory snapshot?)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: a memory snapshot holds only plain data")


def safe_load(fileobj: IO[bytes]) -> Any:
    """Unpickle ``fileobj`` allowing plain data types only."""
    return SafeUnpickler(fileobj).load()
