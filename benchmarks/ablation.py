"""Each work reduction of the step on its own: before and after, side by side, on one rollout batch.

    python benchmarks/ablation.py [--model smollm2] [--prompts 4] [--k 8] [--max-new-tokens 64] [--repeats 2]

Sampling: the same prompts and the same noise three ways, all drawing the same tokens: rlvr's
sampler; without compaction (finished rows decode to the end, as before); and, for Hugging Face
models, with transformers' concatenating DynamicCache instead of the preallocated one.
Update: the forward and backward of one rollout batch's loss, four ways:
  per-row, whole batch     one forward per sequence over prompt + completion, padded (before)
  packed, whole batch      each group's prompt once, completions end to end (rlvr.rollout.forward.pack)
  per-row, auto            micro-batches up to the model's token budget
  packed, auto             both (rlvr's default)
Timings alternate between the variants within one process (median of --repeats); the peak
memory of each update variant is measured in a fresh process (peak resident memory during one
forward and backward, minus that before it). Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = {"per-row, whole batch": (False, "0"), "packed, whole batch": (True, "0"),
            "per-row, auto": (False, "auto"), "packed, auto": (True, "auto")}


def hwm_mib() -> float:
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024


def rss_mib() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


def setup(args):
    from rlvr.backends import load_policy
    from rlvr.tasks import get_task

    policy = load_policy(args.model)
    task = get_task("add2", seed=0, answer_format="last-number")
    items = [task.item("train", i) for i in range(args.prompts)]
    return policy, items


def sample(policy, items, args, seed: int):
    from rlvr.rollout.sample import sample_groups

    policy.module.eval()
    batch = sample_groups(policy, items, args.k, max_new_tokens=args.max_new_tokens, temperature=1.0,
                          generator=[torch.Generator().manual_seed(seed + i) for i in range(len(items))])
    policy.module.train()
    return batch


def update(policy, batch, packed: bool, micro: str) -> tuple[float, float, int]:
    """Seconds of forward and of backward for a token-mean loss over the batch, and micro-batches."""
    from rlvr.rollout.forward import Scorer, micro_batches
    from rlvr.train.step import micro_batch_rows

    scorer = Scorer(policy, 1.0, pack=packed)
    chunks = micro_batches(batch, micro_batch_rows(micro), policy.update_token_budget, packed)
    total = batch.completion_mask.sum()
    forward = backward = 0.0
    for c in chunks:
        start = time.perf_counter()
        logp, _ = scorer(batch, c)
        loss = -(logp * batch.completion_mask[c]).sum() / total
        middle = time.perf_counter()
        loss.backward()
        forward, backward = forward + middle - start, backward + time.perf_counter() - middle
    policy.module.zero_grad(set_to_none=True)
    return forward, backward, len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="")
    parser.add_argument("--sampling-only", action="store_true", help="time the sampling variants only")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child: one update variant's peak memory
    args = parser.parse_args()
    import rlvr.rollout.sample as rollout

    policy, items = setup(args)
    batch = sample(policy, items, args, seed=0)
    if args.memory_of:
        packed, micro = VARIANTS[args.memory_of]
        before = rss_mib()
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident size
        update(policy, batch, packed, micro)
        print(json.dumps({"step_memory_mib": hwm_mib() - before}))
        return

    print(f"{args.model}: {args.prompts} prompts x K={args.k}, <= {args.max_new_tokens} new tokens, "
          f"{batch.generated_tokens()} completion tokens, {torch.get_num_threads()} threads", flush=True)
    # Sampling: rlvr's sampler, without compaction, and (HF models) with a concatenating cache.
    variants = ["rlvr", "not compacting"] + (["concatenating cache"] if hasattr(policy, "model") else [])
    sampling: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, set] = {name: set() for name in variants}
    compact_every, new_cache = rollout.COMPACT_FRACTION, policy.new_cache
    for repeat in range(args.repeats):
        for name in variants:
            rollout.COMPACT_FRACTION = 0 if name == "not compacting" else compact_every
            if name == "concatenating cache":
                from transformers import DynamicCache

                policy.new_cache = lambda rows, max_len: DynamicCache(config=policy.model.config)
            start = time.perf_counter()
            sampled = sample(policy, items, args, seed=100 + repeat)
            sampling[name].append(time.perf_counter() - start)
            tokens[name].add(sampled.generated_tokens())
            policy.new_cache = new_cache
    rollout.COMPACT_FRACTION = compact_every
    result = {"model": args.model, "prompts": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens,
              "threads": torch.get_num_threads(), "completion_tokens": batch.generated_tokens(),
              "sampling_s": {name: statistics.median(v) for name, v in sampling.items()},
              "sampled_tokens": {name: sorted(v) for name, v in tokens.items()}, "update": {}}
    print("sampling: " + ", ".join(f"{name} {s:.2f} s" for name, s in result["sampling_s"].items())
          + f" (tokens per run: {result['sampled_tokens']})", flush=True)
    if not args.sampling_only:
        update_variants(policy, batch, args, result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


def update_variants(policy, batch, args, result: dict) -> None:
    """Times every update variant (alternating) and measures each one's memory in a fresh process."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    chunks: dict[str, int] = {}
    update(policy, batch, True, "auto")  # warm-up
    for _ in range(args.repeats):
        for name, (packed, micro) in VARIANTS.items():
            forward, backward, chunks[name] = update(policy, batch, packed, micro)
            times[name].append((forward, backward))
    memory = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--prompts", str(args.prompts),
                              "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens), "--memory-of", name],
                             check=True, capture_output=True, text=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])["step_memory_mib"]
    print(f"{'update':<22} {'forward s':>9} {'backward s':>10} {'total s':>8} {'micro-batches':>13} {'memory MiB':>10}")
    for name in VARIANTS:
        forward = statistics.median(f for f, _ in times[name])
        backward = statistics.median(b for _, b in times[name])
        result["update"][name] = {"forward_s": forward, "backward_s": backward, "micro_batches": chunks[name],
                                  "step_memory_mib": memory[name]}
        print(f"{name:<22} {forward:>9.2f} {backward:>10.2f} {forward + backward:>8.2f} {chunks[name]:>13} "
              f"{memory[name]:>10.0f}")


if __name__ == "__main__":
    main()
