"""Recording memory: CUDA allocator history, or the same snapshot schema on CPU and MPS.

Python API for your own loop::

    import memprof
    with memprof.record("out.pickle") as rec:
        for i in range(3):
            with memprof.phase("forward"):
                loss = model(x).sum()
            with memprof.phase("backward"):
                loss.backward()
            rec.step()
"""

from __future__ import annotations

from memprof.recorder.api import record
from memprof.recorder.core import Recording, phase

__all__ = ["record", "phase", "Recording"]
