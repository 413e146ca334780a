#!/usr/bin/env bash
# Train a CIFAR ResNet (default ResNet-110) on CIFAR-10 with and without stochastic depth, side by side on one
# GPU, within a fixed time budget: the device machine lent to a session runs one command of at most 10 minutes.
#
# The data travel as one pack of the JPEG files (bench/pack_images.py; the machine gets the working tree only).
# A probe trains one epoch of each model side by side; the schedule (the recipe's cosine, with its warm-up) is
# then sized so both runs end inside BUDGET seconds from the start, and the runs start afresh with that many
# epochs. Each writes its full checkpoint (resumable) to $OUT_DIR after every epoch and a slim copy at the end;
# both record DATA_AS as their data folder, so this machine's commands (evaluate, pareto, sd_vs_plain.py) find
# the data where it lives here.
#   python bench/pack_images.py pack ../shared/datasets/cifar10-jpeg .gpu/cifar10-jpeg.npz    # here, once
#   OUT_DIR=$OUT BUDGET=520 bash bench/train_cifar10_gpu.sh                                  # there (device run)
#
# A schedule longer than one lent session: EPOCHS=N fixes it (no probe), each run trains until the budget and
# keeps its full checkpoint; the next session carries that checkpoint in RESUME_FROM and continues it exactly
# (--resume). The carried tree is limited to 64 MiB: the training JPEGs (45 MiB packed without test/) and one
# full ResNet-110 checkpoint (13.5 MiB) fit, two do not, so such runs take one model per session (MODELS=sd).
#   EPOCHS=160 MODELS=sd RESUME_FROM=.gpu OUT_DIR=$OUT BUDGET=520 bash bench/train_cifar10_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEPTH=${DEPTH:-110}
BATCH=${BATCH:-128}
LR=${LR:-0.1}
WARMUP=${WARMUP:-2}
BUDGET=${BUDGET:-520}  # seconds from this script's start by which both runs must have ended
MAX_EPOCHS=${MAX_EPOCHS:-200}
PACK=${PACK:-.gpu/cifar10-jpeg.npz}
DATA=${DATA:-/tmp/edgeskip-data/cifar10-jpeg}  # keeps the folder's name: the data set id is the same as here
DATA_AS=${DATA_AS:-../shared/datasets/cifar10-jpeg}
OUT_DIR=${OUT_DIR:-bench/checkpoints}
THREADS=${THREADS:-4}
EXTRA=${EXTRA:-}
EPOCHS=${EPOCHS:-}  # fixed schedule, continued across sessions (else: sized to this budget by a probe)
MODELS=${MODELS:-sd plain}
RESUME_FROM=${RESUME_FROM:-}
start=$(date +%s)
mkdir -p "$OUT_DIR"
[ -d "$DATA/train" ] || $PY bench/pack_images.py unpack "$PACK" "$DATA"
common="--dataset imagefolder --data-dir $DATA --depth $DEPTH --recipe cifar-resnet --batch-size $BATCH --lr $LR
  --warmup $WARMUP --seed 0 --threads $THREADS $EXTRA"
flag() { [ "$1" = sd ] && echo --sd || echo --no-sd; }

with_data() {  # rewrite the checkpoints' data folder: with_data DIR FILE...
  $PY - "$@" <<'PY'
import dataclasses, sys
from edgeskip.train import load_checkpoint
for path in sys.argv[2:]:
    ck = load_checkpoint(path)
    dataclasses.replace(ck, data=dataclasses.replace(ck.data, data_dir=sys.argv[1])).save(path, slim=not ck.optimizer)
PY
}

if [ -n "$EPOCHS" ]; then
  left=$(( start + BUDGET - $(date +%s) ))
  for v in $MODELS; do
    ck="$OUT_DIR/r${DEPTH}_$v.pt"
    resume=""
    if [ -n "$RESUME_FROM" ] && [ -f "$RESUME_FROM/r${DEPTH}_$v.pt" ]; then
      cp "$RESUME_FROM/r${DEPTH}_$v.pt" "$ck" && with_data "$DATA" "$ck" && resume=--resume
    fi
    timeout "$left" $PY -m edgeskip train $common $(flag $v) --epochs "$EPOCHS" --out "$ck" $resume \
      >> "$OUT_DIR/train_r${DEPTH}_$v.log" 2>&1 &
  done
  wait || true
  for v in $MODELS; do with_data "$DATA_AS" "$OUT_DIR/r${DEPTH}_$v.pt"; done
  tail -n 2 "$OUT_DIR"/train_r${DEPTH}_*.log
  echo "total $(( $(date +%s) - start )) s"
  exit 0
fi

probe=$(mktemp -d)
t0=$(date +%s)
for v in sd plain; do
  $PY -m edgeskip train $common $(flag $v) --epochs "$MAX_EPOCHS" --stop-after 1 --out "$probe/$v.pt" \
    > "$probe/$v.log" 2>&1 &
done
wait
probe_wall=$(( $(date +%s) - t0 ))
epochs=$($PY - "$probe" "$probe_wall" "$start" "$BUDGET" "$MAX_EPOCHS" <<'PY' || { tail -n 20 "$probe"/*.log >&2; exit 1; }
import sys, time
from edgeskip.train import load_checkpoint
probe, wall, start, budget, most = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
per_epoch = max(load_checkpoint(f"{probe}/{v}.pt").history[0]["seconds"] for v in ("sd", "plain"))
overhead = wall - per_epoch  # start-up: imports, data, device
left = start + budget - time.time() - overhead - 10
n = min(most, int(left / (per_epoch * 1.05)))
print(f"probe: {per_epoch:.1f} s per epoch side by side, {overhead:.0f} s start-up, {left:.0f} s left: {n} epochs",
      file=sys.stderr)
print(n)
PY
)
[ "$epochs" -ge 1 ] || { echo "error: the budget leaves no whole epoch"; exit 1; }

left=$(( start + BUDGET - $(date +%s) ))
for v in sd plain; do
  ck="$OUT_DIR/r${DEPTH}_$v.pt"
  rm -f "$ck"
  # a run that overruns is stopped at the budget; its last epoch's checkpoint stays (continue with --resume)
  timeout "$left" $PY -m edgeskip train $common $(flag $v) --epochs "$epochs" --out "$ck" \
    > "$OUT_DIR/train_r${DEPTH}_$v.log" 2>&1 &
done
wait || true
with_data "$DATA_AS" "$OUT_DIR/r${DEPTH}_sd.pt" "$OUT_DIR/r${DEPTH}_plain.pt"
$PY - "$OUT_DIR" "$DEPTH" <<'PY'
import sys
from edgeskip.train import load_checkpoint
out, depth = sys.argv[1:]
for v in ("sd", "plain"):
    ck = load_checkpoint(f"{out}/r{depth}_{v}.pt")
    ck.save(f"{out}/r{depth}_{v}.slim.pt", slim=True)
    h = ck.history[-1]
    print(f"{v}: epoch {ck.epoch}/{ck.train_cfg.epochs}, val {h['val_acc']:.4f}, {sum(r['seconds'] for r in ck.history):.0f} s")
PY
echo "total $(( $(date +%s) - start )) s"
