"""Built-in workloads under torchrun: the model wrapped with DDP or FSDP2 (``fully_shard``).

``memprof record transformer --distributed ddp|fsdp`` in each torchrun worker: the process
group is initialised from torchrun's environment (NCCL on CUDA, gloo on CPU), then

* ``ddp``: ``DistributedDataParallel`` — every rank holds all parameters, gradients and AdamW
  state, plus DDP's gradient buckets (about one more copy of the gradients);
* ``fsdp``: FSDP2 ``fully_shard`` on every Transformer block, then on the root — each rank holds
  1/N of the parameters, gradients and optimizer state, and all-gathers one block's parameters
  at a time in forward and backward.

What sharding really does per rank is what the recorded run shows (``memprof stats RUN``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

from memprof.errors import MemprofError

MODES = ("none", "ddp", "fsdp")


def init(device: torch.device) -> bool:
    """Initialise the default process group from torchrun's environment; True when this call did."""
    if dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise MemprofError("--distributed needs torchrun: torchrun --nproc-per-node N -m memprof record transformer --distributed ddp")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """``model`` under DDP or FSDP2 (its blocks first, then the root)."""
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for blk in getattr(model, "blocks", []):
            fully_shard(blk)
        fully_shard(model)
        return model
    raise MemprofError(f"unknown --distributed {mode!r} (use {', '.join(MODES)})")
