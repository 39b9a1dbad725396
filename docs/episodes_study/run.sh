#!/usr/bin/env bash
# The episodes study (docs/episodes.md, "A real result"): SmolLM2-135M-Instruct with the calculator
# (--env calc, one example conversation), K=8, 2 prompts a step, 60 steps, on `mul` and `mul22`,
# seeds 0 and 1; then held-out HM@4 without the tool, of the base model and of each trained model.
# Re-running skips what is done: a run whose light files are committed, an eval whose file exists;
# a killed run resumes from its checkpoint under runs/ when that is still there.
# Light files only are committed (docs/episodes_study/runs/); weights stay under runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
RLVR=${RLVR:-.venv/bin/rlvr}
OUT=runs/episodes_study
LIGHT=docs/episodes_study/runs
COMMON=(--model smollm2 --env calc --env-examples 1 --k 8 --prompts-per-step 2 --steps 60 --temperature 0.7
        --eval-temperature 0.7 --max-new-tokens 24 --max-turns 3 --lr 2e-6 --eval-every 30 --eval-problems 48
        --eval-samples 8 --checkpoint-every 20 --keep-checkpoints 1 --keep-best none --quiet)
for task in ${TASKS:-mul mul22}; do
    base=$LIGHT/$task/base_without_tool.json
    [ -f "$base" ] || { mkdir -p "$LIGHT/$task"; $RLVR eval --model smollm2 --task "$task" --problems 48 --samples 8 \
        --k 1 4 8 --temperature 0.7 --max-new-tokens 24 --out "$base"; }
    for seed in ${SEEDS:-0 1}; do
        run=$OUT/$task/seed$seed
        # a run whose light files and no-tool evaluation are committed is done (weights are not kept)
        [ -f "$LIGHT/$task/seed$seed/final_without_tool.json" ] && continue
        $RLVR train "${COMMON[@]}" --task "$task" --seed "$seed" --out "$run"
        mkdir -p "$LIGHT/$task/seed$seed"
        cp "$run"/{config.json,metrics.jsonl,events.jsonl,evals.jsonl,samples.jsonl} "$LIGHT/$task/seed$seed/"
        without=$LIGHT/$task/seed$seed/final_without_tool.json
        [ -f "$without" ] || $RLVR eval --model "$run/final" --task "$task" --problems 48 --samples 8 --k 1 4 8 \
            --temperature 0.7 --max-new-tokens 24 --out "$without"
    done
done
.venv/bin/python docs/episodes_study/summarize.py
