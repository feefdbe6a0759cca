"""Record the golden GPU snapshots used by tests/test_golden.py (run on a CUDA machine).

    python tests/gpu/make_golden.py OUT_DIR

Standalone on purpose (plain torch, no memprof import): the golden data must not depend
on the code it checks. For each case it writes NAME.pickle.gz (protocol 4) and
NAME.golden.json with torch.cuda.max_memory_allocated() after reset_peak_memory_stats().
"""

from __future__ import annotations

import gzip
import inspect
import json
import math
import pickle
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def naive_attention(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v


class Block(nn.Module):
    def __init__(self, d: int, h: int, ff: int) -> None:
        super().__init__()
        self.h = h
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.w1, self.w3, self.w2 = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-2, -1) / math.sqrt(d // self.h)
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1), float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        y = self.n2(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


class LM(nn.Module):
    def __init__(self, vocab=10000, d=256, layers=4, h=4, ff=1024, ctx=256) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, h, ff) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def start_history() -> None:
    kw = dict(enabled="all", context="all", stacks="python", max_entries=200_000)
    if "global_record_annotations" in inspect.signature(torch.cuda.memory._record_memory_history).parameters:
        kw["global_record_annotations"] = True
    torch.cuda.memory._record_memory_history(**kw)


def dump(out: Path, name: str, extra: dict) -> None:
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    with gzip.open(out / f"{name}.pickle.gz", "wb") as f:
        pickle.dump(snap, f, protocol=4)
    info = dict(
        extra,
        max_memory_allocated=torch.cuda.max_memory_allocated(),
        max_memory_reserved=torch.cuda.max_memory_reserved(),
        torch_version=torch.__version__,
        device=torch.cuda.get_device_name(),
        entries=[len(t) for t in snap["device_traces"]],
        top_keys=sorted(snap.keys()),
        entry_keys=sorted({k for t in snap["device_traces"] for e in t for k in e}),
        block_keys=sorted({k for s in snap["segments"] for b in s["blocks"] for k in b}),
        segment_keys=sorted({k for s in snap["segments"] for k in s}),
        annotations=len(snap.get("external_annotations", []) or []),
    )
    (out / f"{name}.golden.json").write_text(json.dumps(info, indent=2))
    print(name, json.dumps({k: info[k] for k in ("max_memory_allocated", "entries", "annotations")}))


def phase(label: str):
    if hasattr(torch.cuda.memory, "_set_memory_metadata"):
        torch.cuda.memory._set_memory_metadata(label)
    return torch.profiler.record_function(label)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    torch.manual_seed(0)
    # 1. naive attention forward + backward, B=8 S=1024 d=64 fp32 (the seeds' configuration)
    q, k, v = (torch.randn(8, 1024, 64, device=dev, requires_grad=True) for _ in range(3))
    naive_attention(q, k, v).sum().backward()  # warm-up (cuBLAS handles, kernels)
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_history()
    with phase("memprof/forward/0"):
        o = naive_attention(q, k, v)
        loss = o.sum()
    with phase("memprof/backward/0"):
        loss.backward()
    torch.cuda.synchronize()
    dump(out, "attention_naive_fwdbwd", dict(case="attention naive B=8 S=1024 d=64 fp32 forward+backward"))
    del q, k, v, o, loss
    torch.cuda.empty_cache()

    # 2. small Transformer LM, 3 AdamW train steps, fp32 eager
    model = LM().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 10000, (4, 256), device=dev)
    y = torch.randint(0, 10000, (4, 256), device=dev)

    def step(i: int, record: bool) -> None:
        with phase(f"memprof/forward/{i}") if record else torch.autograd.profiler.record_function("w"):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        with phase(f"memprof/backward/{i}") if record else torch.autograd.profiler.record_function("w"):
            loss.backward()
        with phase(f"memprof/optimizer/{i}") if record else torch.autograd.profiler.record_function("w"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for i in range(2):
        step(i, False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_history()
    for i in range(3):
        step(i, True)
    torch.cuda.synchronize()
    dump(out, "transformer_train3", dict(case="LM d=256 L=4 h=4 ff=1024 vocab=10000 B=4 T=256 fp32 AdamW, 3 steps after 2 warm-up"))

    # 3. the same, with history enabled from a cold start (optimizer state created inside the window)
    del model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start_history()
    model = LM().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(2):
        step(i, True)
    torch.cuda.synchronize()
    dump(out, "transformer_cold2", dict(case="same LM, history on before the model is built, 2 steps"))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "golden"))
