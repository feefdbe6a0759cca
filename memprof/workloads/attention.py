"""Naive attention as the seed benchmarks run it, its compiled form, and PyTorch's SDPA.

Q, K, V of shape (batch, seq_len, d); ``scores = Q @ K^T / sqrt(d)``, optional causal mask,
softmax, ``@ V``. Backward uses a fixed random upstream gradient.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from memprof.errors import MemprofError
from memprof.workloads import PhaseFn, Workload, autocast_ctx, nullphase

IMPLS = ("naive", "compiled", "sdpa")
MODES = ("forward", "forward_backward")


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if causal:
        s_q, s_k = scores.shape[-2], scores.shape[-1]
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    # The fused (flash / memory-efficient) kernels need (batch, heads, seq, d): with 3-D inputs
    # PyTorch silently falls back to the math kernel, which materialises the S x S matrices.
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=causal)
    return out.squeeze(1)


def attention_fn(impl: str) -> Callable[..., torch.Tensor]:
    if impl == "naive":
        return naive_attention
    if impl == "compiled":
        return torch.compile(naive_attention)
    if impl == "sdpa":
        return sdpa_attention
    raise MemprofError(f"unknown attention implementation {impl!r} (use {', '.join(IMPLS)})")


class AttentionWorkload(Workload):
    kind = "attention"

    def __init__(
        self,
        impl: str = "naive",
        seq_len: int = 1024,
        d: int = 64,
        batch: int = 8,
        causal: bool = False,
        mode: str = "forward_backward",
        dtype: str = "fp32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise MemprofError(f"unknown attention implementation {impl!r} (use {', '.join(IMPLS)})")
        if mode not in MODES:
            raise MemprofError(f"unknown attention mode {mode!r} (use {', '.join(MODES)})")
        if min(seq_len, d, batch) < 1:
            raise MemprofError("seq_len, d and batch must be positive")
        self.options = dict(impl=impl, seq_len=seq_len, d=d, batch=batch, causal=causal, mode=mode, dtype=dtype, seed=seed)
        self.phases = ("forward",) if mode == "forward" else ("forward", "backward")
        self.fn: Callable[..., torch.Tensor] | None = None
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.grad_out: torch.Tensor | None = None

    def setup(self, device: torch.device) -> None:
        o = self.options
        self.device = device
        g = torch.Generator(device="cpu").manual_seed(o["seed"])
        shape = (o["batch"], o["seq_len"], o["d"])
        need_grad = o["mode"] == "forward_backward"
        self.q, self.k, self.v = (torch.randn(shape, generator=g).to(device).requires_grad_(need_grad) for _ in range(3))
        self.grad_out = torch.randn(shape, generator=g).to(device) if need_grad else None
        self.fn = attention_fn(o["impl"])

    def step(self, phase: PhaseFn = nullphase) -> None:
        o = self.options
        assert self.fn is not None
        assert self.q is not None and self.k is not None and self.v is not None  # set by setup
        for t in (self.q, self.k, self.v):
            t.grad = None
        with phase("forward"):
            with autocast_ctx(self.device, o["dtype"]):
                out = self.fn(self.q, self.k, self.v, o["causal"])
        if o["mode"] == "forward_backward":
            assert self.grad_out is not None  # setup makes it in forward_backward mode
            with phase("backward"):
                out.backward(self.grad_out.to(out.dtype))
        del out

    def tensors(self) -> dict[str, list[torch.Tensor]]:
        qkv = [t for t in (self.q, self.k, self.v) if t is not None]
        return {
            "inputs": qkv + ([self.grad_out] if self.grad_out is not None else []),
            "gradients": [t.grad for t in qkv if t.grad is not None],
        }

    def slug(self) -> str:
        o = self.options
        mode = {"forward": "fwd", "forward_backward": "fwdbwd"}[o["mode"]]
        causal = "-causal" if o["causal"] else ""
        return f"attention-{o['impl']}-s{o['seq_len']}-d{o['d']}-b{o['batch']}{causal}-{mode}-{o['dtype']}"


def score_matrix_bytes(batch: int, seq_len: int, dtype: str = "fp32") -> int:
    """Bytes of one B x S x S score (or probability) matrix; autocast keeps softmax in fp32."""
    elem = 2 if dtype in ("bf16", "fp16") else 4
    return batch * seq_len * seq_len * elem


