#!/usr/bin/env bash
# Dynamic Fractional Skipping on CIFAR-10 ResNet-20 (#14): DFS gates (skip / 8-bit / 16-bit / full) added to the
# conventionally trained backbone (bench/checkpoints/r20_plain.pt, as DFS starts from a pretrained ResNet).
# Step 1 (dfs-full): backbone frozen, the gate learns to run everything at full precision.
# Step 2 (dfs): joint training toward each computation-percentage target in CPS, alpha's sign switched per batch.
# One thread per run; PAR step-2 runs at a time. Checkpoints in bench/work/ (ignored); running the script again
# continues every run that has a checkpoint (a finished one returns at once).
set -euo pipefail
cd "$(dirname "$0")/.."
INIT=${INIT:-bench/checkpoints/r20_plain.pt}
FULL_EPOCHS=${FULL_EPOCHS:-1}
CP_EPOCHS=${CP_EPOCHS:-2}
CPS=${CPS:-"0.2 0.4 0.6 0.8"}
ALPHA=${ALPHA:-5}
LR=${LR:-0.01}
PAR=${PAR:-4}
mkdir -p bench/work
resume() { [[ -f "$1" ]] && echo --resume || true; }
common=(--gates dfs --batch-size 128 --weight-decay 5e-4 --schedule cosine --seed 0 --threads 1)
edgeskip train "${common[@]}" --init "$INIT" --gate-mode dfs-full --epochs "$FULL_EPOCHS" --lr 0.01 \
  --out bench/work/r20_dfs_full.pt $(resume bench/work/r20_dfs_full.pt) > bench/work/train_dfs_full.log 2>&1
run_cp() {
  edgeskip train "${common[@]}" --init bench/work/r20_dfs_full.pt --gate-mode dfs --cp-target "$1" \
    --alpha "$ALPHA" --epochs "$CP_EPOCHS" --lr "$LR" \
    --out "bench/work/r20_dfs_cp$1.pt" $(resume "bench/work/r20_dfs_cp$1.pt") > "bench/work/train_dfs_cp$1.log" 2>&1
}
n=0
for cp in $CPS; do
  run_cp "$cp" &
  n=$((n + 1))
  if (( n % PAR == 0 )); then wait; fi
done
wait
