#!/usr/bin/env bash
# Installs the reproducible environment into a project-local virtual
# environment (.venv): the exact versions of requirements/constraints.txt,
# then mmfalcon in editable mode with all its extras, and openmim's command
# line apart in .venv/mim (run it with PYTHONPATH=.venv/mim).
# Idempotent: a second run finds everything in place and installs nothing.
# TORCH_SPEC picks another torch build, e.g. TORCH_SPEC='torch==2.1.2' (CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MMFALCON_VENV:-.venv}
CONSTRAINTS=requirements/constraints.txt
TORCH_SPEC=${TORCH_SPEC:-$(grep '^torch==' "$CONSTRAINTS")}
PY=$VENV/bin/python
STAMP=$VENV/.mmfalcon-installed
WANT="$TORCH_SPEC|$(cat requirements/*.txt setup.py mmfalcon/version.py | sha1sum | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "[setup] $VENV is up to date, nothing to install."
    exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
# torch comes from TORCH_SPEC; everything else from the constraints.
grep -v '^torch==' "$CONSTRAINTS" > "$VENV/constraints.txt"
pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q \
        -c "$VENV/constraints.txt" "$@"
}
# mmcv's setup.py and mmengine import pkg_resources (setuptools < 82).
pip_install setuptools wheel ninja
"$PY" -c 'import torch' 2>/dev/null || pip_install "$TORCH_SPEC"
if ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
    echo "[setup] Building mmcv from source with its C++ ops."
    echo "[setup] This takes about 20 minutes on 2 cores the first time; pip caches the wheel."
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        pip_install --no-build-isolation mmcv
fi
pip_install --no-build-isolation -e '.[det,seg,deploy,openvino,ncnn,tests]'
# mim's command line, kept out of the environment (see requirements/mim.txt)
rm -rf "$VENV/mim"
pip_install --no-deps --target "$VENV/mim" -r requirements/mim.txt
# The MobileViT-S peer of tools/analysis/benchmark.py is mmpretrain's code,
# read from its wheel: downloaded, never installed (mmpretrain imports
# torchvision, which has no build for the CPU torch). Optional.
"$PY" -m pip download --disable-pip-version-check -q --no-deps \
    mmpretrain==1.2.0 -d "$HOME/.cache/mmfalcon" ||
    echo "[setup] warning: mmpretrain's wheel was not downloaded; the benchmark's MobileViT-S rows will say 'unavailable'."
"$PY" -c 'import mmcv.ops, mmdet, mmseg, mmfalcon; print("[setup] ok: mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
echo "$WANT" > "$STAMP"
