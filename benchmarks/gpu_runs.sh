#!/usr/bin/env bash
# GPU runs for the lead (H100 80 GB, ~10 minutes in total). Run from the repo root.
# Each block is independent; sweeps resume when re-run with the same --out.
set -u
export PYTHONPATH=$PWD
PY=${PY:-python}

# 1. Issue acceptance: replayed peak within 1% of the allocator's, a real OOM (~2-3 min, compile included)
$PY -m pytest -q -m cuda tests/recorder/test_record.py

# 2. Golden snapshots (small, fast; gzip'd) + a script recording
mkdir -p snapshots/golden
for impl in naive compiled sdpa; do
  $PY -m memprof record attention --impl $impl --seq-len 4096 --d 64 --gzip -o snapshots/golden/attention-$impl-s4096-d64-b8-fwdbwd-fp32-cuda.pickle.gz
done
$PY -m memprof record transformer --size small --mode train --context 512 --batch 4 --gzip -o snapshots/golden/transformer-small-train-eager-fp32-cuda.pickle.gz
$PY -m memprof record transformer --size small --mode train --context 512 --batch 4 --dtype bf16 --gzip -o snapshots/golden/transformer-small-train-eager-bf16-cuda.pickle.gz
$PY -m memprof record transformer --size small --mode train --context 512 --batch 4 --dtype bf16 --compile --gzip -o snapshots/golden/transformer-small-train-compiled-bf16-cuda.pickle.gz
$PY -m memprof record attention --impl naive --seq-len 65536 --d 16 --gzip -o snapshots/golden/attention-naive-s65536-oom-cuda.pickle.gz; echo "exit $? (3 = OOM, expected)"
$PY -m memprof record -o snapshots/golden/script-train_tiny-cuda.pickle -- python examples/train_tiny.py --steps 3
for f in snapshots/golden/*.pickle*; do $PY -m memprof stats "$f" --top 3; done

# 3. Recording overhead (~30 s) -> benchmarks/results/record_overhead.md
$PY benchmarks/record_overhead.py --size small --context 512 --batch 4 --steps 10 --repeats 2

# 4. Attention sweep (54 configs, ~4 min): naive OOMs at 32768 on 80 GB, sdpa does not
$PY -m memprof sweep attention --seq-len 256,1024,4096,8192,16384,32768 --d 16,64,128 --impl naive,compiled,sdpa \
  --batch 8 --mode forward_backward --out snapshots/sweep-attention-h100

# 5. Transformer sweep (12 configs, ~4 min, mostly torch.compile): train mode times forward, backward and optimizer apart
$PY -m memprof sweep transformer --size small,medium,large --mode train --compile both --dtype fp32,bf16 \
  --context 512 --batch 4 --out snapshots/sweep-transformer-h100
