#!/usr/bin/env bash
# The main job: set up, then train + evaluate + predict on Penn-Fudan.
# Data: $1, else $SEGTUNE_DATA, else ../shared/data/PennFudanPed.
# Preset 'auto' runs the tutorial recipe when a GPU or the COCO weights are at hand, and a short
# CPU schedule from random initialisation (about 10 minutes on 2 cores) when neither is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${1:-${SEGTUNE_DATA:-../shared/data/PennFudanPed}}
RUN=runs/pennfudan-$(date +%Y%m%d-%H%M%S)
SEGTUNE=.venv/bin/segtune
$SEGTUNE train --data "$DATA" --out "$RUN" --preset auto
$SEGTUNE predict "$RUN/weights/best.pt" --split test --out "$RUN/predictions"
$SEGTUNE evaluate "$RUN/weights/best.pt" --out "$RUN/evaluation.json"
echo
echo "Run folder: $RUN  (config.yaml, split.json, metrics.csv, train.log, weights/)"
echo "Pictures:   $RUN/predictions/*.png  (COCO results: $RUN/predictions/predictions.json)"
