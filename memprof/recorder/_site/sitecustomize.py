"""Put on PYTHONPATH by ``memprof record -- torchrun ...``: records each torchrun worker.

Python imports ``sitecustomize`` at start-up. Here it starts memprof's recorder in the worker
processes of that launch (``RANK`` set, ``MEMPROF_INJECT`` set) and nowhere else, then hands
over to any other ``sitecustomize`` further along ``sys.path``.
"""

import os

if os.environ.get("MEMPROF_INJECT") and "RANK" in os.environ:
    try:
        from memprof.recorder.inject import start

        start()
    except Exception as _e:  # never stop the user's worker from starting
        import sys

        print(f"memprof: could not start recording in this worker: {type(_e).__name__}: {_e}", file=sys.stderr)

try:
    from memprof.recorder.inject import chain_sitecustomize

    chain_sitecustomize(__file__)
except Exception:  # noqa: BLE001 - memprof not importable here: nothing to chain through it
    pass
