#!/usr/bin/env bash
# Set up the peers' venv for `benchmarks/bench_peers.py`: torchvision, timm and ONNX Runtime beside a torch that
# matches them, OUTSIDE the repository so that the product's .venv stays lean.
#
#   bash benchmarks/peers_setup.sh            # creates ${IMGCLS_PEERS_VENV:-~/.cache/imgcls-bench/peers}
#
# The benchmark finds the venv at the same place (or at IMGCLS_PEERS_VENV). Idempotent: a venv whose imports
# already work is left as it is.
set -euo pipefail
VENV="${IMGCLS_PEERS_VENV:-$HOME/.cache/imgcls-bench/peers}"
PY="${PY:-python3}"
PACKAGES=(torch==2.14.1 torchvision==0.29.1 timm onnxruntime onnx pillow numpy)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, torchvision, timm, onnxruntime, PIL" 2>/dev/null; then
    echo "peers venv ready: $VENV"
    exit 0
fi
mkdir -p "$(dirname "$VENV")"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/python" -c "import torch, torchvision, timm, onnxruntime; print('peers venv ready:', '$VENV', 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'onnxruntime', onnxruntime.__version__)"
