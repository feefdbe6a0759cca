"""Record your own loop with the Python API: ``python examples/record_api.py``."""

from __future__ import annotations

import torch
import torch.nn as nn

import memprof


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512)).to(device)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 512, device=device)
    with memprof.record("snapshots/record-api-example.pickle", device=device) as rec:
        for _ in range(3):
            with memprof.phase("forward"):
                loss = model(x).square().mean()
            with memprof.phase("backward"):
                loss.backward()
            with memprof.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            rec.step()
    print("wrote snapshots/record-api-example.pickle; try: memprof stats snapshots/record-api-example.pickle")


if __name__ == "__main__":
    main()
