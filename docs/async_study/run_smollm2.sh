#!/usr/bin/env bash
# The async study on SmolLM2 (docs/async.md, "SmolLM2"): the four arms of run.sh on the smollm2
# preset (mul, K=8, 2 prompts a step, T=0.7, lr 2e-6), 4 seeds x 120 steps, HM@4 every 30 steps.
# It spans sessions: finished runs' light files are kept in docs/async_study/runs/smollm2/
# (docs/study_smollm2_long/parts.py saves them every minute while compare runs, and restores
# them first, so compare skips what is done). Commit them before a session ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
RLVR=${RLVR:-.venv/bin/rlvr}
PY=${PY:-.venv/bin/python}
RUNS=runs/async_study/smollm2
KEPT=docs/async_study/runs/smollm2
PARTS=docs/study_smollm2_long/parts.py
mkdir -p "$KEPT"
$PY $PARTS restore "$RUNS" "$KEPT"
$RLVR compare --preset smollm2 --k 8 --variant naive="--max-staleness 4 --stale-loss naive" \
    --variant decoupled="--max-staleness 4 --is-correction token-mask" \
    --variant tis="--max-staleness 4 --is-correction token-tis" \
    --seeds 4 --seed 0 --eval-every 30 --passk-eval-samples 0 --out "$RUNS" &
compare=$!
while kill -0 $compare 2>/dev/null; do
    sleep 60
    $PY $PARTS save "$RUNS" "$KEPT" > /dev/null || true  # (RUNS may not exist yet)
done
wait $compare
$PY $PARTS save "$RUNS" "$KEPT"
$PY docs/async_study/summarize.py
