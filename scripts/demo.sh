#!/usr/bin/env bash
# An embedded demo: generate its dataset, train, write a fused checkpoint and
# test with it. Usage: scripts/demo.sh [falcon-det|parcnet-det|falcon-seg]
# [extra tools/train.py args]. Default: falcon-det (SSDLite-FalconNet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEMO=${1:-falcon-det}
shift || true
case "$DEMO" in
    falcon-det) CONFIG=configs/demo/ssdlite_falcon_shapes.py; FORMAT=coco
                METRIC='coco/bbox_mAP' ;;
    parcnet-det) CONFIG=configs/demo/ssdlite_parcnet_shapes.py; FORMAT=coco
                 METRIC='coco/bbox_mAP' ;;
    falcon-seg) CONFIG=configs/demo/deeplabv3_falcon_shapes.py; FORMAT=voc
                METRIC='mIoU' ;;
    *) echo "unknown demo '$DEMO': expected falcon-det, parcnet-det or falcon-seg" >&2
       exit 2 ;;
esac
WORK_DIR=${WORK_DIR:-work_dirs/demo_$DEMO}

"$PY" tools/misc/make_shapes_dataset.py --format "$FORMAT"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
LAST=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/fuse.py "$CONFIG" "$LAST" "$WORK_DIR/fused.pth"
"$PY" tools/test.py "$CONFIG" "$WORK_DIR/fused.pth" --work-dir "$WORK_DIR/test" \
    2>&1 | tee "$WORK_DIR/test.log"
grep -oE "$METRIC: [0-9.]+" "$WORK_DIR/test.log" | tail -1 \
    | sed "s/^/Demo $DEMO, tested with fused weights: /"
