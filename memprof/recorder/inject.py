"""``memprof record -- torchrun ...``: record every worker, injected through the environment.

torchrun starts its workers as fresh Python processes with the launcher's environment, so
memprof puts its own ``sitecustomize`` (``memprof/recorder/_site``) first on ``PYTHONPATH`` and
the recording options in ``MEMPROF_INJECT`` (JSON). In each worker, :func:`start` opens
:func:`memprof.record` on the run folder before the training script's first line (the worker
writes ``RUN/rank{RANK}.pickle.gz``), and closes it when the interpreter exits: normally, on an
uncaught exception (an OOM: status ``oom``) or on torchrun's SIGTERM (status ``terminated``).
Processes the worker starts itself (data-loader workers started with spawn) inherit the
environment but are not recorded: the first process of a rank owns the recording.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

ENV = "MEMPROF_INJECT"
OWNER_ENV = "MEMPROF_INJECT_OWNER"
SITE_DIR = Path(__file__).resolve().parent / "_site"


def environment(run_dir: str | os.PathLike[str], options: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher's environment with memprof injected into every Python worker it starts."""
    env = dict(os.environ if base is None else base)
    pkg_parent = str(Path(__file__).resolve().parents[2])  # memprof importable in the workers, as here
    parts = [str(SITE_DIR), pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env[ENV] = json.dumps({"output": str(Path(run_dir).resolve()), **options})
    env.pop(OWNER_ENV, None)
    return env


def start() -> None:
    """Start recording this worker (called by the injected sitecustomize)."""
    if os.environ.get(OWNER_ENV) not in (None, str(os.getpid())):
        return  # a child of a recorded worker
    os.environ[OWNER_ENV] = str(os.getpid())
    cfg = json.loads(os.environ[ENV])
    from memprof.recorder.api import record

    cm = record(cfg["output"], device=cfg.get("device"), max_entries=int(cfg.get("max_entries", 1_000_000)),
                stacks=cfg.get("stacks", "python"), compress=cfg.get("compress", True),
                workload={"kind": "script", "argv": list(sys.argv)}, command=cfg.get("command"))  # fmt: skip
    cm.__enter__()
    seen: list[tuple[Any, Any, Any]] = []
    old_hook = sys.excepthook

    def hook(t: Any, v: Any, tb: Any) -> None:
        seen.append((t, v, tb))
        old_hook(t, v, tb)

    def finish() -> None:
        try:
            cm.__exit__(*(seen[0] if seen else (None, None, None)))
        except BaseException:  # noqa: BLE001 - the exception was reported already by the hook
            pass

    sys.excepthook = hook
    atexit.register(finish)


def chain_sitecustomize(ours: str) -> None:
    """Run the ``sitecustomize`` that ours shadows, if there is one further along ``sys.path``."""
    here = str(Path(ours).resolve().parent)
    rest = [p for p in sys.path if p and os.path.isdir(p) and str(Path(p).resolve()) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == ours:
        return
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
