"""Walk a Dash component tree in tests (pages and callbacks return components, not HTML)."""

from __future__ import annotations

from typing import Any, Iterator


def walk(c: Any) -> Iterator[Any]:
    """Every component under ``c`` (a component or a list), depth first; text leaves skipped."""
    if isinstance(c, (list, tuple)):
        for x in c:
            yield from walk(x)
        return
    if c is None or isinstance(c, (str, int, float)):
        return
    yield c
    yield from walk(getattr(c, "children", None))
