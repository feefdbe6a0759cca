"""CUDA: the caching allocator's own history (``torch.cuda.memory._record_memory_history``).

Version tolerant from torch 2.4 to 2.14: keyword arguments this torch lacks are dropped.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch


def history_kwargs(max_entries: int, stacks: str, context: str) -> dict[str, Any]:
    """Keyword arguments for ``_record_memory_history`` that this torch accepts."""
    fn = torch.cuda.memory._record_memory_history
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        params = {}
    want: dict[str, Any] = {
        "enabled": "all",
        "context": context,
        "stacks": stacks,
        "max_entries": max_entries,
        "global_record_annotations": True,
    }
    return {k: v for k, v in want.items() if k in params} if params else {"enabled": "all"}


def start_history(max_entries: int, stacks: str, context: str = "all", device: torch.device | None = None) -> dict[str, Any]:
    kw = history_kwargs(max_entries, stacks, context)
    torch.cuda.memory._record_memory_history(**kw)
    return kw


def stop_history() -> None:
    torch.cuda.memory._record_memory_history(enabled=None)


def set_metadata(label: str) -> bool:
    """Label every following trace entry (``user_metadata``); False when this torch cannot."""
    fn = getattr(torch.cuda.memory, "_set_memory_metadata", None)
    if fn is None:
        return False
    try:
        fn(label)
    except (RuntimeError, TypeError):
        return False
    return True


def snapshot() -> dict[str, Any]:
    return torch.cuda.memory._snapshot()
