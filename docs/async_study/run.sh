#!/usr/bin/env bash
# The async study (docs/async.md, "The study"): sync vs --max-staleness 4 with the naive loss,
# decoupled PPO (AReaL's mask) and decoupled PPO with truncated weights, 4 seeds × 250 steps on
# the built-in model, at the default lr and at 5x it. Light files (config, events, gzipped metrics)
# go to docs/async_study/runs/;
# re-running skips settings whose light files are committed (compare itself skips finished runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
RLVR=${RLVR:-.venv/bin/rlvr}
ARMS=(--k 8 --variant naive="--max-staleness 4 --stale-loss naive"
      --variant decoupled="--max-staleness 4 --is-correction token-mask"
      --variant tis="--max-staleness 4 --is-correction token-tis")
for setting in ${SETTINGS:-lr2e-4 lr1e-3}; do
    light=docs/async_study/runs/$setting
    [ -f "$light/done" ] && continue
    $RLVR compare "${ARMS[@]}" --lr "${setting#lr}" --seeds 4 --steps 250 --passk-eval-samples 0 --jobs 1 \
        --out "runs/async_study/$setting"
    for run in runs/async_study/$setting/*/seed*; do
        dest=$light/${run#runs/async_study/$setting/}
        mkdir -p "$dest"
        cp "$run"/{config.json,events.jsonl} "$dest/"
        gzip -9 -c "$run/metrics.jsonl" > "$dest/metrics.jsonl.gz"  # ~0.1 MB instead of ~0.5 MB
    done
    touch "$light/done"
done
.venv/bin/python docs/async_study/summarize.py
