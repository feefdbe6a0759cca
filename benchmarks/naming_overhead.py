"""Step time with and without the recorder's naming hooks (CPU): ``python benchmarks/naming_overhead.py``.

The GPT of examples/gpt_user.py (d 128, 4 layers, batch 8 x 64), AdamW; 16 rounds, the order of the two
variants alternating; prints the median paired ratio (hooks on / off) and the median step times.
"""
import sys, time, statistics, importlib.util
import torch
sys.argv = ["gpt"]
spec = importlib.util.spec_from_file_location("gpt_user", "examples/gpt_user.py"); g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
from memprof.recorder.naming import Namer
torch.manual_seed(0)
model = g.GPT(256, 128, 4, 4, 64); opt = torch.optim.AdamW(model.parameters())
x = torch.randint(0, 256, (8, 64)); y = torch.randint(0, 256, (8, 64))
def step():
    _, loss = model(x, y); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
res = {"off": [], "on": []}
for r in range(16):
    for mode in (("off", "on") if r % 2 else ("on", "off")):
        n = Namer("cpu").start() if mode == "on" else None
        t = time.perf_counter(); step(); res[mode].append(time.perf_counter() - t)
        if n: n.stop()
m = {k: statistics.median(v) * 1000 for k, v in res.items()}
ratios = [b / a for a, b in zip(res["off"], res["on"])]
print("median paired ratio on/off", round(statistics.median(ratios), 3))
print(f"median step ms: off {m['off']:.1f} on {m['on']:.1f} ratio {m['on']/m['off']:.2f}")
