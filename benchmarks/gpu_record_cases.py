"""Record the real-GPU test data: allocator edge cases, allocator-setting pairs, predict targets.

Plain torch (memprof's built-in workloads for the predict targets), one case per process so each
starts from a fresh caching allocator with its own ``PYTORCH_CUDA_ALLOC_CONF``. Every snapshot is
``torch.cuda.memory._snapshot()`` written as gzip pickle with ``NAME.json`` beside it holding
torch's own counters for the recorded window (``reset_peak_memory_stats()`` at its start):

    max_memory_allocated, max_memory_reserved, allocated_start, reserved_start,
    allocated_end, reserved_end, covers_window, alloc_conf, torch_version, device_name,
    total_memory, notes (+ oom_requested_bytes, oom_message for OOM cases)

Run on a CUDA machine from the repo root:

    python benchmarks/gpu_record_cases.py all OUTDIR        # everything (about 5 minutes on an H100)
    python benchmarks/gpu_record_cases.py CASE OUTDIR       # one case, in this process

``OUTDIR/edge``, ``OUTDIR/alloc`` and ``OUTDIR/predict`` are what ``tests/data/gpu/`` holds.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

EDGE_CASES = {
    # name: (PYTORCH_CUDA_ALLOC_CONF, notes)
    "empty_cache": ("", "default allocator; empty_cache() mid-run"),
    "expandable": ("expandable_segments:True", "expandable segments; empty_cache() mid-run"),
    "graphs": ("", "manual CUDA graph capture (torch.cuda.graph) into a private pool, replays, then torch.compile(mode='reduce-overhead')"),
    "streams": ("", "two streams: tensors used on a side stream, record_stream, freed while the side stream is busy"),
    "stacks_all": ("", "stacks='all' (C++ frames)"),
    "wrapped": ("", "max_entries=1000 ring buffer that wraps"),
    "mempool": ("", "torch.cuda.MemPool + use_mem_pool"),
    "oom": ("", "real OOM (exhaustion), snapshot dumped in the except handler"),
    "oom_frag": ("", "real OOM by fragmentation: free cached total > request, no block large enough"),
}
ALLOC_SETTINGS = {
    "default": "",
    "expandable": "expandable_segments:True",
    "msplit64": "max_split_size_mb:64",
    "gc06": "garbage_collection_threshold:0.6,max_split_size_mb:256",
}
ALLOC_BATCHES = (8, 16, 32)


def _torch():
    import torch

    return torch


def save(out: Path, name: str, snap: dict[str, Any], info: dict[str, Any]) -> None:
    torch = _torch()
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / f"{name}.pickle.gz", "wb", compresslevel=9) as f:
        pickle.dump(snap, f, protocol=4)
    props = torch.cuda.get_device_properties(0)
    info = {
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "torch_version": torch.__version__,
        "device_name": props.name,
        "total_memory": props.total_memory,
        **info,
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print(f"wrote {name}: max_alloc={info.get('max_memory_allocated')} max_res={info.get('max_memory_reserved')}", flush=True)


def window(out: Path, name: str, body: Callable[[], dict[str, Any] | None], notes: str, *, stacks: str = "python",
           context: str | None = "all", max_entries: int = 200_000, reset_first: bool = True) -> None:
    """Record ``body`` from a reset of the peak counters to the dump; save counters beside it."""
    torch = _torch()
    torch.cuda.synchronize()
    if reset_first:
        torch.cuda.reset_peak_memory_stats()
    a0, r0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.memory._record_memory_history(enabled="all", context=context, stacks=stacks, max_entries=max_entries)
    extra = body() or {}
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    info = {
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "max_memory_reserved": torch.cuda.max_memory_reserved(),
        "allocated_start": a0,
        "reserved_start": r0,
        "allocated_end": torch.cuda.memory_allocated(),
        "reserved_end": torch.cuda.memory_reserved(),
        "covers_window": bool(reset_first),
        "max_entries": max_entries,
        "notes": notes,
        **extra,
    }
    save(out, name, snap, info)


def mlp(torch: Any, width: int = 2048, depth: int = 4) -> Any:
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers).cuda()


def train_steps(torch: Any, model: Any, opt: Any, batch: int, width: int, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(batch, width, device="cuda")
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, loss


def case(name: str, outdir: str) -> None:
    torch = _torch()
    out = Path(outdir) / "edge"
    torch.manual_seed(0)
    torch.cuda.init()
    notes = EDGE_CASES[name][1]

    if name in ("empty_cache", "expandable"):
        model = mlp(torch)
        opt = torch.optim.AdamW(model.parameters())

        def body() -> None:
            train_steps(torch, model, opt, 512, 2048, 2)
            big = [torch.empty(300 << 20, dtype=torch.uint8, device="cuda") for _ in range(3)]
            del big
            torch.cuda.empty_cache()
            train_steps(torch, model, opt, 1024, 2048, 2)
            torch.cuda.empty_cache()

        window(out, name, body, notes)
    elif name == "graphs":
        model = mlp(torch, 1024, 3)
        static_x = torch.randn(256, 1024, device="cuda")

        def body() -> dict[str, Any]:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    model(static_x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_y = model(static_x)
            for _ in range(3):
                static_x.copy_(torch.randn(256, 1024, device="cuda"))
                g.replay()
            torch.cuda.synchronize()
            y = static_y.clone()
            del g, static_y
            compiled_ok = True
            try:
                cm = torch.compile(mlp(torch, 512, 2), mode="reduce-overhead")
                xx = torch.randn(64, 512, device="cuda")
                for _ in range(4):
                    cm(xx)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - the manual graph part still stands
                compiled_ok = f"{type(e).__name__}: {e}"[:300]
            del y
            return {"compiled_reduce_overhead": compiled_ok}

        window(out, name, body, notes)
    elif name == "streams":
        side = torch.cuda.Stream()
        a = torch.randn(4096, 4096, device="cuda")

        def body() -> None:
            for i in range(4):
                x = torch.randn(2048, 4096, device="cuda")  # allocated on the default stream
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    y = x
                    for _ in range(20):  # keep the side stream busy
                        y = (a @ y.T).T.contiguous() * 1e-3
                    z = torch.empty(1024, 4096, device="cuda")  # allocated on the side stream
                    z.fill_(1.0)
                x.record_stream(side)
                del x  # free_requested now; free_completed once the side stream reaches this point
                w = torch.randn(2048, 4096, device="cuda")  # may not reuse x's block yet
                del w
                with torch.cuda.stream(side):
                    del y, z
                torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            _ = torch.empty(1024, device="cuda")

        window(out, name, body, notes)
    elif name == "stacks_all":
        model = mlp(torch, 1024, 2)
        opt = torch.optim.AdamW(model.parameters())
        window(out, name, lambda: train_steps(torch, model, opt, 256, 1024, 2), notes, stacks="all")
    elif name == "wrapped":
        model = mlp(torch, 512, 4)
        opt = torch.optim.AdamW(model.parameters())
        window(out, name, lambda: train_steps(torch, model, opt, 128, 512, 30), notes, max_entries=1000)
    elif name == "mempool":
        model = mlp(torch, 1024, 2)

        def body() -> dict[str, Any]:
            pool = torch.cuda.MemPool()
            with torch.cuda.use_mem_pool(pool):
                kept = [torch.randn(1024, 1024, device="cuda") for _ in range(4)]
                tmp = model(torch.randn(512, 1024, device="cuda"))
                del tmp
            outside = model(torch.randn(512, 1024, device="cuda"))
            del kept[1]
            torch.cuda.synchronize()
            return {"mempool_id": list(pool.id), "outside_bytes": outside.numel() * 4, "kept": len(kept)}

        window(out, name, body, notes)
    elif name == "oom":
        total = torch.cuda.get_device_properties(0).total_memory

        def body() -> dict[str, Any]:
            hold = [torch.empty(4 << 30, dtype=torch.uint8, device="cuda") for _ in range(int(total * 0.7) >> 32)]
            want = int(total * 0.5)
            try:
                torch.empty(want, dtype=torch.uint8, device="cuda")
            except torch.cuda.OutOfMemoryError as e:
                return {"oom_requested_bytes": want, "oom_message": str(e)[:2000], "held": len(hold)}
            return {"oom_requested_bytes": want, "oom_message": None}

        window(out, name, body, notes)
    elif name == "oom_frag":

        def body() -> dict[str, Any]:
            seg = 2 << 30
            hold = []
            try:
                while True:
                    hold.append(torch.empty(seg, dtype=torch.uint8, device="cuda"))
            except torch.cuda.OutOfMemoryError:
                pass
            n = len(hold)
            del hold  # n cached 2 GiB segments
            part = [torch.empty(5 << 28, dtype=torch.uint8, device="cuda") for _ in range(n)]  # 1.25 GiB in each
            want = 3 << 29  # 1.5 GiB: free cached total ~0.75 GiB * n, no block that large
            try:
                torch.empty(want, dtype=torch.uint8, device="cuda")
            except torch.cuda.OutOfMemoryError as e:
                return {"oom_requested_bytes": want, "oom_message": str(e)[:2000], "segments": n, "held": len(part)}
            return {"oom_requested_bytes": want, "oom_message": None, "segments": n}

        window(out, name, body, notes)
    else:
        raise SystemExit(f"unknown case {name}")


def alloc_case(setting: str, batch: int, outdir: str) -> None:
    """One deterministic small-GPT train step stream, recorded from the allocator's first byte."""
    torch = _torch()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from memprof.workloads.transformer import TransformerWorkload

    torch.cuda.init()
    out = Path(outdir) / "alloc"

    def body() -> dict[str, Any]:
        w = TransformerWorkload(size="tiny", mode="train", context=1024, batch=batch, vocab=32000,
                                d_model=512, num_layers=4, num_heads=8, d_ff=2048)
        w.setup(torch.device("cuda"))
        for _ in range(3):
            w.step()
        torch.cuda.synchronize()
        return {"workload": dict(w.options), "steps": 3}

    window(out, f"{setting}-b{batch}", body, f"TransformerWorkload train x3 from a fresh allocator, {setting}", context=None)


def predict_targets(outdir: str) -> None:
    out = Path(outdir) / "predict"
    out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    R = [sys.executable, "-m", "memprof", "record"]
    common = ["--steps", "2", "--warmup", "1", "--profile-steps", "0", "--gzip", "--no-progress"]
    runs = []
    for size in ("small", "medium"):
        for dtype in ("fp32", "bf16"):
            for batch in (4, 8):
                runs.append((f"transformer-{size}-{dtype}-b{batch}-c512",
                             ["transformer", "--size", size, "--mode", "train", "--dtype", dtype, "--batch", str(batch), "--context", "512"]))
    for dtype in ("fp32", "bf16"):
        runs.append((f"transformer-small-{dtype}-b4-c2048", ["transformer", "--size", "small", "--mode", "train", "--dtype", dtype, "--batch", "4", "--context", "2048"]))
    for s in (4096, 8192):
        runs.append((f"attention-naive-s{s}", ["attention", "--impl", "naive", "--seq-len", str(s), "--d", "64", "--batch", "8"]))
    for name, args in runs:
        t0 = time.time()
        r = subprocess.run(R + args + common + ["-o", str(out / f"{name}.pickle.gz")], cwd=root, capture_output=True, text=True)
        print(f"{name}: exit {r.returncode} in {time.time() - t0:.1f}s {r.stderr[-300:] if r.returncode else ''}", flush=True)


def thresholds(outdir: str) -> None:
    """Largest passing and first failing size, bisected in one process with memprof's workloads."""
    torch = _torch()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from memprof.workloads import build

    def fits(kind: str, **opts: Any) -> bool:
        w = build(kind, **opts)
        try:
            w.setup(torch.device("cuda"))
            w.step()
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            w.teardown()
            del w
            import gc

            gc.collect()
            torch.cuda.empty_cache()

    def bisect(lo: int, hi: int, step: int, f: Callable[[int], bool]) -> tuple[int, int]:
        from memprof.allocator.search import bisect as between

        assert f(lo) and not f(hi), (lo, hi)
        return between(lo, hi, f, step=step)

    res: dict[str, Any] = {"device_name": torch.cuda.get_device_properties(0).name,
                           "total_memory": torch.cuda.get_device_properties(0).total_memory, "torch_version": torch.__version__}
    lo, hi = bisect(16384, 32768, 256, lambda s: fits("attention", impl="naive", seq_len=s, d=64, batch=8))
    res["attention_naive_b8_d64_fp32_fwdbwd_seq_len"] = {"largest_passing": lo, "first_failing": hi, "step": 256}
    lo, hi = bisect(8, 512, 4, lambda b: fits("transformer", size="small", mode="train", dtype="fp32", context=2048, batch=b))
    res["transformer_small_fp32_train_c2048_batch"] = {"largest_passing": lo, "first_failing": hi, "step": 4}
    out = Path(outdir) / "predict"
    out.mkdir(parents=True, exist_ok=True)
    (out / "thresholds.json").write_text(json.dumps(res, indent=1) + "\n")
    print("thresholds", res, flush=True)


def run_all(outdir: str) -> None:
    me = str(Path(__file__).resolve())
    jobs: list[tuple[list[str], str]] = []
    for name, (conf, _) in EDGE_CASES.items():
        jobs.append(([sys.executable, me, name, outdir], conf))
    for setting, conf in ALLOC_SETTINGS.items():
        for b in ALLOC_BATCHES:
            jobs.append(([sys.executable, me, "alloc", setting, str(b), outdir], conf))
    jobs.append(([sys.executable, me, "predict", outdir], ""))
    jobs.append(([sys.executable, me, "thresholds", outdir], ""))
    for cmd, conf in jobs:
        env = dict(os.environ)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = conf
        t0 = time.time()
        r = subprocess.run(cmd, env=env, timeout=400)
        print(f"== {' '.join(cmd[2:-1])} [{conf}] exit {r.returncode} {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "all":
        run_all(sys.argv[2])
    elif what == "alloc":
        alloc_case(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif what == "predict":
        predict_targets(sys.argv[2])
    elif what == "thresholds":
        thresholds(sys.argv[2])
    else:
        case(what, sys.argv[2])
