"""A small DDP training script for torchrun (gloo on CPU, NCCL on CUDA); ranks may differ.

    memprof record -o runs/ddp -- torchrun --nproc-per-node 2 examples/ddp_train.py --batch 8,32
    torchrun --nproc-per-node 2 -m memprof record -o runs/ddp -- python examples/ddp_train.py
    torchrun --nproc-per-node 2 examples/ddp_train.py --api runs/ddp     # memprof.record() inside

``--batch 8,32``: rank r trains on batch ``[8, 32][r % 2]`` (an imbalance to find).
``--oom-rank R --oom-step S``: rank R runs out of memory at step S (on CPU a simulated
``torch.OutOfMemoryError``; on CUDA a real allocation larger than the device).
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn

import memprof


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", default="16", help="batch size, or a comma list: rank r takes item r % len")
    ap.add_argument("--api", default=None, help="record with memprof.record(PATH) inside the script")
    ap.add_argument("--oom-rank", type=int, default=-1)
    ap.add_argument("--oom-step", type=int, default=1)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    batches = [int(b) for b in args.batch.split(",")]
    batch = batches[rank % len(batches)]
    with memprof.record(args.api) if args.api else contextlib.nullcontext():
        train(args, rank, device, batch)
    dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int, device: torch.device, batch: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.hidden), nn.GELU(),
                          nn.Linear(args.hidden, 10)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    x = torch.randn(batch, 512, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for step in range(args.steps):
        if rank == args.oom_rank and step == args.oom_step:
            if device.type == "cuda":
                torch.empty(torch.cuda.get_device_properties(device).total_memory * 2, dtype=torch.uint8, device=device)
            raise torch.OutOfMemoryError(f"simulated out of memory on rank {rank} at step {step}")
        with memprof.phase("forward", step):
            h = x
            for _ in range(4):  # more activations for a larger batch: the ranks differ
                h = h * 1.0
            loss = nn.functional.cross_entropy(ddp(h), y)
        with memprof.phase("backward", step):
            loss.backward()
        with memprof.phase("optimizer", step):
            opt.step()
            opt.zero_grad(set_to_none=True)
        print(f"rank {rank} step {step} loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
