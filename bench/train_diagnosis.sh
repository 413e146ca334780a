#!/usr/bin/env bash
# Diagnosis of the training recipe: short controlled runs of ResNet-20 on CIFAR-10 (JPEG copy), same seed,
# same epochs, one change each against the baseline (the recipe of the 45-epoch runs; every setting it relies on
# is pinned, so later changes of defaults do not move it), two at a time (one thread each).
# A killed run is resumed from its checkpoint when the script is started again.
# Then bench/diagnosis.py tabulates val/test accuracy and curves into bench/results/train_diagnosis.{json,png}.
#   EPOCHS=10 bash bench/train_diagnosis.sh
# STAGE=regularise: the second round, against the cifar-resnet recipe the first round produced (its 200-epoch
# models fit their training data, so regularisers are tried), written to bench/results/train_regularise.*:
#   STAGE=regularise EPOCHS=40 SLOTS=3 bash bench/train_diagnosis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
EPOCHS=${EPOCHS:-10}
STAGE=${STAGE:-recipe}
SLOTS=${SLOTS:-2}
if [ "$STAGE" = regularise ]; then
OUT=${OUT:-bench/work/diag_reg}
RESULT=bench/results/train_regularise
BASE="--dataset imagefolder --data-dir $DATA --recipe cifar-resnet --depth 20 --seed 0 --threads 1
      --epochs $EPOCHS --quiet"
declare -A V=(
  [base]="--no-sd"
  [cutout16]="--no-sd --cutout 16"
  [ls0.1]="--no-sd --label-smoothing 0.1"
)
ORDER=${ORDER:-"base cutout16 ls0.1"}
else
OUT=${OUT:-bench/work/diag}
RESULT=bench/results/train_diagnosis
# today's recipe (the 45-epoch run's settings); every variant changes one thing
BASE="--dataset imagefolder --data-dir $DATA --depth 20 --batch-size 128 --lr 0.1 --weight-decay 5e-4
      --schedule cosine --seed 0 --threads 1 --epochs $EPOCHS --quiet --shortcut pad --zero-init-last
      --sd-mode batch --sd-scope all --amp auto"
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
  [sd_no_zero_init]="--sd --no-zero-init-last"
  [sd_gated]="--sd --sd-scope gated"
  # the recipe candidates: the two changes that helped, together
  [proj_no_zero_init]="--no-sd --shortcut proj --no-zero-init-last"
  [sd_proj_no_zero_init]="--sd --shortcut proj --no-zero-init-last"
  [sd_proj_no_zero_init_gated]="--sd --shortcut proj --no-zero-init-last --sd-scope gated"
)
ORDER=${ORDER:-"base fp32 wd1e-4 no_zero_init warmup2 proj bs256 proj_no_zero_init sd_base sd_row sd_no_zero_init
                sd_gated sd_proj_no_zero_init sd_proj_no_zero_init_gated"}
fi
mkdir -p "$OUT"
running() { pgrep -fc "edgeskip train .*--out $OUT/" || true; }
run() {
  local v=$1 resume=()
  [ -f "$OUT/$v.pt" ] && resume=(--resume)
  # shellcheck disable=SC2086
  edgeskip train $BASE ${V[$v]} --out "$OUT/$v.pt" "${resume[@]}" > "$OUT/$v.log" 2>&1 && touch "$OUT/$v.done"
}
for v in $ORDER; do
  [ -f "$OUT/$v.done" ] && continue
  pgrep -f "edgeskip train .*--out $OUT/$v.pt" > /dev/null && continue  # already running
  while [ "$(running)" -ge "$SLOTS" ]; do sleep 10; done
  run "$v" &
  sleep 5
done
while [ "$(running)" -gt 0 ]; do sleep 10; done
python bench/diagnosis.py --dir "$OUT" --order "$ORDER" --out "$RESULT" \
  --made-by "STAGE=$STAGE EPOCHS=$EPOCHS bash bench/train_diagnosis.sh"
