#!/usr/bin/env bash
# INT8 follow-up of an embedded demo (scripts/demo.sh DEMO first): quantize
# its fused model in ONNX Runtime, calibrated on the generated test images,
# and print fp32 against INT8 accuracy on that test set, the latency ratio
# and the nodes that lose the most. Usage: scripts/quantize_demo.sh
# [falcon-det|parcnet-det|falcon-seg] [extra quantize_onnx.py args].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEMO=${1:-falcon-det}
shift || true
case "$DEMO" in  # the configs of scripts/demo.sh
    falcon-det) CONFIG=configs/demo/ssdlite_falcon_shapes.py ;;
    parcnet-det) CONFIG=configs/demo/ssdlite_parcnet_shapes.py ;;
    falcon-seg) CONFIG=configs/demo/deeplabv3_falcon_shapes.py ;;
    *) echo "unknown demo '$DEMO': expected falcon-det, parcnet-det or falcon-seg" >&2
       exit 2 ;;
esac
WORK_DIR=${WORK_DIR:-work_dirs/demo_$DEMO}
if [ ! -f "$WORK_DIR/fused.pth" ]; then
    echo "no $WORK_DIR/fused.pth: run scripts/demo.sh $DEMO first" >&2
    exit 2
fi
"$PY" tools/deployment/quantize_onnx.py "$CONFIG" "$WORK_DIR/fused.pth" \
    "$WORK_DIR/int8.onnx" --evaluate --layers 8 "$@" 2>&1 \
    | tee "$WORK_DIR/quantize.log"
