#!/usr/bin/env bash
# GPU check of the busy-time verdict (memprof.recorder.busy + analysis/verdict.py).
# Run from the repo root on the GPU machine: bash benchmarks/verify_busy.sh [OUTDIR] [PYTHON]
# Expect: small eager bf16 -> ALLOCATOR-BOUND (low utilisation, many tiny kernels);
#         attention naive S=4096 -> COMPUTE-BOUND (utilisation >= 85 %).
set -u
O=${1:-${OUT:-/tmp}/busy}; PY=${2:-python}; mkdir -p "$O"; export PYTHONPATH=$PWD
T="transformer --size small --mode train --context 512 --batch 4 --steps 3"
$PY -m memprof record $T --dtype fp32 --no-progress -o "$O/small-eager-fp32.pickle.gz"
$PY -m memprof record $T --dtype bf16 --no-progress -o "$O/small-eager-bf16.pickle.gz"
$PY -m memprof record $T --dtype bf16 --compile --no-progress -o "$O/small-compiled-bf16.pickle.gz"
$PY -m memprof record attention --impl naive --seq-len 4096 --d 64 --no-progress -o "$O/attn-naive-s4096-d64.pickle.gz"
for f in "$O"/*.pickle.gz; do
  echo "== $f"
  $PY -m memprof explain "$f" | sed -n '/^VERDICT/,/^$/p'
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m.get(k) for k in ('gpu_utilization','gpu_busy_ms','kernel_launches','profiled_host_ms','gpu_busy_error')}, m.get('gpu_busy_profile'))" "${f%.pickle.gz}.meta.json"
done
$PY -m pytest -q -m cuda tests/recorder/test_busy.py
