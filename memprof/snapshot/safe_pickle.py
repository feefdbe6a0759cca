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

from memprof.snapshot import limits as _limits
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


# ---------------------------------------------------------------------------
# Scanning before unpickling
#
# pickle's C unpickler builds whatever the opcodes describe: a tuple nested 130,000 deep (then
# hashed as a dict key: a C stack overflow), a memo of 2^29 slots from one LONG_BINPUT, a string
# of 2^63 bytes. ``scan`` walks the opcodes once without building anything and refuses those
# before :func:`safe_load` runs. It follows the same rules as the C loader (memprof/snapshot/_fastpickle.c,
# ``scan`` and ``load``), which the tests hold it to:
#
# * depth: an empty container is 1 deep; a container is one deeper than its deepest item, as its
#   items are added (a list filled through a memo copy after it was itself added is not
#   revisited: Python's own recursion guard covers lists and dicts; tuples and frozensets, whose
#   hashing has no guard, are built whole and so measured exactly);
# * memo: PUT may store at an index up to the number of slots filled so far (what pickle writes);
# * lengths: a string, bytes or FRAME longer than what is left of ``max_bytes`` is refused, and a
#   FRAME's bytes must all be present;
# * frames, as pickle's pure-Python unpickler reads them: an opcode with its argument lies within
#   one FRAME or wholly after its end, and a FRAME starts only where the previous one ended
#   (pickle's C unpickler would silently skip the rest of a frame instead);
# * memory: 64 bytes per container built, 8 per item added, length + 48 per string, 16 per value
#   on the stack, 8 per memo slot: more than ``max_bytes`` in all is refused.

_NOARG_PUSH0 = frozenset(b"N\x88\x89")
_FIXED_INT = {ord("J"): 4, ord("K"): 1, ord("M"): 2, ord("G"): 8}
_STR_W = {0x8C: 1, ord("X"): 4, 0x8D: 8, ord("C"): 1, ord("B"): 4, 0x8E: 8, 0x96: 8, ord("U"): 1, ord("T"): 4}
C_CONTAINER, C_ITEM, C_STR, C_SLOT, C_MEMO = 64, 8, 48, 16, 8


class _Malformed(Exception):
    pass


class _Input:
    """Buffered reads from a stream, counting what was consumed."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0  # absolute offset of buf[0]
        self.frame_end = -1  # absolute end of the current FRAME, -1 outside one
        self.lim = 0  # reads ending at or before buf[lim] need no check: min(buffer end, frame end)

    def _set_lim(self) -> None:
        self.lim = len(self.buf) if self.frame_end < 0 else min(len(self.buf), self.frame_end - self.base)

    def set_frame(self, end: int) -> None:
        self.frame_end = end
        self._set_lim()

    def frame_check(self, n: int) -> None:
        """An opcode and its argument lie within one FRAME, or wholly after its end."""
        at = self.base + self.pos
        if at == self.frame_end:
            self.frame_end = -1
            self._set_lim()
        elif at + n > self.frame_end:
            raise _Malformed("an opcode runs past the end of its FRAME")

    def need(self, n: int) -> None:
        if len(self.buf) - self.pos >= n:
            return
        rest = self.buf[self.pos :]
        self.base += self.pos
        chunks = [rest]
        have = len(rest)
        while have < n:
            c = self.f.read(max(n - have, 1 << 20))
            if not c:
                self.buf, self.pos = b"".join(chunks), 0
                raise _Malformed("unexpected end of data")
            chunks.append(c)
            have += len(c)
        self.buf, self.pos = b"".join(chunks), 0
        self._set_lim()

    def take(self, n: int) -> bytes:
        p = self.pos
        e = p + n
        if e <= self.lim:  # the common case: in the buffer and in the frame
            self.pos = e
            return self.buf[p:e]
        if self.frame_end >= 0:
            self.frame_check(n)
        self.need(n)
        p = self.pos
        self.pos = p + n
        return self.buf[p : p + n]

    def skip(self, n: int) -> None:
        """Advance past n bytes without keeping them (a long string streams through)."""
        if self.frame_end >= 0:
            self.frame_check(n)
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return
        n -= avail
        self.base += len(self.buf)
        self.buf, self.pos = b"", 0
        self._set_lim()
        while n > 0:
            c = self.f.read(min(n, 1 << 24))
            if not c:
                raise _Malformed("unexpected end of data")
            n -= len(c)
            self.base += len(c)

    def line(self) -> bytes:
        if self.frame_end >= 0:
            self.frame_check(1)
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                if self.frame_end >= 0 and self.base + i + 1 > self.frame_end:
                    raise _Malformed("an opcode runs past the end of its FRAME")
                out = self.buf[self.pos : i]
                self.pos = i + 1
                return out
            self.need(len(self.buf) - self.pos + 1)

    @property
    def offset(self) -> int:
        return self.base + self.pos


def scan(f: IO[bytes], source: str = "", max_bytes: int | None = None, max_depth: int | None = None) -> None:
    """Walk a pickle's opcodes without building anything; raise if it breaks a limit.

    Raises :class:`~memprof.snapshot.limits.LimitError` for a limit, :class:`UnsafePickleError` for
    persistent ids, extension codes and out-of-band buffers, ``pickle.UnpicklingError`` for a
    malformed stream. Stops at the first STOP.
    """
    max_bytes = _limits.max_bytes() if max_bytes is None else max_bytes
    max_depth = _limits.max_depth() if max_depth is None else max_depth
    try:
        _scan(_Input(f), source, max_bytes, max_depth)
    except _Malformed as e:
        raise pickle.UnpicklingError(str(e)) from None


def _scan(inp: _Input, source: str, max_bytes: int, max_depth: int) -> None:
    stack: list[int] = []
    marks: list[int] = []
    memo: list[int] = []
    cost = 0
    ops = 0

    def too_deep(d: int) -> None:
        raise _limits.limit_error("depth", _at(source, "a container"))

    def pop_mark() -> int:
        if not marks:
            raise _Malformed("could not find MARK")
        m = marks.pop()
        if m > len(stack):
            raise _Malformed("MARK above the stack")
        return m

    def over_memory() -> None:
        est = cost + C_SLOT * len(stack) + C_MEMO * len(memo)
        if est > max_bytes:
            raise _limits.limit_error("memory", _at(source, f"building it needs more than {est} bytes"), limit=max_bytes)

    def length_ok(n: int, what: str) -> None:
        if n > max_bytes - inp.offset:
            raise _limits.limit_error("bytes", _at(source, f"a {what} of {n} bytes"), limit=max_bytes)

    while True:
        ops += 1
        if not ops & 0xFFF:
            over_memory()
        p = inp.pos
        if p < inp.lim:
            op = inp.buf[p]
            inp.pos = p + 1
        else:
            op = inp.take(1)[0]
        if op in _NOARG_PUSH0:
            stack.append(0)
        elif op == 0x94:  # MEMOIZE
            if not stack:
                raise _Malformed("MEMOIZE on an empty stack")
            memo.append(stack[-1])
        elif op == 0x28:  # MARK
            marks.append(len(stack))
        elif op in (0x7D, 0x5D, 0x29, 0x8F):  # EMPTY_DICT/LIST/TUPLE/SET
            stack.append(1)
            cost += C_CONTAINER
        elif op == 0x68:  # BINGET (the most common opcode of a snapshot)
            p = inp.pos
            if p < inp.lim:
                idx = inp.buf[p]
                inp.pos = p + 1
            else:
                idx = inp.take(1)[0]
            if idx >= len(memo):
                raise _Malformed("memo key not found")
            stack.append(memo[idx])
        elif op == 0x6A:  # LONG_BINGET
            idx = int.from_bytes(inp.take(4), "little")
            if idx >= len(memo):
                raise _Malformed("memo key not found")
            stack.append(memo[idx])
        elif op in (0x71, 0x72):  # BINPUT / LONG_BINPUT
            idx = int.from_bytes(inp.take(1 if op == 0x71 else 4), "little")
            _memo_put(stack, memo, idx, source)
        elif op in _STR_W:
            w = _STR_W[op]
            n = int.from_bytes(inp.take(w), "little", signed=op == 0x54)
            if n < 0:
                raise _Malformed("negative byte count")
            length_ok(n, "string")
            if op in (0x8C, 0x58, 0x8D):  # text is decoded as pickle does
                inp.take(n).decode("utf-8", "surrogatepass")
            elif op in (0x55, 0x54):
                inp.take(n).decode("ascii")
            else:
                inp.skip(n)
            cost += n + C_STR
            stack.append(0)
            if n > 1 << 16:
                over_memory()
        elif op in _FIXED_INT:
            inp.take(_FIXED_INT[op])
            stack.append(0)
        elif op == 0x73 and len(stack) >= 3 and not (marks and marks[-1] > len(stack) - 3):  # SETITEM
            v, k = stack.pop(), stack.pop()
            d = (v if v > k else k) + 1
            if d > stack[-1]:
                if d > max_depth:
                    too_deep(d)
                stack[-1] = d
            cost += 2 * C_ITEM
        elif op == 0x61 and len(stack) >= 2 and not (marks and marks[-1] > len(stack) - 2):  # APPEND
            d = stack.pop() + 1
            if d > stack[-1]:
                if d > max_depth:
                    too_deep(d)
                stack[-1] = d
            cost += C_ITEM
        elif op in (0x61, 0x65, 0x73, 0x75, 0x90):  # APPEND, APPENDS, SETITEM, SETITEMS, ADDITEMS
            if op == 0x61:
                lo = len(stack) - 1
                if lo < 1 or (marks and marks[-1] > lo - 1):
                    raise _Malformed("APPEND without a list")
            elif op == 0x73:
                lo = len(stack) - 2
                if lo < 1 or (marks and marks[-1] > lo - 1):
                    raise _Malformed("SETITEM without a dict")
            else:
                lo = pop_mark()
                if lo < 1:
                    raise _Malformed("no container for APPENDS/SETITEMS")
            if op in (0x73, 0x75) and (len(stack) - lo) % 2:
                raise _Malformed("odd number of items for SETITEMS")
            items = stack[lo:]
            del stack[lo:]
            if items:
                d = max(items) + 1
                if d > stack[-1]:
                    if d > max_depth:
                        too_deep(d)
                    stack[-1] = d
                cost += C_ITEM * len(items)
        elif op in (0x85, 0x86, 0x87, 0x74, 0x6C, 0x64, 0x91):  # TUPLE1-3, TUPLE, LIST, DICT, FROZENSET
            if op in (0x85, 0x86, 0x87):
                lo = len(stack) - (op - 0x84)
                if lo < 0 or (marks and marks[-1] > lo):
                    raise _Malformed("not enough values for TUPLEn")
            else:
                lo = pop_mark()
            items = stack[lo:]
            del stack[lo:]
            if op == 0x64 and len(items) % 2:
                raise _Malformed("odd number of items for DICT")
            d = max(items) + 1 if items else 1
            if d > max_depth:
                too_deep(d)
            stack.append(d)
            cost += C_CONTAINER + C_ITEM * len(items)
        elif op == 0x95:  # FRAME
            n = int.from_bytes(inp.take(8), "little")
            length_ok(n, "FRAME")
            if inp.frame_end >= 0 and inp.offset != inp.frame_end:
                raise _Malformed("a FRAME inside a FRAME")
            inp.need(n)
            inp.set_frame(inp.offset + n)
        elif op == 0x80:  # PROTO
            inp.take(1)
        elif op == 0x8A:  # LONG1
            n = inp.take(1)[0]
            inp.take(n)
            stack.append(0)
        elif op == 0x8B:  # LONG4
            n = int.from_bytes(inp.take(4), "little", signed=True)
            if n < 0:
                raise _Malformed("LONG pickle has negative byte count")
            length_ok(n, "LONG")
            inp.need(n)
            inp.take(n)
            cost += n + C_STR
            stack.append(0)
        elif op == 0x2E:  # STOP
            if not stack:
                raise _Malformed("STOP on an empty stack")
            over_memory()
            return
        elif op == 0x30:  # POP
            if marks and marks[-1] == len(stack):
                marks.pop()
            elif stack:
                stack.pop()
            else:
                raise _Malformed("POP on an empty stack")
        elif op == 0x31:  # POP_MARK
            del stack[pop_mark() :]
        elif op == 0x32:  # DUP
            if not stack:
                raise _Malformed("DUP on an empty stack")
            stack.append(stack[-1])
        elif op in (0x49, 0x4C, 0x46, 0x53, 0x56):  # INT, LONG, FLOAT, STRING, UNICODE (text lines)
            n = len(inp.line())
            cost += n + C_STR if op in (0x53, 0x56) else 0
            stack.append(0)
        elif op in (0x70, 0x67):  # PUT / GET (text)
            text = inp.line()
            if not text.isdigit():
                raise _Malformed("bad memo index")
            idx = int(text)
            if op == 0x70:
                _memo_put(stack, memo, idx, source)
            else:
                if idx >= len(memo):
                    raise _Malformed("memo key not found")
                stack.append(memo[idx])
        elif op == 0x63:  # GLOBAL: the unpickler's find_class decides
            inp.line()
            inp.line()
            stack.append(0)
        elif op == 0x93:  # STACK_GLOBAL
            if len(stack) < 2:
                raise _Malformed("STACK_GLOBAL needs two values")
            del stack[-2:]
            stack.append(0)
        elif op in (0x52, 0x81):  # REDUCE, NEWOBJ: callable/class and args -> one value as deep as the args
            if len(stack) < 2:
                raise _Malformed("REDUCE needs two values")
            d = stack.pop()
            stack[-1] = d
            cost += C_CONTAINER
        elif op == 0x92:  # NEWOBJ_EX
            if len(stack) < 3:
                raise _Malformed("NEWOBJ_EX needs three values")
            d = max(stack[-1], stack[-2])
            del stack[-3:]
            stack.append(d)
            cost += C_CONTAINER
        elif op == 0x62:  # BUILD
            if len(stack) < 2:
                raise _Malformed("BUILD needs two values")
            d = stack.pop() + 1
            if d > max_depth:
                too_deep(d)
            stack[-1] = max(stack[-1], d)
        elif op in (0x69, 0x6F):  # INST, OBJ
            if op == 0x69:
                inp.line()
                inp.line()
            lo = pop_mark()
            items = stack[lo:]
            del stack[lo:]
            if op == 0x6F and not items:
                raise _Malformed("OBJ without a class")
            stack.append(max(items, default=0) + 1)
            cost += C_CONTAINER
        elif op in (0x50, 0x51):
            raise UnsafePickleError("refused a persistent id: a memory snapshot holds only plain data")
        elif op in (0x82, 0x83, 0x84):
            raise UnsafePickleError("refused an extension code: a memory snapshot holds only plain data")
        elif op in (0x97, 0x98):
            raise UnsafePickleError("refused out-of-band buffers: a memory snapshot holds only plain data")
        else:
            raise _Malformed(f"invalid opcode 0x{op:02x}")


def _memo_put(stack: list[int], memo: list[int], idx: int, source: str) -> None:
    if not stack:
        raise _Malformed("PUT on an empty stack")
    if idx < len(memo):
        memo[idx] = stack[-1]
    elif idx == len(memo):
        memo.append(stack[-1])
    else:
        raise _limits.limit_error("memo", _at(source, f"memo index {idx} after {len(memo)} entries"))


def _at(source: str, detail: str) -> str:
    return f"{source}: {detail}" if source else detail
