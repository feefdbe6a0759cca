#!/usr/bin/env bash
# Many GPUs under torchrun: DDP and FSDP2 training of the built-in Transformer on 2 and 4 ranks,
# the two torchrun recording forms and the API with ranks that differ, and an OOM on one rank.
#   bash benchmarks/gpu_ranks.sh OUTDIR            # on the GPU machine (4 GPUs)
#   SIZE=tiny NPROCS="2" bash benchmarks/gpu_ranks.sh /tmp/x   # a dry run on CPU (gloo)
# Then: python benchmarks/ranks_gpu_table.py OUTDIR > benchmarks/results/ranks_h200.md
set -u
OUT=${1:?OUTDIR}
PY=${PY:-python3}
SIZE=${SIZE:-small}
NPROCS=${NPROCS:-"2 4"}
STEPS=${STEPS:-3}
T=${T:-150}
LAUNCH="$PY -m torch.distributed.run --standalone"
mkdir -p "$OUT"
run() { echo "+ $*"; local t0=$SECONDS; timeout "$T" "$@"; echo "rc $? in $((SECONDS - t0)) s"; }
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
for n in $NPROCS; do
  for mode in ddp fsdp; do
    run $LAUNCH --nproc-per-node "$n" -m memprof record transformer --size "$SIZE" --distributed "$mode" \
        --steps "$STEPS" --warmup 2 --profile-steps 0 --no-progress --gzip -o "$OUT/transformer-$SIZE-$mode-n$n"
    run $PY -m memprof stats "$OUT/transformer-$SIZE-$mode-n$n"
  done
done
# The three ways to record a script, ranks differing (batch 8 on even ranks, 512 on odd ones).
run $PY -m memprof record -o "$OUT/ddp-script-wrapped" -- $LAUNCH --nproc-per-node 2 examples/ddp_train.py --batch 8,512 --hidden 1024
run $LAUNCH --nproc-per-node 2 -m memprof record -o "$OUT/ddp-script-inside.pickle.gz" -- python examples/ddp_train.py --batch 8,512 --hidden 1024
run $LAUNCH --nproc-per-node 2 examples/ddp_train.py --batch 8,512 --hidden 1024 --api "$OUT/ddp-script-api.pickle.gz"
# Out of memory on rank 1 at step 1: both ranks' snapshots must be written.
run $PY -m memprof record -o "$OUT/ddp-script-oom" -- $LAUNCH --nproc-per-node 2 examples/ddp_train.py --batch 8,512 --hidden 1024 --oom-rank 1 --oom-step 1
for r in ddp-script-wrapped ddp-script-inside ddp-script-api ddp-script-oom; do run $PY -m memprof stats "$OUT/$r"; done
ls -la "$OUT"/*
