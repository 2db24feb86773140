#!/usr/bin/env bash
# The embedded demo: generate the shapes dataset, train SSDLite-FalconNet on
# it, write a fused checkpoint and test it (COCO bbox mAP).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/demo/ssdlite_falcon_shapes.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_ssdlite_falcon}

"$PY" tools/misc/make_shapes_dataset.py --root data/shapes_coco
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
LAST=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/reparameterize.py "$CONFIG" "$LAST" "$WORK_DIR/fused.pth"
"$PY" tools/test.py "$CONFIG" "$WORK_DIR/fused.pth" --work-dir "$WORK_DIR/test" \
    | tee "$WORK_DIR/test.log"
grep -o 'coco/bbox_mAP: [0-9.]*' "$WORK_DIR/test.log" | tail -1 \
    | sed 's/^/Demo result (fused weights): /'
