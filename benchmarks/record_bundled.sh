#!/usr/bin/env bash
# Record the bundled real-GPU snapshots in snapshots/h100/ (run from the repo root on a CUDA machine):
#   bash benchmarks/record_bundled.sh [PYTHON]
set -u
PY=${1:-python}; O=snapshots/h100; mkdir -p $O; export PYTHONPATH=$PWD
R="$PY -m memprof record"
for impl in naive compiled sdpa; do
  $R attention --impl $impl --seq-len 4096 --d 64 --batch 8 --gzip --no-progress -o $O/attention-$impl-s4096-d64-b8-fwdbwd-fp32.pickle.gz
done
T="transformer --size small --mode train --context 512 --batch 4 --steps 3 --gzip --no-progress"
$R $T --dtype fp32 -o $O/transformer-small-train-eager-fp32.pickle.gz
$R $T --dtype bf16 -o $O/transformer-small-train-eager-bf16.pickle.gz
$R $T --dtype bf16 --compile -o $O/transformer-small-train-compiled-bf16.pickle.gz
# runs out of memory in backward (4 B x S x S fp32 matrices of 26 GB on an 80 GB card): exit 3 expected
$R attention --impl naive --seq-len 28672 --d 64 --batch 8 --gzip --no-progress -o $O/attention-naive-s28672-d64-b8-oom.pickle.gz; echo "oom run exit $?"
$R --gzip --no-progress -o $O/script-train_tiny.pickle.gz -- python examples/train_tiny.py --steps 3
for f in $O/*.pickle.gz; do
  echo "== $f"; $PY -m memprof stats "$f" --top 3
  $PY -m memprof explain "$f" | sed -n '/^VERDICT/,/^$/p'
done
