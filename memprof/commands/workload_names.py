"""Workload option names that CLI code may check without importing torch."""

from __future__ import annotations

ATTENTION_IMPLS = ("naive", "compiled", "sdpa")
ATTENTION_MODES = ("forward", "forward_backward")
TRANSFORMER_SIZES = ("tiny", "small", "medium", "large", "xl", "2.7B")
TRANSFORMER_MODES = ("forward", "forward_backward", "train")
