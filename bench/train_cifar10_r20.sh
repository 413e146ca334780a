#!/usr/bin/env bash
# Train ResNet-20 on CIFAR-10 (../shared/datasets/cifar10-jpeg) with and without stochastic depth, side by side
# (one thread each on a 2-core machine) with the named recipe, then record Figure 1 (sd_vs_plain.py).
#
# The runs take several working periods on this CPU: each invocation resumes the checkpoints in $RUNS (committed,
# ~2 MB each, exactly resumable) and, with STOP_AFTER=N, stops cleanly after epoch N. When both are complete,
# Figure 1 and the slim checkpoints are written to bench/results/.
#   bash bench/train_cifar10_r20.sh                 # run to the end
#   STOP_AFTER=60 bash bench/train_cifar10_r20.sh   # stop after epoch 60 (commit $RUNS, continue later)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
RECIPE=${RECIPE:-cifar-resnet}
RUNS=${RUNS:-bench/checkpoints}
mkdir -p "$RUNS"
for v in sd plain; do
  flag=$([ $v = sd ] && echo --sd || echo --no-sd)
  resume=$([ -f "$RUNS/r20_$v.pt" ] && echo --resume || true)
  edgeskip train --dataset imagefolder --data-dir "$DATA" --depth 20 --recipe "$RECIPE" $flag --seed 0 --threads 1 \
    --out "$RUNS/r20_$v.pt" $resume ${STOP_AFTER:+--stop-after $STOP_AFTER} >> "$RUNS/train_$v.log" 2>&1 &
done
wait
python - "$RUNS" <<'PY' || { echo "runs not complete yet; run this script again to continue them"; exit 0; }
import sys
from edgeskip.train import load_checkpoint
sys.exit(0 if all(load_checkpoint(f"{sys.argv[1]}/r20_{v}.pt").complete for v in ("sd", "plain")) else 1)
PY
python bench/sd_vs_plain.py --sd "$RUNS/r20_sd.pt" --plain "$RUNS/r20_plain.pt" --out bench/results
