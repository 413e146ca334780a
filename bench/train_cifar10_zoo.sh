#!/usr/bin/env bash
# Issue #13's benchmark models: library networks sized for this CPU, trained on CIFAR-10 (../shared, JPEG copy,
# 32x32) with and without stochastic depth, side by side (one thread each), then Figure 1 per family
# (bench/sd_vs_plain.py: accuracy vs skipped blocks, sensitivity order + the band of 500 random configs per N).
# Resumable: each invocation continues the checkpoints in $RUNS.
#   bash bench/train_cifar10_zoo.sh                 # both families
#   FAMILIES=timm_r34n bash bench/train_cifar10_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
RUNS=${RUNS:-bench/work/zoo}
FAMILIES=${FAMILIES:-"timm_r34n mbv2_050"}
mkdir -p "$RUNS"
model_args() {
  case $1 in
    timm_r34n) echo "--model timm:resnet34 --model-arg channels=[16,32,64,128] --model-arg stem_width=16 --epochs 20";;
    mbv2_050) echo "--model torchvision:mobilenet_v2 --model-arg width_mult=0.5 --epochs 15";;
    *) echo "unknown family $1" >&2; exit 2;;
  esac
}
for fam in $FAMILIES; do
  args=$(model_args "$fam")
  for v in sd plain; do
    flag=$([ $v = sd ] && echo --sd || echo --no-sd)
    resume=$([ -f "$RUNS/${fam}_$v.pt" ] && echo --resume || true)
    edgeskip train --dataset imagefolder --data-dir "$DATA" $args $flag --batch-size 128 --lr 0.1 \
      --schedule cosine --warmup 1 --weight-decay 5e-4 --seed 0 --threads 1 --out "$RUNS/${fam}_$v.pt" $resume \
      >> "$RUNS/train_${fam}_$v.log" 2>&1 &
  done
  wait
  python bench/sd_vs_plain.py --sd "$RUNS/${fam}_sd.pt" --plain "$RUNS/${fam}_plain.pt" --name "cifar10_${fam}_sd_vs_plain" \
    --slim "${fam}_sd.pt,${fam}_plain.pt" --title "$fam, CIFAR-10 (JPEG copy)" --out bench/results
done
