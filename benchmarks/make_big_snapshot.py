"""Write a realistic large snapshot: a training loop's allocator trace with shared Python stacks.

    python benchmarks/make_big_snapshot.py OUT.pickle [--entries 1000000]

Entries follow torch's own shape (action, addr, size, stream, time_us, frames); every
free is a free_requested + free_completed pair, as the CUDA caching allocator writes
them; stacks come from a pool and are shared objects, as torch's symbolizer shares them,
so pickle memoises them (frames shared; each allocation's list shared by its free). Pickled with protocol 4, like torch.cuda.memory._dump_snapshot.
"""

from __future__ import annotations

import argparse
import pickle
import random


def make(entries: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    files = [f"/home/user/project/model/layer_{i}.py" for i in range(40)] + [
        "/usr/lib/python3.11/site-packages/torch/nn/modules/module.py",
        "/usr/lib/python3.11/site-packages/torch/nn/functional.py",
        "/usr/lib/python3.11/site-packages/torch/_tensor.py",
    ]
    frame_pool = [{"filename": rng.choice(files), "line": rng.randint(1, 900), "name": f"fn_{i}"} for i in range(600)]
    cpp = [{"filename": "??", "line": 0, "name": n} for n in ("c10::cuda::CUDACachingAllocator::malloc", "at::empty_strided", "at::native::add")]
    stacks = [cpp[:2] + rng.sample(frame_pool, rng.randint(8, 24)) for _ in range(400)]
    trace: list[dict] = []
    t = 1_700_000_000_000_000
    base = 0x7F0000000000
    live: list[tuple[int, int, list]] = []
    next_addr = base
    segments_alloc = 0
    while len(trace) < entries:
        # forward: allocate a layer's worth, backward: free most of it
        for _ in range(rng.randint(20, 60)):
            size = rng.choice([512, 4096, 65536, 1 << 20, 4 << 20, 16 << 20]) * rng.randint(1, 4)
            if rng.random() < 0.01:
                trace.append({"action": "segment_alloc", "addr": next_addr, "size": 2 << 20, "stream": 0, "time_us": t, "frames": rng.choice(stacks)})
                segments_alloc += 1
                t += rng.randint(1, 5)
            fr = list(rng.choice(stacks))  # torch gives each allocation its own traceback list; its free shares it
            trace.append({"action": "alloc", "addr": next_addr, "size": size, "stream": 0, "time_us": t, "frames": fr})
            live.append((next_addr, size, fr))
            next_addr += (size + 511) // 512 * 512
            t += rng.randint(1, 30)
        rng.shuffle(live)
        while len(live) > 30:
            addr, size, fr = live.pop()
            trace.append({"action": "free_requested", "addr": addr, "size": size, "stream": 0, "time_us": t, "frames": fr})
            trace.append({"action": "free_completed", "addr": addr, "size": size, "stream": 0, "time_us": t, "frames": fr})
            t += rng.randint(1, 20)
    trace = trace[:entries]
    return {"segments": [], "device_traces": [trace], "allocator_settings": {}, "external_annotations": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--entries", type=int, default=1_000_000)
    a = ap.parse_args()
    snap = make(a.entries)
    with open(a.out, "wb") as f:
        pickle.dump(snap, f, protocol=4)


if __name__ == "__main__":
    main()
