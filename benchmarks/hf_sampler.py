"""rlvr's sampler against transformers' generate() on the same prompts, side by side.

    python benchmarks/hf_sampler.py [--model smollm2] [--prompts 24] [--k 8] [--max-new-tokens 32] [--repeats 2]

Both sample K completions for each chat prompt ("What is a + b? Answer with just the number.",
1-digit operands) at temperature 1 with top-k and top-p off, and both end up with the exact
entropy of every generated token's full next-token distribution (rlvr records it while sampling;
for generate() it is computed from `output_scores`, which are the raw logits when every logits
processor is off). rlvr prefills each prompt once and shares its cache among the K samples;
generate() prefills all B·K rows. With the same seed both draw the same tokens: a logits
processor makes generate() pick, from the same uniforms, the token rlvr's inverse-CDF draw picks
(rows in the same order), so they do identical work; the printed token counts per run show it. Runs alternate (rlvr, generate, rlvr, ...) in one process so
machine noise hits both alike. Prints the median seconds and completions per second of each,
their ratio, and the generated tokens.
Do not run anything else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from rlvr.backends import load_policy
    from transformers import LogitsProcessor, LogitsProcessorList

    from rlvr.rollout.sample import _draw, _uniforms, left_pad, sample_groups
    from rlvr.tasks import get_task

    policy = load_policy(args.model)
    policy.module.eval()
    task = get_task("add2", seed=0)
    task.config.max_digits = 1
    items = [task.item("train", i) for i in range(args.prompts)]

    def run_rlvr(seed: int) -> int:
        batch = sample_groups(policy, items, args.k, max_new_tokens=args.max_new_tokens, temperature=1.0,
                              generator=torch.Generator().manual_seed(seed))
        return batch.generated_tokens()

    class SameDraws(LogitsProcessor):
        """Makes generate() draw what rlvr's sampler draws: the token whose cumulative probability
        first exceeds the same uniform (rlvr.rollout.sample._draw), all other logits set to -inf."""

        def __init__(self, uniforms: torch.Tensor, prompt_width: int) -> None:
            self.uniforms, self.prompt_width = uniforms, prompt_width

        def __call__(self, input_ids, scores):
            token = _draw(torch.softmax(scores.float(), dim=-1), self.uniforms[:, input_ids.shape[1] - self.prompt_width])
            return torch.full_like(scores, -torch.inf).scatter(1, token[:, None], 0.0)

    def run_generate(seed: int) -> int:
        ids, mask = left_pad([policy.encode_prompt(item) for item in items], policy.pad_id)  # (B, P)
        uniforms = _uniforms(torch.Generator().manual_seed(seed), [args.k] * len(items), args.max_new_tokens, "cpu")
        with torch.no_grad():
            out = policy.model.generate(
                input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=args.max_new_tokens, num_return_sequences=args.k, eos_token_id=list(policy.stop_ids),
                pad_token_id=policy.pad_id, output_logits=True, return_dict_in_generate=True, use_cache=True,
                logits_processor=LogitsProcessorList([SameDraws(uniforms, ids.shape[1])]))
            generated = out.sequences[:, ids.shape[1]:]  # (B·K, T)
            alive = torch.ones(generated.shape[0], dtype=torch.bool)
            tokens = 0
            for t, scores in enumerate(out.logits):  # (B·K, V) raw logits per position
                logp = torch.log_softmax(scores.float(), dim=-1)
                entropy = -(logp.exp() * logp).sum(-1)  # (B·K,) exact, as rlvr records it
                tokens += int(alive.sum())
                del entropy
                alive &= ~torch.isin(generated[:, t], torch.tensor(policy.stop_ids))
        return tokens

    results: dict[str, list[tuple[float, int]]] = {"rlvr": [], "generate": []}
    run_rlvr(0)  # warm-up: first-call allocations and lazy imports
    for repeat in range(args.repeats):
        for name, run in (("rlvr", run_rlvr), ("generate", run_generate)):
            started = time.perf_counter()
            tokens = run(repeat + 1)
            results[name].append((time.perf_counter() - started, tokens))
    rows = args.prompts * args.k
    print(f"{args.model}: {args.prompts} prompts x K={args.k}, <= {args.max_new_tokens} new tokens, T=1, "
          f"{torch.get_num_threads()} threads, {args.repeats} runs each")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = statistics.median(t for _, t in runs)
        medians[name] = seconds / tokens
        print(f"  {name:<9} {seconds:7.2f} s  {rows / seconds:6.2f} completions/s  {tokens:6.0f} tokens  "
              f"{tokens / seconds:7.1f} tokens/s")
    print(f"  seconds per generated token, rlvr / generate(): {medians['rlvr'] / medians['generate']:.2f}")
    print(f"  tokens per run: { {name: [t for _, t in runs] for name, runs in results.items()} }")


if __name__ == "__main__":
    main()
