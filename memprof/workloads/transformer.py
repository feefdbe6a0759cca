"""A pre-norm Transformer LM: RMSNorm, rotary (or learned) positions, SwiGLU FFN,
causal naive multi-head attention, untied output head.

Modes: ``forward``; ``forward_backward`` (forward and backward timed apart); ``train``
(forward, backward, AdamW step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from memprof.errors import MemprofError
from memprof.workloads import PhaseFn, Workload, autocast_ctx, nullphase

#: name -> (d_model, num_layers, num_heads, d_ff)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 4, 256),
    "small": (768, 12, 12, 3072),
    "medium": (1024, 24, 16, 4096),
    "large": (1280, 36, 20, 5120),
    "xl": (1600, 48, 25, 6400),
    "2.7B": (2560, 32, 32, 10240),
}
MODES = ("forward", "forward_backward", "train")


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        x = x.float()
        rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * rms).to(in_dtype) * self.weight


class Rotary(nn.Module):
    cos: torch.Tensor  # buffers (register_buffer)
    sin: torch.Tensor

    def __init__(self, d_head: int, context: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, d_head, 2).float() / d_head)
        ang = torch.outer(torch.arange(context).float(), inv)  # (T, d_head/2)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, T, d_head)
        t = x.shape[-2]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope: Rotary | None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise MemprofError(f"d_model {d_model} is not divisible by num_heads {n_heads}")
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.h)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, rope: Rotary | None) -> None:
        super().__init__()
        self.ln1 = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, rope)
        self.ln2 = RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    def __init__(
        self, vocab: int, context: int, d_model: int, num_layers: int, num_heads: int, d_ff: int, positions: str = "rope"
    ) -> None:
        super().__init__()
        if positions not in ("rope", "learned"):
            raise MemprofError(f"unknown positions {positions!r} (use rope or learned)")
        self.emb = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model) if positions == "learned" else None
        rope = Rotary(d_model // num_heads, context) if positions == "rope" else None
        self.blocks = nn.ModuleList(Block(d_model, num_heads, d_ff, rope) for _ in range(num_layers))
        self.ln_f = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        if self.pos is not None:
            x = x + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


class LMLoss(nn.Module):
    """Cross-entropy over the vocabulary in fp32 (a module, so its memory is named like the model's)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))


class TransformerWorkload(Workload):
    kind = "transformer"

    def __init__(
        self,
        size: str = "small",
        mode: str = "train",
        compile: bool = False,
        dtype: str = "fp32",
        context: int = 512,
        batch: int = 4,
        vocab: int = 10_000,
        d_model: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        d_ff: int | None = None,
        positions: str = "rope",
        lr: float = 1e-4,
        seed: int = 0,
        distributed: str = "none",
    ) -> None:
        super().__init__()
        if size not in PRESETS:
            raise MemprofError(f"unknown transformer size {size!r} (use {', '.join(PRESETS)})")
        if mode not in MODES:
            raise MemprofError(f"unknown transformer mode {mode!r} (use {', '.join(MODES)})")
        pd_, pl, ph, pf = PRESETS[size]
        self.options = dict(
            size=size, mode=mode, compile=bool(compile), dtype=dtype, context=context, batch=batch, vocab=vocab,
            d_model=d_model or pd_, num_layers=num_layers or pl, num_heads=num_heads or ph, d_ff=d_ff or pf,
            positions=positions, lr=lr, seed=seed,
        )  # fmt: skip
        if distributed != "none":  # DDP / FSDP2 under torchrun (memprof.workloads.distributed)
            self.options["distributed"] = distributed
        self._own_group = False
        self.phases = {"forward": ("forward",), "forward_backward": ("forward", "backward"), "train": ("forward", "backward", "optimizer")}[mode]
        self.model: nn.Module | None = None
        self.fwd: Any = None
        self.opt: torch.optim.Optimizer | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def setup(self, device: torch.device) -> None:
        o = self.options
        self.device = device
        torch.manual_seed(o["seed"])
        self.model = TransformerLM(o["vocab"], o["context"], o["d_model"], o["num_layers"], o["num_heads"], o["d_ff"], o["positions"]).to(device)
        wrapped: nn.Module = self.model
        if o.get("distributed", "none") != "none":
            from memprof.workloads import distributed

            self._own_group = distributed.init(device)
            wrapped = distributed.wrap(self.model, o["distributed"], device)
        self.fwd = torch.compile(wrapped) if o["compile"] else wrapped
        self.loss_fn = LMLoss()
        g = torch.Generator(device="cpu").manual_seed(o["seed"])
        self.x = torch.randint(0, o["vocab"], (o["batch"], o["context"]), generator=g).to(device)
        self.y = torch.randint(0, o["vocab"], (o["batch"], o["context"]), generator=g).to(device)
        if o["mode"] == "train":
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=o["lr"])
        if o["mode"] == "forward":
            self.model.requires_grad_(False)

    def step(self, phase: PhaseFn = nullphase) -> None:
        o = self.options
        assert self.model is not None
        if o["mode"] != "forward":
            for p in self.model.parameters():
                p.grad = None
        with phase("forward"):
            with autocast_ctx(self.device, o["dtype"]):
                logits = self.fwd(self.x)
                loss = self.loss_fn(logits, self.y)
        del logits
        if o["mode"] == "forward":
            del loss
            return
        with phase("backward"):
            loss.backward()
        del loss
        if o["mode"] == "train":
            assert self.opt is not None
            with phase("optimizer"):
                self.opt.step()

    def tensors(self) -> dict[str, list[torch.Tensor]]:
        if self.model is None:
            return {}
        params = list(self.model.parameters())
        state: list[torch.Tensor] = []
        if self.opt is not None:
            for st in self.opt.state.values():
                state += [v for k, v in st.items() if isinstance(v, torch.Tensor) and k in ("exp_avg", "exp_avg_sq")]
        return {
            "parameters": params + list(self.model.buffers()),
            "gradients": [p.grad for p in params if p.grad is not None],
            "optimizer_state": state,
            "inputs": [t for t in (self.x, self.y) if t is not None],
        }

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    def slug(self) -> str:
        o = self.options
        mode = {"forward": "fwd", "forward_backward": "fwdbwd", "train": "train"}[o["mode"]]
        comp = "compiled" if o["compile"] else "eager"
        dist = f"-{o['distributed']}" if o.get("distributed", "none") != "none" else ""
        return f"transformer-{o['size']}-ctx{o['context']}-b{o['batch']}-{mode}-{comp}-{o['dtype']}{dist}"

    def teardown(self) -> None:
        own = self._own_group
        super().teardown()
        if own:
            import torch.distributed as dist

            dist.destroy_process_group()
