#!/usr/bin/env bash
# The GPU check of --device cuda, --engine vllm and --fsdp: under 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu_check_out)
#
# Written for a machine that reaches no package registry and gets at most a 64 MiB working tree:
# it installs nothing. It first records what the machine has (GPU, drivers, Python packages), then
# builds a random-weight Llama there (transformers from the machine's own packages; head size 64,
# which every vLLM attention backend runs) and runs whichever of these it can, each under its own
# time limit, writing every log under OUT_DIR:
#   1. rlvr train --device cuda --engine rlvr, K=8, 10 steps
#   2. the same with --engine vllm (only if vllm imports), with its mismatch/* metrics
#   3. rlvr train --device cuda --fsdp on one GPU (a process group of one), 10 steps
#   4. --engine vllm joined to rlvr's process group, TP=1 on every rank (vLLM's external launcher):
#      on one GPU through --fsdp's process group of one; with 2 GPUs also --nproc 2 (an engine on
#      each rank). Both compare every rank's engine weights with its trained weights after every
#      update (RLVR_TEST_ENGINE_WEIGHTS=1: `engine_weights` events, summarised)
#   5. with 2 GPUs: --nproc 2 --engine-tp 2, one tensor-parallel engine across both ranks
#   6. --max-staleness 2 --async-mode concurrent on CUDA (the generator thread on its own copy of
#      the weights) and the same run deterministic: their metrics must be identical (staleness 2
#      after warm-up), and the step times show what the overlap buys on this GPU
# and a summary (summary.txt) of each step's time and the mismatch metrics. A run this machine
# cannot do (no vLLM, fewer than 2 GPUs) is listed as NOT RUN with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-./gpu_check_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/tests:${PYTHONPATH:-}"
summary="$OUT_DIR/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

say "== machine ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || say "nvidia-smi: not available"
head -15 "$OUT_DIR/nvidia-smi.txt" 2>/dev/null | tee -a "$summary"
$PY -m pip list > "$OUT_DIR/pip-list.txt" 2>&1 || say "pip list failed"
$PY - <<'EOF' 2>&1 | tee -a "$summary"
import importlib, importlib.util
for name in ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "vllm", "rich", "numpy"):
    if importlib.util.find_spec(name) is None:
        print(f"{name}: MISSING")
        continue
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name}: import fails: {type(err).__name__}: {err}")
import torch
print("cuda:", torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

if ! $PY -c "import torch, transformers, rich; assert torch.cuda.is_available()" 2>/dev/null; then
    say "NOT RUN: this machine lacks torch with CUDA, transformers or rich, which rlvr needs; nothing else to check"
    exit 0
fi

MODEL="$OUT_DIR/model"
$PY - "$MODEL" <<'EOF' 2>&1 | tee -a "$summary"
import sys
from hf_models import make_hf_model_dir
import torch
path = make_hf_model_dir(sys.argv[1], "llama", hidden=256, layers=4, heads=4, kv_heads=2)
print(f"model: random Llama, hidden 256, 4 layers, head size 64 -> {path}")
EOF

TRAIN=(train --device cuda --model "$MODEL" --task add2 --answer-format last-number --k 8 --prompts-per-step 8
       --max-new-tokens 32 --steps 10 --eval-every 5 --eval-problems 32 --eval-samples 8 --checkpoint-every 5
       --reward-workers 2 --quiet --force)

run() {  # name, seconds, rlvr arguments...
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" $PY -m rlvr.cli "$@" --out "$OUT_DIR/$name" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    say "== $name: exit $rc after $((SECONDS - started)) s ($*)"
    tail -3 "$OUT_DIR/$name.log" | tee -a "$summary"
    if [ -f "$OUT_DIR/$name/events.jsonl" ]; then
        $PY - "$OUT_DIR/$name/events.jsonl" <<'EOF' 2>&1 | tee -a "$summary"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for e in events:
    if e["event"] in ("engine", "distributed"):
        print(f"  {e['event']}: {e['message']}")
checks = [e for e in events if e["event"] == "engine_weights"]
if checks:
    ok = all(e["equal"] for e in checks)
    print(f"  engine weights == trained weights on every rank after every update: {ok} "
          f"({len(checks)} updates, {len(checks[0]['ranks'])} ranks, {checks[0]['ranks'][0]['tensors']} tensors each)")
    for e in checks:
        if not e["equal"]:
            print(f"    update {e['updates']}: " + "; ".join(f"rank {r}: {d['differ'][:5]}" for r, d in enumerate(e["ranks"])))
EOF
    fi
    if [ -f "$OUT_DIR/$name/metrics.jsonl" ]; then
        $PY - "$OUT_DIR/$name/metrics.jsonl" <<'EOF' 2>&1 | tee -a "$summary"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if r.get("step", 0) == 0:
        continue
    keys = ("perf/step_seconds", "perf/rollout_seconds", "perf/engine_sync_seconds", "perf/logprob_seconds",
            "mismatch/kl", "mismatch/logprob_abs_max", "mismatch/is_ratio_max", "entropy/mean", "reward/mean",
            "perf/peak_memory_mib")
    print(f"  step {r['step']}: " + ", ".join(f"{k.split('/', 1)[1]} {r[k]:.4g}" for k in keys if k in r))
EOF
    fi
}

run cuda-rlvr 150 "${TRAIN[@]}"
if $PY -c "import vllm" > "$OUT_DIR/vllm-import.txt" 2>&1; then
    run cuda-vllm 240 "${TRAIN[@]}" --engine vllm --engine-memory 0.3
else
    say "== cuda-vllm: NOT RUN: vllm does not import here ($(tail -1 "$OUT_DIR/vllm-import.txt"))"
fi
# --fsdp refuses --micro-batch-size auto (every rank must run the same number of micro-batches)
run cuda-fsdp1 150 "${TRAIN[@]}" --fsdp --micro-batch-size 16

NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if $PY -c "import vllm" > /dev/null 2>&1; then
    # TP=1 joined to rlvr's process group: on one GPU, the group of one that --fsdp starts
    RLVR_TEST_ENGINE_WEIGHTS=1 run cuda-vllm-fsdp1 240 "${TRAIN[@]}" --engine vllm --engine-memory 0.3 --fsdp \
        --micro-batch-size 16
    if [ "$NGPU" -ge 2 ]; then
        RLVR_TEST_ENGINE_WEIGHTS=1 run cuda-vllm-dp2 300 "${TRAIN[@]}" --engine vllm --engine-memory 0.3 --nproc 2
        run cuda-vllm-tp2 300 "${TRAIN[@]}" --engine vllm --engine-memory 0.3 --nproc 2 --engine-tp 2
    else
        say "== cuda-vllm-dp2 (--nproc 2, an engine per rank) and cuda-vllm-tp2 (--engine-tp 2): NOT RUN: they need 2 GPUs, this machine has $NGPU"
    fi
else
    say "== cuda-vllm-fsdp1, cuda-vllm-dp2, cuda-vllm-tp2: NOT RUN: vllm does not import here"
fi
run cuda-async-det 150 "${TRAIN[@]}" --max-staleness 2
run cuda-async-conc 150 "${TRAIN[@]}" --max-staleness 2 --async-mode concurrent
$PY - "$OUT_DIR" <<'EOF' 2>&1 | tee -a "$summary"
import json, sys
def rows(name):
    try:
        lines = open(f"{sys.argv[1]}/{name}/metrics.jsonl").read().splitlines()
    except OSError:
        return None
    return [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/") and not k.endswith("_seconds")}
            for l in lines if l.strip()]
det, conc = rows("cuda-async-det"), rows("cuda-async-conc")
if det is None or conc is None:
    print("== async: a run did not finish; see its log")
else:
    print(f"== async: concurrent == deterministic (metrics less timings): {det == conc}; staleness per step: "
          f"{[r.get('async/staleness_max') for r in det if r['step']]}")
EOF
say "== done; logs in $OUT_DIR"
