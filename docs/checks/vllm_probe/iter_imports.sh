#!/bin/bash
# Repeatedly import vllm; on ModuleNotFoundError install the matching package with --no-deps.
V=/tmp/vllm-venv/bin
declare -A MAP=( [cbor2]=cbor2 [attr]=attrs [frozenlist]=frozenlist [aiosignal]=aiosignal [aiohappyeyeballs]=aiohappyeyeballs [yaml]=pyyaml [PIL]=pillow [google]=protobuf [jiter]=jiter [distro]=distro [httpx]=httpx [tvm_ffi]=apache-tvm-ffi [zmq]=pyzmq [msgspec]=msgspec [blake3]=blake3 [cpuinfo]=py-cpuinfo
  [sentencepiece]=sentencepiece [prometheus_client]=prometheus_client [tiktoken]=tiktoken
  [openai]=openai [aiohttp]=aiohttp [pybase64]=pybase64 [ijson]=ijson [setproctitle]=setproctitle
  [einops]=einops [compressed_tensors]=compressed-tensors==0.17.0 [depyf]=depyf==0.20.0
  [watchfiles]=watchfiles [pythonjsonlogger]=python-json-logger [partial_json_parser]=partial-json-parser
  [jsonschema]=jsonschema [mistral_common]=mistral_common [cv2]=opencv-python-headless
  [xgrammar]=xgrammar==0.2.8 [llguidance]=llguidance\<1.8.0 [outlines_core]=outlines_core==0.2.14
  [lark]=lark==1.2.2 [lmformatenforcer]=lm-format-enforcer==0.11.3 [numba]=numba==0.65.0
  [openai_harmony]=oss-harmony [anthropic]=anthropic [mcp]=mcp\<3 [gguf]=gguf
  [prometheus_fastapi_instrumentator]=prometheus-fastapi-instrumentator
  [model_hosting_container_standards]=model-hosting-container-standards\<1.0.0 )
SCRIPT=${1:-"import vllm; from vllm import LLM, SamplingParams; print('IMPORT OK')"}
for i in $(seq 1 40); do
  out=$(timeout 300 $V/python -c "$SCRIPT" 2>&1)
  mod=$(echo "$out" | grep -oP "ModuleNotFoundError: No module named '\K[^'.]+" | tail -1)
  if [ -z "$mod" ]; then echo "$out" | grep -v "^ " | tail -8; break; fi
  if [ "$mod" == "$last" ]; then echo "STUCK on $mod"; echo "$out" | tail -5; break; fi; last=$mod
  pkg=${MAP[$mod]:-$mod}
  echo ">> missing module $mod -> pip install --no-deps $pkg"
  $V/pip install -q --no-deps "$pkg" 2>&1 | grep -v "is ignored"
done
