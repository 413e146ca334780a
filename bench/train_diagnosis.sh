#!/usr/bin/env bash
# Diagnosis of the training recipe: short controlled runs of ResNet-20 on CIFAR-10 (JPEG copy), same seed,
# same epochs, one change each against the baseline (today's recipe), two runs side by side (one thread each).
# Then bench/diagnosis.py tabulates val/test accuracy and curves into bench/results/train_diagnosis.{json,png}.
#   EPOCHS=10 bash bench/train_diagnosis.sh            (RESUME=1 continues killed runs)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
EPOCHS=${EPOCHS:-10}
OUT=bench/work/diag
mkdir -p "$OUT"
# today's recipe (conventional): the 45-epoch run's settings
BASE="--dataset imagefolder --data-dir $DATA --depth 20 --batch-size 128 --lr 0.1 --weight-decay 5e-4
      --schedule cosine --seed 0 --threads 1 --epochs $EPOCHS --quiet"
declare -A V=(
  [base]="--no-sd"
  [fp32]="--no-sd --amp fp32"
  [wd1e-4]="--no-sd --weight-decay 1e-4"
  [no_zero_init]="--no-sd --no-zero-init-last"
  [warmup2]="--no-sd --warmup 2"
  [proj]="--no-sd --shortcut proj"
  [sd_base]="--sd --sd-mode batch --p-last 0.5"
  [sd_row]="--sd --sd-mode row --p-last 0.5"
  [bs256]="--no-sd --batch-size 256 --lr 0.2"
  [sd_wd1e-4]="--sd --weight-decay 1e-4"
)
ORDER=${ORDER:-"base fp32 wd1e-4 no_zero_init warmup2 proj sd_base sd_row bs256 sd_wd1e-4"}
run() {
  local v=$1
  if [ -f "$OUT/$v.done" ]; then return; fi
  # shellcheck disable=SC2086
  edgeskip train $BASE ${V[$v]} --out "$OUT/$v.pt" ${RESUME:+--resume} > "$OUT/$v.log" 2>&1 && touch "$OUT/$v.done"
}
set -- $ORDER
while [ $# -gt 0 ]; do
  run "$1" & a=$!
  if [ $# -gt 1 ]; then run "$2" & b=$!; wait $b; shift; fi
  wait $a; shift
done
python bench/diagnosis.py --dir "$OUT" --order "$ORDER" --out bench/results/train_diagnosis
