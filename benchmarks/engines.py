"""rlvr's own sampler against vLLM (bfloat16 and float32) on the same training work, side by side.

    python benchmarks/engines.py [--model smollm2] [--k 8 16] [--steps 4] [--arms ...] [--json OUT]
    python benchmarks/engines.py --mismatch [--batches 4] [--json OUT]

Timing (the default): for each K, one fresh process per arm runs `rlvr train` on the vs_trl
workload (rlvr's add2 task, chat prompts, 4 prompts per step, ≤ 64 new tokens, temperature 1,
lr 1e-6, verifier in-process), arms interleaved so machine drift hits all alike:
  rlvr                     --engine rlvr (the training model's own decode loop)
  vllm-bfloat16            --engine vllm --engine-dtype bfloat16 (the trainer's view fused into the update)
  vllm-float32             --engine vllm --engine-dtype float32
  vllm-bfloat16-separate   vllm-bfloat16 with --trainer-view separate: the trainer's log-probs
                           and entropies from a forward of their own before the update (the step
                           before the fused view; run only when named in --arms)
  vllm-float32-separate    the same in float32 (idem)
From each run's metrics.jsonl, medians over the steps after the first (warm-up) one:
  sampling_s, ms_per_token   perf/rollout_seconds, and per completion token sampled
  tokens_per_s               completion tokens sampled per second of sampling
  reload_s                   perf/engine_sync_seconds: the trained weights into the engine
  logprob_s                  perf/logprob_seconds: the trainer's separate forward over vLLM's
                             rollouts (0 with the fused view, unless rows were left out of the update)
  step_s, step_ms_per_token  perf/step_seconds, and per completion token
  phases                     the profile by phase: sampling, reload, logprob, forward, backward,
                             optimizer (perf/*_seconds) and other (the step minus those): what
                             bounds a step that misses its target
  mismatch_kl                mismatch/kl (k3 per token, engine vs trainer)
  peak_mib                   perf/peak_memory_mib (the engine's weights and KV cache included)
and the engine's start time (the `engine` event). Ratios: each vLLM arm over rlvr's, per token
(issue 44's target for the whole step: ≤ 1.0×), and each fused arm over its separate one.
--prompts and --max-new-tokens shrink the work for a quick check of the script itself (not a
measurement).

--mismatch: one process, the policy and a vLLM engine of each dtype on the same rollouts
(B prompts × K samples per batch, seeded): mismatch/* of each, and for every --is-correction
mode and cap the share of tokens it caps or drops (mismatch/corrected_frac): the measurement
the default correction was chosen from (docs/engines.md).

Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = {"rlvr": [], "vllm-bfloat16": ["--engine", "vllm", "--engine-dtype", "bfloat16"],
        "vllm-float32": ["--engine", "vllm", "--engine-dtype", "float32"],
        "vllm-bfloat16-separate": ["--engine", "vllm", "--engine-dtype", "bfloat16", "--trainer-view", "separate"],
        "vllm-float32-separate": ["--engine", "vllm", "--engine-dtype", "float32", "--trainer-view", "separate"]}
DEFAULT_ARMS = ["rlvr", "vllm-bfloat16", "vllm-float32"]
WORK = dict(prompts=4, max_new_tokens=64, lr=1e-6)
PHASES = {"sampling": "perf/rollout_seconds", "reload": "perf/engine_sync_seconds", "logprob": "perf/logprob_seconds",
          "forward": "perf/forward_seconds", "backward": "perf/backward_seconds", "optimizer": "perf/optimizer_seconds"}


def run_arm(model: str, arm: str, k: int, steps: int, out: Path) -> dict:
    command = [sys.executable, "-m", "rlvr.cli", "train", "--model", model, "--task", "add2", "--answer-format",
               "last-number", "--k", str(k), "--prompts-per-step", str(WORK["prompts"]), "--max-new-tokens",
               str(WORK["max_new_tokens"]), "--steps", str(steps), "--lr", str(WORK["lr"]), "--temperature", "1",
               "--eval-every", "0", "--checkpoint-every", "0", "--reward-workers", "0", "--seed", "0",
               "--out", str(out), "--force", "--quiet", *ARMS[arm]]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > 1]
    tokens = [r["completion/mean_length"] * r["sampling/generated"] for r in timed]
    med = lambda key: statistics.median(r.get(key, 0.0) for r in timed)  # noqa: E731
    start = next((e["engine_start_seconds"] for e in events if e["event"] == "engine"), 0.0)
    phases = {name: med(key) for name, key in PHASES.items()}
    phases["other"] = statistics.median(r["perf/step_seconds"] - sum(r.get(k, 0.0) for k in PHASES.values())
                                        for r in timed)
    return {
        "steps_timed": len(timed), "completion_tokens_per_step": statistics.mean(tokens),
        "sampling_s": med("perf/rollout_seconds"),
        "ms_per_token": 1000 * statistics.median(r["perf/rollout_seconds"] / n for r, n in zip(timed, tokens)),
        "tokens_per_s": statistics.median(n / r["perf/rollout_seconds"] for r, n in zip(timed, tokens)),
        "reload_s": med("perf/engine_sync_seconds"), "logprob_s": med("perf/logprob_seconds"),
        "step_s": med("perf/step_seconds"),
        "step_ms_per_token": 1000 * statistics.median(r["perf/step_seconds"] / n for r, n in zip(timed, tokens)),
        "mismatch_kl": med("mismatch/kl") if "mismatch/kl" in timed[0] else None,
        "mismatch_logprob_abs_max": max(r.get("mismatch/logprob_abs_max", 0.0) for r in timed),
        "peak_mib": max(r["perf/peak_memory_mib"] for r in timed), "engine_start_s": start, "wall_s": wall,
        "phases": phases,
    }


def timing(args) -> dict:
    results: dict = {arm: {} for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.k:
            for arm in args.arms:
                r = run_arm(args.model, arm, k, args.steps, Path(tmp) / f"{arm}-{k}")
                results[arm][str(k)] = r
                print(f"  {arm:<22} K={k:<3} sampling {r['ms_per_token']:.2f} ms/token ({r['tokens_per_s']:.0f} tok/s), "
                      f"reload {r['reload_s']:.2f} s, trainer log-probs {r['logprob_s']:.2f} s, step {r['step_s']:.2f} s "
                      f"({r['step_ms_per_token']:.2f} ms/token), mismatch/kl {r['mismatch_kl']}, peak "
                      f"{r['peak_mib']:.0f} MiB, engine start {r['engine_start_s']:.1f} s", flush=True)
                print(f"  {'':<22}        phases (s): " + ", ".join(f"{name} {seconds:.2f}"
                                                                   for name, seconds in r["phases"].items()), flush=True)
    ratios = {}
    for arm in args.arms:
        if arm == "rlvr" or "rlvr" not in results:
            continue
        for k in args.k:
            base, r = results["rlvr"][str(k)], results[arm][str(k)]
            ratios[f"{arm}/rlvr K={k}"] = {"sampling_per_token": r["ms_per_token"] / base["ms_per_token"],
                                           "step_per_token": r["step_ms_per_token"] / base["step_ms_per_token"],
                                           "peak_memory": r["peak_mib"] / base["peak_mib"]}
    for dtype in ("bfloat16", "float32"):  # the fused view against the separate pass, the same engine
        fused, separate = f"vllm-{dtype}", f"vllm-{dtype}-separate"
        if fused in results and separate in results:
            for k in args.k:
                r, base = results[fused][str(k)], results[separate][str(k)]
                ratios[f"{fused}/{separate} K={k}"] = {"step_per_token": r["step_ms_per_token"] / base["step_ms_per_token"],
                                                        "peak_memory": r["peak_mib"] / base["peak_mib"]}
    return {"results": results, "ratios": ratios}


def mismatch(args) -> dict:
    import torch

    from rlvr.algo.correction import CORRECTIONS, importance_weights, mismatch_metrics
    from rlvr.backends import load_policy
    from rlvr.rollout.engines import EngineSettings, open_engine, trainer_view
    from rlvr.rollout.strategies import group_seeds
    from rlvr.tasks import get_task

    torch.manual_seed(0)
    policy = load_policy(args.model)
    task = get_task("add2", seed=0, answer_format="last-number")
    report = {}
    for dtype in ("bfloat16", "float32"):
        engine = open_engine(EngineSettings("vllm", engine_dtype=dtype), args.model, policy,
                             max_new_tokens=WORK["max_new_tokens"], rows=WORK["prompts"] * max(args.k))
        batches = []
        for b in range(args.batches):
            items = [task.item("train", b * WORK["prompts"] + i) for i in range(WORK["prompts"])]
            batch = engine.sample(policy, items, max(args.k), max_new_tokens=WORK["max_new_tokens"], temperature=1.0,
                                  seeds=group_seeds(b, range(len(items))))
            batches.append(trainer_view(policy, batch, 1.0, None))
        engine.close()
        width = max(b.logprobs.shape[1] for b in batches)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        trainer = torch.cat([pad(b.logprobs) for b in batches])
        engine_lp = torch.cat([pad(b.engine_logprobs) for b in batches])
        mask = torch.cat([pad(b.completion_mask) for b in batches])
        metrics = mismatch_metrics(trainer, engine_lp, mask)
        corrected = {f"{mode} C={cap:g}": importance_weights(trainer, engine_lp, mask, mode, cap)[1]
                     ["mismatch/corrected_frac"] for mode in CORRECTIONS.names() if mode != "none"
                     for cap in (1.5, 2.0, 3.0, 5.0)}
        report[dtype] = {"tokens": int(mask.sum()), "sequences": int(mask.shape[0]), **metrics,
                         "corrected_frac": corrected}
        print(f"{dtype}: {int(mask.sum())} tokens in {mask.shape[0]} sequences: " +
              ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()), flush=True)
        for name, frac in corrected.items():
            print(f"    {name:<18} corrects {100 * frac:.2f}% of tokens")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=4, help="steps per process; the first is a warm-up")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--prompts", type=int, default=WORK["prompts"], help="prompts per step (a quick check: fewer)")
    parser.add_argument("--max-new-tokens", type=int, default=WORK["max_new_tokens"],
                        help="longest completion (a quick check: fewer)")
    parser.add_argument("--mismatch", action="store_true", help="measure the mismatch and the corrections instead")
    parser.add_argument("--batches", type=int, default=4, help="--mismatch: batches of B prompts × max(K) samples")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    WORK.update(prompts=args.prompts, max_new_tokens=args.max_new_tokens)
    import torch
    import vllm

    import rlvr

    print(f"{args.model} on {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"vLLM {vllm.__version__}, rlvr {rlvr.__version__}", flush=True)
    body = mismatch(args) if args.mismatch else timing(args)
    if not args.mismatch:
        for name, r in body["ratios"].items():
            print(f"{name}: " + ", ".join(f"{key.replace('_', ' ')} {value:.2f}x" for key, value in r.items()))
    report = {"model": args.model, "ks": args.k, "steps": args.steps, **WORK, "machine": f"{os.cpu_count()} CPUs",
              "versions": {"torch": torch.__version__, "vllm": vllm.__version__, "rlvr": rlvr.__version__},
              "mode": "mismatch" if args.mismatch else "timing", **body}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
