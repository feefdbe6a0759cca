"""Predict a step's peak memory without a GPU: FakeTensorMode plus the allocator model.

``memprof.predict(step_fn, *inputs)`` (this package is callable) and :mod:`memprof.predict.core`
import torch, on first use only; :mod:`memprof.predict.device` (what a card leaves to the
allocator) does not, so the dashboard can use it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_SUBMODULES = frozenset({"core", "device"})


class _CallablePackage(types.ModuleType):
    """``memprof.predict(step_fn, *inputs)`` works although ``memprof.predict`` is this package."""

    def __call__(self, step_fn: Any, *inputs: Any, **kwargs: Any) -> Any:
        from memprof.predict.core import predict

        return predict(step_fn, *inputs, **kwargs)


def __getattr__(name: str) -> Any:  # memprof.predict.Prediction, .predict_workload ...: from core, lazily
    if name in _SUBMODULES or name.startswith("__"):
        raise AttributeError(name)
    from memprof.predict import core

    return getattr(core, name)


sys.modules[__name__].__class__ = _CallablePackage
