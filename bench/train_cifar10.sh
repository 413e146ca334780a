#!/usr/bin/env bash
# Train a CIFAR ResNet (default ResNet-20; DEPTH=56, ...) on CIFAR-10 (../shared/datasets/cifar10-jpeg) with and
# without stochastic depth, side by side (one thread each on a 2-core machine) with the named recipe, then record
# Figure 1 (sd_vs_plain.py).
#
# The runs take several working periods on this CPU: each invocation resumes the checkpoints in $RUNS (committed,
# exactly resumable) and, with STOP_AFTER=N, stops cleanly after epoch N. When both are complete, Figure 1 and
# the slim checkpoints are written to bench/results/.
#   bash bench/train_cifar10.sh                        # ResNet-20, run to the end
#   STOP_AFTER=60 bash bench/train_cifar10.sh          # stop after epoch 60 (commit $RUNS, continue later)
#   DEPTH=56 EXTRA="--warmup 2" bash bench/train_cifar10.sh   # ResNet-56 (lr 0.1 needs a warm-up at this depth)
#   THREADS=2 ... bash bench/train_cifar10.sh          # one model left to train (the other complete, its band
#                                                      # cached): give it both cores (ResNet-56: x1.45 per epoch)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
RECIPE=${RECIPE:-cifar-resnet}
RUNS=${RUNS:-bench/checkpoints}
DEPTH=${DEPTH:-20}
EXTRA=${EXTRA:-}
THREADS=${THREADS:-1}  # per training process
# Figure 1's random band: ResNet-20 has 64 skip arrays (all of them, whole test split); deeper nets sample
# 500 per N on a seeded 500-image test subset (ResNet-56: 0.56 s per array on 1,000 images with 2 threads,
# ~11,000 arrays per model; the whole split would take ~17 h per model)
FIG_ARGS=${FIG_ARGS:-$([ "$DEPTH" = 20 ] || echo "--band-images 500")}
mkdir -p "$RUNS"
complete() {  # exit 0 when every checkpoint named is trained to its last epoch
  python - "$@" <<'PY'
import sys
from edgeskip.train import load_checkpoint
sys.exit(0 if all(load_checkpoint(p).complete for p in sys.argv[1:]) else 1)
PY
}
for v in sd plain; do
  flag=$([ $v = sd ] && echo --sd || echo --no-sd)
  ck="$RUNS/r${DEPTH}_$v.pt"
  resume=$([ -f "$ck" ] && echo --resume || true)
  other="$RUNS/r${DEPTH}_$([ $v = sd ] && echo plain || echo sd).pt"
  # on --resume the checkpoint's stored settings win; EXTRA only shapes a new run. A model that finishes
  # while the other still trains computes its half of Figure 1's band on the core it frees (kept in
  # $RUNS/r${DEPTH}_$v.band.json, continued if interrupted); otherwise the figure below does it on 2 threads
  ( edgeskip train --dataset imagefolder --data-dir "$DATA" --depth "$DEPTH" --recipe "$RECIPE" $flag --seed 0 \
      --threads "$THREADS" $EXTRA --out "$ck" $resume ${STOP_AFTER:+--stop-after $STOP_AFTER} >> "$RUNS/train_r${DEPTH}_$v.log" 2>&1
    if complete "$ck" && ! { [ -f "$other" ] && complete "$other"; }; then
      python bench/sd_vs_plain.py --only $v --$v "$ck" --band-cache "$RUNS" --threads 1 $FIG_ARGS
    fi ) &
done
wait
complete "$RUNS/r${DEPTH}_sd.pt" "$RUNS/r${DEPTH}_plain.pt" \
  || { echo "runs not complete yet; run this script again to continue them"; exit 0; }
python bench/sd_vs_plain.py --sd "$RUNS/r${DEPTH}_sd.pt" --plain "$RUNS/r${DEPTH}_plain.pt" --band-cache "$RUNS" \
  --name "cifar10_r${DEPTH}_sd_vs_plain" --slim "r${DEPTH}_sd.pt,r${DEPTH}_plain.pt" --out bench/results \
  --title "ResNet-${DEPTH}, CIFAR-10 (JPEG copy)" $FIG_ARGS
