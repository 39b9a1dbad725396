#!/bin/bash
# import loop: run a python snippet, read ModuleNotFoundError, pip install --no-deps that module, repeat.
# Usage: iter_imports.sh VENV 'python code'   (module->package name map for the known mismatches below)
VENV=$1; CODE=$2
declare -A MAP=([attr]=attrs [tvm_ffi]=apache-tvm-ffi [openai_harmony]=oss-harmony [yaml]=pyyaml [cpuinfo]=py-cpuinfo [zmq]=pyzmq [google]=protobuf [PIL]=pillow [cv2]=opencv-python-headless [pythonjsonlogger]=python-json-logger)
for i in $(seq 1 30); do
  out=$(cd /tmp && VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c "$CODE" 2>&1)
  mod=$(echo "$out" | grep -oP "ModuleNotFoundError: No module named '\K[^'.]+" | tail -1)
  if [ -z "$mod" ]; then echo "$out" | tail -5; echo "== done after $i rounds"; exit 0; fi
  pkg=${MAP[$mod]:-$mod}
  echo "== missing $mod -> pip install --no-deps $pkg"
  "$VENV/bin/pip" install -q --no-deps "$pkg" 2>&1 | grep -v "is ignored"; "$VENV/bin/pip" show -q "$pkg" >/dev/null 2>&1 || { echo "install of $pkg failed"; exit 1; }
done
