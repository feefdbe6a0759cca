"""memprof: where every byte of GPU memory goes in PyTorch, and why.

Data flows one way: workloads -> record -> snapshot file -> load -> analysis DataFrames
-> figures -> CLI and app. Importing this package imports neither torch nor dash.
"""

from __future__ import annotations

from memprof.errors import MemprofError
from memprof.version import __version__
from memprof.snapshot.tables import Snapshot
from memprof.snapshot.load import load
from memprof.replay.timeline import Replay, replay

__all__ = ["MemprofError", "Snapshot", "Replay", "load", "replay", "record", "phase", "predict", "__version__"]


def __getattr__(name: str):  # lazy: only the recorder imports torch
    if name in ("record", "phase"):
        from memprof import recorder

        return getattr(recorder, name)
    if name == "predict":  # the module is callable: memprof.predict(step_fn, *inputs)
        import memprof.predict as _predict

        return _predict
    raise AttributeError(name)
