"""Fuzz both snapshot loaders with mutations of real snapshots; they must agree and never crash.

    python tests/fuzz/harness.py [--seconds 60] [--seed 0] [--out DIR] [--truncate-all]

Seeds: the small real snapshots of ``<repo>/../shared/corpus`` or ``$MEMPROF_CORPUS`` (when present),
memprof's golden files, the committed hostile files and synthetic snapshots in every pickle
protocol and JSON. Mutations: bit flips, byte sets, truncation (at every offset of the smallest
seeds with ``--truncate-all``), splices of two seeds, opcode swaps at opcode boundaries, length
fields set to huge values, chunk duplication and deletion, and the same on the gzip bytes.

Each input is loaded by the C loader (falling back as memprof does) and by the pure loader
(``MEMPROF_LOADER=pure``: scan, then the restricted unpickler). The outcome is either the
snapshot's fingerprint (every column and the info dict) or the error class ("memprof: ..."). Any
other exception is a bug, and so is a disagreement; a crash kills the process with the input in
``DIR/current.bin``. Findings are written to ``DIR`` as ``<kind>-<sha1>.bin``; a JSON summary
is printed last.

Under AddressSanitizer (gcc 12; ``libasan`` and ``libubsan`` ship with it)::

    CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g" \\
        python setup.py build_ext --inplace --force
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \\
        LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \\
        python tests/fuzz/harness.py --seconds 300
    python setup.py build_ext --inplace --force        # back to the normal build
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import memprof  # noqa: E402,F401
from memprof.errors import MemprofError  # noqa: E402

L = sys.modules["memprof.snapshot.load"]
from memprof.snapshot import cache as C  # noqa: E402

CORPUS = Path(os.environ.get("MEMPROF_CORPUS") or ROOT.parent / "shared" / "corpus")
MAX_SEED = 160 << 10  # decompressed bytes: small seeds keep executions fast


def fingerprint(s: Any) -> str:
    """Every column, the stacks and the info dict of a Snapshot, hashed."""
    h = hashlib.sha1()
    for name in ("events", "frames", "segments", "blocks", "annotations"):
        df = getattr(s, name)
        h.update(name.encode() + repr(list(df.columns)).encode() + repr(list(map(str, df.dtypes))).encode())
        for c in df.columns:
            col = df[c].to_numpy()
            h.update(col.tobytes() if col.dtype != object else repr(col.tolist()).encode())
    h.update(np.asarray(s.stack_offsets).tobytes() + np.asarray(s.stack_frames).tobytes())
    info = {k: v for k, v in s.info.items() if not k.startswith("_")}
    h.update(repr(info).encode())
    return h.hexdigest()


def outcome(path: Path, loader: str) -> str:
    """'ok:<fingerprint>' or 'err:<class>'; anything else raises."""
    old = os.environ.get("MEMPROF_LOADER")
    os.environ["MEMPROF_LOADER"] = loader
    try:
        snap = L.load_uncached(path)
        fp = fingerprint(snap)
        if loader == "c":  # the Arrow cache must hold what was loaded (or decline to write)
            import shutil
            import tempfile

            where = Path(tempfile.mkdtemp(prefix="fuzz-cache-")) / "entry"
            try:
                C.write_cache(snap, where)
            except (OSError, TypeError, ValueError):
                pass
            else:
                again = fingerprint(C.read_cache(str(path), where))
                if again != fp:
                    return "cache-differs:" + again
            finally:
                shutil.rmtree(where.parent, ignore_errors=True)
        return "ok:" + fp
    except MemprofError as e:
        return "err:" + error_class(str(e))
    finally:
        if old is None:
            os.environ.pop("MEMPROF_LOADER", None)
        else:
            os.environ["MEMPROF_LOADER"] = old


def error_class(msg: str) -> str:
    """The kind of refusal: limits are named; everything else is 'refused'."""
    for key, cls in (("levels deep", "depth"), ("memo index", "memo"), ("MEMPROF_MAX_ROWS", "rows"),
                     ("limit on decompressed", "bytes"), ("memory limit", "memory")):
        if key in msg:
            return cls
    return "refused"


# ---------------------------------------------------------------------------
# seeds


def synthetic_seeds() -> list[bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    from fuzz.hostile import small_snapshot

    snap = small_snapshot()
    snap["device_traces"][0].append({"action": "oom", "size": 1 << 30, "device_free": 5, "stream": 0, "time_us": 3,
                                      "user_metadata": "memprof/forward/0"})
    snap["external_annotations"] = [{"device": 0, "stage": "START", "name": "fwd", "time_us": 1}]
    snap["segments"][0]["segment_pool_id"] = (0, 0)
    out = [pickle.dumps(snap, protocol=p) for p in (0, 1, 2, 3, 4, 5)]
    out.append(json.dumps(snap).encode())
    out.append(pickle.dumps(snap["segments"], protocol=4))
    return out


def load_seeds() -> list[bytes]:
    seeds = synthetic_seeds()
    files = sorted(CORPUS.glob("*.pickle.gz")) if CORPUS.is_dir() else []
    files += sorted((ROOT / "tests" / "data" / "golden").glob("*.pickle.gz"))
    for f in files:
        try:
            data = gzip.decompress(f.read_bytes())
        except OSError:
            continue
        if len(data) <= MAX_SEED:
            seeds.append(data)
    return seeds


# ---------------------------------------------------------------------------
# mutations


def opcode_offsets(data: bytes) -> list[int]:
    """Offsets where opcodes start (as far as pickletools can follow the stream)."""
    import pickletools

    offs = []
    try:
        for _op, _arg, pos in pickletools.genops(data):
            offs.append(pos)
    except Exception:  # noqa: BLE001 - a mutated stream ends where it ends
        pass
    return offs or [0]


OPCODES = bytes(sorted({ord(o.code) for o in __import__("pickletools").opcodes}))


class Mutator:
    def __init__(self, seeds: list[bytes], rng: random.Random) -> None:
        self.seeds = seeds
        self.rng = rng
        self._ops: dict[int, list[int]] = {}

    def ops(self, i: int) -> list[int]:
        if i not in self._ops:
            self._ops[i] = opcode_offsets(self.seeds[i])
        return self._ops[i]

    def __call__(self) -> tuple[str, bytes]:
        r = self.rng
        i = r.randrange(len(self.seeds))
        data = bytearray(self.seeds[i])
        kind = r.choice(("flip", "set", "truncate", "splice", "opswap", "length", "dup", "delete", "multi", "gzip"))
        if kind == "flip":
            for _ in range(r.randint(1, 4)):
                p = r.randrange(len(data))
                data[p] ^= 1 << r.randrange(8)
        elif kind == "set":
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] = r.randrange(256)
        elif kind == "truncate":
            data = data[: r.randrange(len(data))]
        elif kind == "splice":
            j = r.randrange(len(self.seeds))
            a, b = r.choice(self.ops(i)), r.choice(self.ops(j))
            data = data[:a] + bytearray(self.seeds[j][b:])
        elif kind == "opswap":
            for _ in range(r.randint(1, 3)):
                p = r.choice(self.ops(i))
                if p < len(data):
                    data[p] = r.choice(OPCODES)
        elif kind == "length":
            p = r.choice(self.ops(i))
            w = r.choice((1, 4, 8))
            val = r.choice((0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**29, 2**63, 2**64 - 1, 10**9))
            if p + 1 + w <= len(data):
                data[p + 1 : p + 1 + w] = (val % (1 << (8 * w))).to_bytes(w, "little")
        elif kind == "dup":
            a = r.randrange(len(data))
            b = min(len(data), a + r.randint(1, 64))
            data[a:a] = data[a:b] * r.randint(1, 50)
        elif kind == "delete":
            a = r.randrange(len(data))
            del data[a : a + r.randint(1, 16)]
        elif kind == "multi":
            for _ in range(r.randint(5, 30)):
                data[r.randrange(len(data))] = r.randrange(256)
        else:  # gzip: mutate the compressed bytes
            z = bytearray(gzip.compress(bytes(data), mtime=0))
            p = r.randrange(len(z))
            if r.random() < 0.5:
                z[p] ^= 1 << r.randrange(8)
            else:
                z = z[:p] if r.random() < 0.5 else z + bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
            return kind, bytes(z)
        return kind, bytes(data)


# ---------------------------------------------------------------------------
# the loop


def run(seconds: float, seed: int, out: Path, truncate_all: bool = False, loaders: tuple[str, ...] = ("c", "pure"),
        on_input: Callable[[bytes], None] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds()
    rng = random.Random(seed)
    mut = Mutator(seeds, rng)
    current = out / "current.bin"
    stats: dict[str, Any] = {"executions": 0, "inputs": 0, "agree_ok": 0, "agree_err": 0, "disagree": 0,
                             "exceptions": 0, "seeds": len(seeds), "by_kind": {}, "findings": []}
    deadline = time.monotonic() + seconds

    def inputs() -> Any:
        if truncate_all:
            small = sorted(seeds, key=len)[:3]
            for s in small:
                for k in range(len(s)):
                    yield "truncate_all", s[:k]
        while True:
            yield mut()

    for kind, data in inputs():
        if time.monotonic() > deadline:
            break
        current.write_bytes(data)
        if on_input:
            on_input(data)
        results = []
        for loader in loaders:
            stats["executions"] += 1
            try:
                results.append(outcome(current, loader))
            except Exception as e:  # noqa: BLE001 - any exception that is not a MemprofError is a bug
                results.append(f"exception:{type(e).__name__}:{str(e)[:200]}")
        stats["inputs"] += 1
        by = stats["by_kind"].setdefault(kind, 0)
        stats["by_kind"][kind] = by + 1
        bad = [r for r in results if not r.startswith(("ok:", "err:"))]
        if bad:
            stats["exceptions"] += 1
            _save(out, "exception", data, results, stats)
        elif disagree(results):
            stats["disagree"] += 1
            _save(out, "disagree", data, results, stats)
        elif results[0].startswith("ok:"):
            stats["agree_ok"] += 1
        else:
            stats["agree_err"] += 1
            if len(set(results)) > 1:  # both refused, one for a corrupt value the other's scan cannot see
                stats["refused_differently"] = stats.get("refused_differently", 0) + 1
    current.unlink(missing_ok=True)
    return stats


def disagree(results: list[str]) -> bool:
    """Loaders disagree when one loads and another refuses, when they load different snapshots, or
    when both refuse for a limit but name different limits. One may refuse a corrupt value (an
    unhashable key, bad UTF-8) where the other's scan refuses a limit further on: both refused."""
    if any(r.startswith("ok:") for r in results):
        return len(set(results)) > 1
    limits = {r for r in results if r != "err:refused"}
    return len(limits) > 1


def _save(out: Path, kind: str, data: bytes, results: list[str], stats: dict[str, Any]) -> None:
    name = f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
    (out / name).write_bytes(data)
    if len(stats["findings"]) < 50:
        stats["findings"].append({"file": name, "results": results})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/memprof-fuzz"))
    ap.add_argument("--truncate-all", action="store_true")
    ap.add_argument("--loaders", default="c,pure", help="comma-separated: c, pure, python")
    args = ap.parse_args()
    os.environ.setdefault("MEMPROF_CACHE_DIR", str(args.out / "cache"))
    t0 = time.monotonic()
    stats = run(args.seconds, args.seed, args.out, args.truncate_all, tuple(args.loaders.split(",")))
    stats["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
