"""The vocabulary of categories: each allocation's category and the evidence that gave it, as codes."""

from __future__ import annotations

CATEGORIES = ("parameter", "optimizer_state", "gradient", "activation", "temporary", "input", "workspace", "unknown")
#: What decided a category: nothing, the phases, the peak heuristic, the metadata, a lifetime rule, a tensor name.
SOURCES = ("none", "phases", "peak-heuristic", "meta", "lifetime", "name")
CAT = {c: i for i, c in enumerate(CATEGORIES)}
SRC = {c: i for i, c in enumerate(SOURCES)}
