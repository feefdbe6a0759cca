"""Dash DataTable ``filter_query`` strings, parsed in linear time and applied to a DataFrame.

The grammar is the one dash-table's own client-side filter understands (its lexicons
``dash-table/src/dash-table/syntax-tree/lexicon/query.ts`` and ``lexeme/*.ts``):

    query      := or
    or         := and (('||' | 'or ') and)*
    and        := not (('&&' | 'and ') not)*
    not        := '!' not | '(' or ')' | clause
    clause     := operand relop operand | operand unary
    operand    := '{field}' | 'string' | "string" | `string` | value
    relop      := [i|s]? ( '=' | 'eq' | '!=' | 'ne' | '<' | 'lt' | '<=' | 'le' | '>' | 'gt' | '>=' | 'ge' | 'contains' )
                | 'datestartswith'
    unary      := 'is blank' | 'is nil' | 'is num' | 'is str' | 'is bool' | 'is even' | 'is odd' | 'is prime' | 'is object'

``s`` compares case-sensitively (the table's default), ``i`` case-insensitively. Fields and
strings take backslash escapes. A per-column filter cell sends e.g. ``{size} s> "50 MiB"``
(values with spaces are quoted) and several cells are joined with `` && ``.

Beyond dash-table: byte columns (``byte_columns``) take units on numbers — ``50 MiB``,
``1.5GB``, ``512 B`` (KiB/MiB/GiB/TiB are powers of 1024, kB/MB/GB/TB of 1000). Where
dash-table would quietly match nothing, the query is refused with a message instead:
``contains`` on a numeric column, a word compared with a number, a unit on a non-byte column.

The scanner is a single left-to-right pass with no regular expressions and no
backtracking, and the input is bounded (:data:`MAX_QUERY_CHARS`, :data:`MAX_CLAUSES`,
:data:`MAX_DEPTH`), so any query is answered, or refused with a :class:`FilterError`, in
time linear in its length. Evaluation is one vectorised mask per clause, text columns factorised
once per query, so the largest accepted query over a million rows takes about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import numpy as np
import pandas as pd

from memprof.units import UNITS  # the one size grammar
from memprof.errors import MemprofError

MAX_QUERY_CHARS = 4000
MAX_CLAUSES = 64
MAX_DEPTH = 16
MAX_PRIME_DISTINCT = 200_000


_WORD_OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_UNARY = ("blank", "nil", "num", "str", "bool", "even", "odd", "prime", "object")
_VALUE_STOP = set(" \t\r\n\f\v'\"`{}()\\")


class FilterError(MemprofError):
    """A filter the table cannot apply; the message says where and why."""


# ---------------------------------------------------------------------------
# Tokens and tree


@dataclass(frozen=True)
class Tok:
    kind: str  # field, str, value, op, unary, and, or, not, (, )
    text: str
    pos: int
    unit: str | None = None  # a number's unit word ('50 MiB')
    case: str = "s"  # a relational operator's case: 's' sensitive, 'i' insensitive


@dataclass(frozen=True)
class Operand:
    kind: str  # field, str, value
    text: str
    unit: str | None = None


@dataclass(frozen=True)
class Clause:
    left: Operand
    op: str  # '=', '!=', '<', '<=', '>', '>=', 'contains', 'datestartswith', or 'is <name>'
    right: Operand | None
    case: str  # 's' (sensitive) or 'i'


@dataclass(frozen=True)
class Not:
    arg: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: str  # 'and' | 'or'
    args: tuple["Node", ...]


Node = Union[Clause, Not, BoolOp]


def _is_ws(c: str) -> bool:
    return c in " \t\r\n\f\v"


def _word_at(q: str, i: int, word: str) -> bool:
    """``word`` (case-insensitive) at ``i``, followed by whitespace, ``(``/``)`` or the end."""
    j = i + len(word)
    return q[i:j].lower() == word and (j == len(q) or _is_ws(q[j]) or q[j] in "()")


def _read_quoted(q: str, i: int, close: str) -> tuple[str, int]:
    """Text between ``q[i]`` (an opening quote or brace) and ``close``, unescaped; index after it."""
    out: list[str] = []
    j = i + 1
    n = len(q)
    while j < n:
        c = q[j]
        if c == "\\" and j + 1 < n:
            out.append(q[j + 1])
            j += 2
            continue
        if c == close:
            return "".join(out), j + 1
        if close == "}" and c == "{":
            break
        out.append(c)
        j += 1
    what = "field name" if close == "}" else "string"
    raise FilterError(f"filter: unterminated {what} starting at character {i + 1}")


def _read_op(q: str, i: int) -> tuple[str, str, int] | None:
    """A relational operator at ``i``: (operator, case, index after) or None."""
    case = "s"
    j = i
    if q[j:j + 1].lower() in ("i", "s") and j + 1 < len(q):
        nxt = q[j + 1]
        if nxt in "=<>!" or _word_at(q, j + 1, "contains") or any(_word_at(q, j + 1, w) for w in _WORD_OPS):
            case = q[j].lower()
            j += 1
    for sym in ("<=", ">=", "!=", "=", "<", ">"):
        if q.startswith(sym, j):
            return sym, case, j + len(sym)
    for w, sym in _WORD_OPS.items():
        if _word_at(q, j, w):
            return sym, case, j + len(w)
    if _word_at(q, j, "contains"):
        return "contains", case, j + len("contains")
    if j == i and _word_at(q, i, "datestartswith"):
        return "datestartswith", "s", i + len("datestartswith")
    return None


def tokenize(query: str) -> list[Tok]:
    """Split a filter query into tokens in one pass (linear in ``len(query)``)."""
    if len(query) > MAX_QUERY_CHARS:
        raise FilterError(f"filter: too long ({len(query):,} characters; at most {MAX_QUERY_CHARS:,})")
    toks: list[Tok] = []
    q, n, i = query, len(query), 0
    # what may come next: an operand (start, after a logical/relational operator, '(' or '!')
    # or an operator (after an operand, a unary test or ')')
    while True:
        while i < n and _is_ws(q[i]):
            i += 1
        if i >= n:
            return toks
        c = q[i]
        prev = toks[-1].kind if toks else None
        want_operand = prev in (None, "and", "or", "op", "(", "not")
        if want_operand:
            if c == "(" and prev != "op":
                toks.append(Tok("(", c, i))
                i += 1
            elif c == "!" and prev != "op" and not q.startswith("!=", i):
                toks.append(Tok("not", c, i))
                i += 1
            elif c == "{":
                text, i2 = _read_quoted(q, i, "}")
                if not text:
                    raise FilterError(f"filter: empty field name at character {i + 1}")
                toks.append(Tok("field", text, i))
                i = i2
            elif c in "'\"`":
                text, i2 = _read_quoted(q, i, c)
                toks.append(Tok("str", text, i))
                i = i2
            elif c in "})":
                raise FilterError(f"filter: unexpected {c!r} at character {i + 1}")
            else:
                j = i
                out: list[str] = []
                while j < n:
                    if q[j] == "\\" and j + 1 < n:
                        out.append(q[j + 1])
                        j += 2
                    elif q[j] in _VALUE_STOP:
                        break
                    else:
                        out.append(q[j])
                        j += 1
                if not out:
                    raise FilterError(f"filter: expected a value at character {i + 1}")
                text = "".join(out)
                unit = None
                if _number(text) is not None:
                    # a number followed by a unit word: '50 MiB'
                    k = j
                    while k < n and _is_ws(q[k]):
                        k += 1
                    m = k
                    while m < n and q[m].isalpha():
                        m += 1
                    if m > k and q[k:m].lower() in UNITS and (m == n or _is_ws(q[m]) or q[m] == ")"):
                        unit, j = q[k:m], m
                toks.append(Tok("value", text, i, unit))
                i = j
        else:
            if c == ")":
                toks.append(Tok(")", c, i))
                i += 1
            elif q.startswith("&&", i) or _word_at(q, i, "and"):
                toks.append(Tok("and", "&&", i))
                i += 2 if c == "&" else 3
            elif q.startswith("||", i) or _word_at(q, i, "or"):
                toks.append(Tok("or", "||", i))
                i += 2
            elif prev in ("field", "str", "value") and (len(toks) < 2 or toks[-2].kind != "op"):
                if _word_at(q, i, "is"):
                    j = i + 2
                    while j < n and _is_ws(q[j]):
                        j += 1
                    name = next((u for u in _UNARY if _word_at(q, j, u)), None)
                    if name is None:
                        raise FilterError(f"filter: unknown test after 'is' at character {j + 1} "
                                          f"(one of: {', '.join('is ' + u for u in _UNARY)})")
                    toks.append(Tok("unary", name, i))
                    i = j + len(name)
                    continue
                got = _read_op(q, i)
                if got is None:
                    raise FilterError(f"filter: expected an operator at character {i + 1}, found {_show(q, i)}")
                op, case, i2 = got
                toks.append(Tok("op", op, i, case=case))
                i = i2
            else:
                raise FilterError(f"filter: expected '&&', '||' or ')' at character {i + 1}, found {_show(q, i)}")


def _show(q: str, i: int) -> str:
    s = q[i:i + 12]
    return repr(s + ("…" if len(q) > i + 12 else ""))


class _Parser:
    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.clauses = 0

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def parse(self) -> Node | None:
        if not self.toks:
            return None
        node = self.or_(0)
        t = self.peek()
        if t is not None:
            raise FilterError(f"filter: unexpected {t.text!r} at character {t.pos + 1}")
        return node

    def or_(self, depth: int) -> Node:
        args = [self.and_(depth)]
        while (t := self.peek()) is not None and t.kind == "or":
            self.i += 1
            args.append(self.and_(depth))
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_(self, depth: int) -> Node:
        args = [self.not_(depth)]
        while (t := self.peek()) is not None and t.kind == "and":
            self.i += 1
            args.append(self.not_(depth))
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FilterError(f"filter: nested too deeply (at most {MAX_DEPTH} levels of '(' and '!')")
        t = self.peek()
        if t is None:
            raise FilterError("filter: ends where a condition was expected")
        if t.kind == "not":
            self.i += 1
            return Not(self.not_(depth + 1))
        if t.kind == "(":
            self.i += 1
            node = self.or_(depth + 1)
            close = self.peek()
            if close is None or close.kind != ")":
                raise FilterError(f"filter: '(' at character {t.pos + 1} is never closed")
            self.i += 1
            return node
        return self.clause()

    def clause(self) -> Clause:
        left = self.operand()
        t = self.peek()
        if t is None:
            raise FilterError(f"filter: '{left.text}' needs an operator and a value")
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise FilterError(f"filter: too many conditions (at most {MAX_CLAUSES})")
        if t.kind == "unary":
            self.i += 1
            return Clause(left, "is " + t.text, None, "s")
        if t.kind != "op":
            raise FilterError(f"filter: expected an operator at character {t.pos + 1}")
        self.i += 1
        if self.peek() is None:
            raise FilterError(f"filter: '{t.text}' at character {t.pos + 1} has no value after it")
        right = self.operand()
        return Clause(left, t.text, right, t.case)

    def operand(self) -> Operand:
        t = self.peek()
        if t is None or t.kind not in ("field", "str", "value"):
            where = f"at character {t.pos + 1}" if t else "at the end"
            raise FilterError(f"filter: expected a column or a value {where}")
        self.i += 1
        return Operand(t.kind, t.text, t.unit)


def parse(query: str | None) -> Node | None:
    """The syntax tree of a filter query (``None`` for an empty one); :class:`FilterError` when invalid."""
    if query is None:
        return None
    if not isinstance(query, str):
        raise FilterError("filter: the query must be text")
    return _Parser(tokenize(query)).parse()


# ---------------------------------------------------------------------------
# Values


def _number(text: str) -> float | None:
    """A number as fast-isnumeric reads one (decimal, exponent, 0x hex), else None."""
    t = text.strip()
    if not t or len(t) > 64:
        return None
    try:
        if t.lower().startswith(("0x", "-0x", "+0x")):
            return float(int(t, 16))
        v = float(t)
    except ValueError:
        return None
    return v if t.lower().lstrip("+-") not in ("inf", "infinity", "nan") else None


def byte_count(text: str, unit: str | None = None) -> float | None:
    """``'50 MiB'`` / ``'1.5GB'`` / ``'512'`` (with ``unit`` given apart or inside) -> bytes; None if not a size."""
    t = text.strip()
    if unit is None:
        k = len(t)
        while k > 0 and t[k - 1].isalpha():
            k -= 1
        t, unit = t[:k].strip(), (t[k:] or None)
    v = _number(t)
    if v is None:
        return None
    if unit is None:
        return v
    mult = UNITS.get(unit.lower())
    return None if mult is None else v * mult


# ---------------------------------------------------------------------------
# Evaluation
#
# Every clause is one vectorised pass over the rows. Text columns are factorised once per
# query (codes + distinct values, memoised per column), so a text clause costs one pass over
# the distinct values plus one gather over the rows, however many clauses name the column.


class _Eval:
    def __init__(self, df: pd.DataFrame, byte_columns: frozenset[str], aliases: dict[str, str]) -> None:
        self.df = df
        self.byte_columns = byte_columns
        self.aliases = aliases
        self._factors: dict[str, tuple[np.ndarray, list[str], np.ndarray]] = {}
        self._floats: dict[str, np.ndarray] = {}

    def floats(self, name: str) -> np.ndarray:
        if name not in self._floats:
            self._floats[name] = self.column(name).to_numpy(dtype=float, na_value=np.nan)
        return self._floats[name]

    def column(self, name: str) -> pd.Series:
        if name not in self.df.columns:
            cols = ", ".join(str(c) for c in self.df.columns)
            raise FilterError(f"filter: no column {name!r} (columns: {cols})")
        return self.df[name]

    def factors(self, name: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(codes per row, -1 for missing; distinct values as text; whether each distinct value is a str)."""
        if name not in self._factors:
            codes, uniques = pd.factorize(self.column(name), sort=False, use_na_sentinel=True)
            vals = list(uniques)
            self._factors[name] = (np.asarray(codes), [v if isinstance(v, str) else str(v) for v in vals],
                                   np.fromiter((isinstance(v, str) for v in vals), dtype=bool, count=len(vals)))
        return self._factors[name]

    def text_mask(self, name: str, fn: Any, missing: bool = False) -> np.ndarray:
        """``fn(text)`` over the distinct values of a text column, gathered back to rows (``missing`` for nulls)."""
        codes, texts, _ = self.factors(name)
        res = np.fromiter((bool(fn(t)) for t in texts), dtype=bool, count=len(texts))
        out = np.append(res, missing)[codes]  # code -1 picks the last element: the answer for nulls
        return out

    def mask(self, node: Node) -> np.ndarray:
        if isinstance(node, Clause):
            return self.clause(node)
        if isinstance(node, Not):
            return ~self.mask(node.arg)
        masks = [self.mask(a) for a in node.args]
        return np.logical_and.reduce(masks) if node.op == "and" else np.logical_or.reduce(masks)

    def clause(self, c: Clause) -> np.ndarray:
        if c.left.kind != "field" and c.right is not None and c.right.kind == "field":
            flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}  # '5 < {size}' -> '{size} > 5'
            c = Clause(c.right, flip.get(c.op, c.op), c.left, c.case)
        if c.left.kind != "field":
            raise FilterError(f"filter: a condition needs a column in braces, like {{size}} (got {c.left.text!r})")
        name = c.left.text
        s = self.column(name)
        if c.op.startswith("is "):
            return self.unary(name, s, c.op[3:])
        assert c.right is not None
        if c.right.kind == "field":
            return self.fields(name, c.right.text, c.op, c.case)
        alias = self.aliases.get(name)
        if alias and c.op not in ("contains", "datestartswith") and byte_count(c.right.text, c.right.unit) is not None:
            name, s = alias, self.column(alias)  # '{size_h} > 50 MiB' compares the byte count
        numeric = _is_numeric(s)
        text = c.right.text + (f" {c.right.unit}" if c.right.unit else "")
        if c.op in ("contains", "datestartswith"):
            if numeric:
                raise FilterError(f"filter: {{{name}}} holds numbers: use = != < <= > >= ({c.op} is for text columns)")
            if c.op == "datestartswith":
                return self.text_mask(name, lambda u: u.startswith(text))
            if c.case == "i":
                low = text.lower()
                return self.text_mask(name, lambda u: low in u.lower())
            return self.text_mask(name, lambda u: text in u)
        v = _literal(c.right, numeric, name in self.byte_columns, name, c.op)
        if numeric:
            a = self.floats(name)
            with np.errstate(invalid="ignore"):
                return {"=": a == v, "!=": a != v, "<": a < v, "<=": a <= v, ">": a > v, ">=": a >= v}[c.op]
        ops = {"=": lambda x, y: x == y, "!=": lambda x, y: x != y, "<": lambda x, y: x < y, "<=": lambda x, y: x <= y,
               ">": lambda x, y: x > y, ">=": lambda x, y: x >= y}
        f = ops[c.op]
        if c.case == "i":
            low = str(v).lower()
            return self.text_mask(name, lambda u: f(u.lower(), low), missing=c.op == "!=")
        return self.text_mask(name, lambda u: f(u, v), missing=c.op == "!=")

    def fields(self, left: str, right: str, op: str, case: str) -> np.ndarray:
        """Column against column: numbers compare as numbers; text only with a case-sensitive comparison."""
        a, b = self.column(left), self.column(right)
        ops = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
        if _is_numeric(a) and _is_numeric(b) and op in ops:
            x, y = self.floats(left), self.floats(right)
            with np.errstate(invalid="ignore"):
                return np.asarray(ops[op](x, y), dtype=bool)
        if op in ("=", "!=") and case == "s" and not _is_numeric(a) and not _is_numeric(b):
            eq = np.asarray(a.to_numpy(dtype=object) == b.to_numpy(dtype=object), dtype=bool)
            return eq if op == "=" else ~eq
        raise FilterError(f"filter: {{{left}}} {op} {{{right}}}: two columns compare only as numbers, or as text with = and !=")

    def unary(self, name: str, s: pd.Series, test: str) -> np.ndarray:
        n = len(s)
        if not _is_numeric(s):
            if test in ("blank", "nil", "str"):
                codes, texts, is_str = self.factors(name)
                if test == "nil":
                    return codes < 0
                if test == "str":
                    return np.append(is_str, False)[codes]
                return np.append(np.fromiter((t == "" for t in texts), dtype=bool, count=len(texts)), True)[codes]
            if test == "bool":
                return np.full(n, pd.api.types.is_bool_dtype(s), dtype=bool)
            return np.zeros(n, dtype=bool)
        a = self.floats(name)
        if test in ("nil", "blank"):
            return np.isnan(a)
        if test == "num":
            return ~np.isnan(a)
        if test in ("str", "bool", "object"):
            return np.zeros(n, dtype=bool)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(a) & (np.floor(a) == a)
            if test == "even":
                return whole & (np.fmod(a, 2) == 0)
            if test == "odd":
                return whole & (np.abs(np.fmod(a, 2)) == 1)
        vals = np.unique(a[whole & (a >= 2)])  # prime: tested once per distinct whole value
        if len(vals) > MAX_PRIME_DISTINCT:
            raise FilterError(f"filter: 'is prime' over {len(vals):,} distinct values (at most {MAX_PRIME_DISTINCT:,})")
        primes = np.array([v for v in vals if _is_prime(int(v))], dtype=float)
        return whole & np.isin(a, primes)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _literal(o: Operand, numeric: bool, is_bytes: bool, col: str, op: str) -> Any:
    """The right-hand value of a clause: a float for numeric columns, else the text."""
    text = o.text + (f" {o.unit}" if o.unit else "")
    if not numeric:
        return text
    if is_bytes:
        v = byte_count(o.text, o.unit)
    else:
        v = _number(o.text) if o.unit is None else None
        if v is None and byte_count(o.text, o.unit) is not None:
            raise FilterError(f"filter: {{{col}}} is not a byte column, so {text!r} cannot have a unit")
    if v is None:
        kind = "a number or a size like '50 MiB'" if is_bytes else "a number"
        raise FilterError(f"filter: {{{col}}} {op} needs {kind}, not {text!r}")
    return v


def _is_prime(v: int) -> bool:
    if v < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if v % p == 0:
            return v == p
    d, r = v - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic below 3.3e24
        x = pow(a, d, v)
        if x in (1, v - 1):
            continue
        for _ in range(r - 1):
            x = x * x % v
            if x == v - 1:
                break
        else:
            return False
    return True


def referenced_columns(node: Node | None) -> set[str]:
    """Column names a parsed query mentions."""
    out: set[str] = set()
    stack: list[Any] = [node] if node is not None else []
    while stack:
        x = stack.pop()
        if isinstance(x, Clause):
            out.update(o.text for o in (x.left, x.right) if o is not None and o.kind == "field")
        elif isinstance(x, Not):
            stack.append(x.arg)
        elif isinstance(x, BoolOp):
            stack.extend(x.args)
    return out


def apply_filter(df: pd.DataFrame, query: str | Node | None, byte_columns: Iterable[str] = (),
                 aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """The rows of ``df`` the filter query keeps (same columns, same order).

    ``byte_columns`` take units (``50 MiB``); ``aliases`` maps a display column to the numeric
    column it shows (``{"size_h": "size"}``), used when the value is a number.
    """
    node = parse(query) if (query is None or isinstance(query, str)) else query
    if node is None:
        return df
    keep = _Eval(df, frozenset(byte_columns), dict(aliases or {})).mask(node)
    return df[np.asarray(keep, dtype=bool)]


def sort_order(df: pd.DataFrame, sort_by: Any) -> np.ndarray:
    """Row positions in the order the table asks (``[{"column_id": c, "direction": "asc"|"desc"}, ...]``),
    stable, missing values last; only the key columns are sorted, so a page gathers only its own rows.

    Anything else than that shape, or an unknown column, is a :class:`FilterError`."""
    if sort_by in (None, [], ()):
        return np.arange(len(df))
    if not isinstance(sort_by, (list, tuple)) or len(sort_by) > len(df.columns):
        raise FilterError("sort: expected a list of {column_id, direction}")
    cols: list[str] = []
    asc: list[bool] = []
    for s in sort_by:
        if not isinstance(s, dict) or not isinstance(s.get("column_id"), str) or s.get("direction", "asc") not in ("asc", "desc"):
            raise FilterError("sort: expected a list of {column_id, direction}")
        c = s["column_id"]
        if c not in df.columns:
            raise FilterError(f"sort: no column {c!r}")
        if c not in cols:
            cols.append(c)
            asc.append(s.get("direction", "asc") == "asc")
    keys = df[cols].reset_index(drop=True)
    for c in cols:  # a categorical sorts by its labels' text (a reader's order), not by the order codes were made
        if isinstance(keys[c].dtype, pd.CategoricalDtype):
            keys[c] = keys[c].cat.reorder_categories(sorted(keys[c].cat.categories, key=str), ordered=True)
    return keys.sort_values(cols, ascending=asc, kind="stable", na_position="last").index.to_numpy()


def sort_frame(df: pd.DataFrame, sort_by: Any) -> pd.DataFrame:
    """``df`` in the order :func:`sort_order` gives."""
    if sort_by in (None, [], ()):
        return df
    return df.iloc[sort_order(df, sort_by)]


def csv_safe(values: Sequence[Any]) -> list[Any]:
    """Text cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR) get a leading ``'``."""
    return [("'" + v) if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for v in values]


__all__ = ["FilterError", "parse", "tokenize", "apply_filter", "sort_order", "sort_frame", "byte_count", "referenced_columns",
           "csv_safe", "MAX_QUERY_CHARS", "MAX_CLAUSES", "MAX_DEPTH"]
