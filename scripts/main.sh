#!/usr/bin/env bash
# The main job: set up, then train + evaluate + predict on Penn-Fudan.
# Data: $1, else $SEGTUNE_DATA, else ../shared/data/PennFudanPed.
# Preset 'auto' runs the tutorial recipe when a GPU or the COCO weights are at hand, and segtune's CPU
# recipe from random initialisation (cpu-scratch) when neither is. Training time is capped at
# $SEGTUNE_TIME_LIMIT minutes (default 10; the CPU recipe fits its schedule to it; 60 is its full hour).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${1:-${SEGTUNE_DATA:-../shared/data/PennFudanPed}}
RUN=runs/pennfudan-$(date +%Y%m%d-%H%M%S)
SEGTUNE=.venv/bin/segtune
# --test-size 50: the tutorial's split of Penn-Fudan (120 train / 50 test), so figures compare with it.
$SEGTUNE train --data "$DATA" --out "$RUN" --preset auto --time-limit "${SEGTUNE_TIME_LIMIT:-10}" --test-size 50
$SEGTUNE predict "$RUN/weights/best.pt" --split test --out "$RUN/predictions"
$SEGTUNE evaluate "$RUN/weights/best.pt" --out "$RUN/evaluation.json"
echo
echo "Run folder: $RUN  (config.yaml, split.json, metrics.csv, train.log, weights/)"
echo "Pictures:   $RUN/predictions/*.png  (COCO results: $RUN/predictions/predictions.json)"
if grep -q "^  weights: none" "$RUN/config.yaml"; then
  echo "Note:       no GPU and no COCO-pretrained weights here, so this was segtune's CPU recipe from random"
  echo "            initialisation, cut to ${SEGTUNE_TIME_LIMIT:-10} minutes of training (SEGTUNE_TIME_LIMIT=60 gives its"
  echo "            full hour). With the weights or a GPU, the same command runs the tutorial recipe (about 0.8"
  echo "            bbox AP). See README 'What the main job does here'."
fi
