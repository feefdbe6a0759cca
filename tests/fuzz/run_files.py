"""Run ``memprof stats FILE --no-cache`` on each file in one process, under an address-space limit.

    python tests/fuzz/run_files.py [--as-gib 4] FILE...   -> one JSON line per file on stdout

Each line: file, rc, err (stderr), out (stdout), seconds. A crash (segfault) ends the process:
the caller sees fewer lines than files and a negative return code. MEMPROF_LOADER selects the
loader (unset: the C loader, falling back; ``pure``: the restricted unpickler after the scan;
``python``: as if the C extension were not built).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--as-gib", type=float, default=4.0)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    from memprof.cli import main as cli  # imports before the limit: the interpreter's own mappings

    lim = int(args.as_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    real_out = sys.stdout
    for f in args.files:
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli(["stats", f, "--no-cache"])
            except BaseException as e:  # noqa: BLE001 - a traceback is what the test looks for
                import traceback

                traceback.print_exc(file=err)
                rc = -1 if not isinstance(e, SystemExit) else (e.code if isinstance(e.code, int) else 1)
        dt = time.perf_counter() - t0
        real_out.write(json.dumps({"file": f, "rc": rc, "err": err.getvalue(), "out": out.getvalue(), "seconds": dt}) + "\n")
        real_out.flush()


if __name__ == "__main__":
    main()
