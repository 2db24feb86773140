#!/usr/bin/env bash
# Installs everything mmfalcon needs into a project-local virtual environment (.venv).
# Idempotent: a second run finds everything in place and installs nothing.
# Override the torch spec for a CUDA machine with e.g. TORCH_SPEC='torch==2.1.2'.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MMFALCON_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_SPEC=mmcv==2.1.0
PY=$VENV/bin/python
STAMP=$VENV/.mmfalcon-installed
WANT="$TORCH_SPEC|$MMCV_SPEC|$(cat requirements/runtime.txt requirements/tests.txt setup.py | sha1sum | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "[setup] $VENV is up to date, nothing to install."
    exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
# mmcv's setup.py and mmengine import pkg_resources, removed from setuptools 82.
pip_install 'setuptools>=77,<82' wheel ninja
"$PY" -c 'import torch' 2>/dev/null || pip_install "$TORCH_SPEC"
if ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
    echo "[setup] Building $MMCV_SPEC from source with its C++ ops."
    echo "[setup] This takes about 20 minutes on 2 cores the first time; pip caches the wheel."
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_install --no-build-isolation "$MMCV_SPEC"
fi
pip_install -r requirements/runtime.txt -r requirements/tests.txt
pip_install --no-build-isolation --no-deps -e .
"$PY" -c 'import mmcv.ops, mmdet, mmseg, mmfalcon; print("[setup] ok: mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
echo "$WANT" > "$STAMP"
