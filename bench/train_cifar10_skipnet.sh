#!/usr/bin/env bash
# SkipNet baseline on CIFAR-10 ResNet-20: FFGate-I gates added to the conventionally trained backbone
# (bench/work/r20_plain.pt from bench/train_cifar10.sh; SkipNet's own recipe starts from a
# pretrained ResNet), supervised pre-training (SP, straight-through), then hybrid RL (HRL).
# One thread (2-core machine). Checkpoints in bench/work/ (ignored); RESUME=1 continues both stages.
set -euo pipefail
cd "$(dirname "$0")/.."
SP_EPOCHS=${SP_EPOCHS:-10}
HRL_EPOCHS=${HRL_EPOCHS:-5}
ALPHA=${ALPHA:-0.5}
mkdir -p bench/work
edgeskip train --gates ffgate1 --init bench/work/r20_plain.pt --gate-mode sp --epochs "$SP_EPOCHS" \
  --batch-size 128 --lr 0.01 --weight-decay 5e-4 --schedule cosine --seed 0 --threads 1 \
  --out bench/work/r20_skipnet_sp.pt ${RESUME:+--resume} > bench/work/train_skipnet_sp.log 2>&1
edgeskip train --gates ffgate1 --init bench/work/r20_skipnet_sp.pt --gate-mode hrl --alpha "$ALPHA" \
  --epochs "$HRL_EPOCHS" --batch-size 128 --lr 0.001 --weight-decay 5e-4 --schedule cosine --seed 0 --threads 1 \
  --out bench/work/r20_skipnet_hrl.pt ${RESUME:+--resume} > bench/work/train_skipnet_hrl.log 2>&1
