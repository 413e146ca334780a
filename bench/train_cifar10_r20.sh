#!/usr/bin/env bash
# Train ResNet-20 on CIFAR-10 (../shared/datasets/cifar10-jpeg) with and without stochastic depth,
# side by side (one thread each on a 2-core machine), then record the skipped-blocks comparison.
# Checkpoints go to bench/work/ (ignored); slim copies and results to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
EPOCHS=${EPOCHS:-45}
mkdir -p bench/work
for v in sd plain; do
  flag=$([ $v = sd ] && echo --sd || echo --no-sd)
  edgeskip train --dataset imagefolder --data-dir "$DATA" --depth 20 $flag --epochs "$EPOCHS" \
    --batch-size 128 --lr 0.1 --weight-decay 5e-4 --schedule cosine --seed 0 --threads 1 \
    --out bench/work/r20_$v.pt ${RESUME:+--resume} > bench/work/train_$v.log 2>&1 &
done
wait
python bench/sd_vs_plain.py --sd bench/work/r20_sd.pt --plain bench/work/r20_plain.pt --out bench/results
