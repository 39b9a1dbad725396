"""Run as 2 ranks (torch.distributed.run) by tests/test_distributed.py: the gradient-noise partial
sums of one train_step under DDP (`ddp`: the built-in model) or FSDP2 (`fsdp`: a tiny random
Llama, through the CPU test hook), against the same partial sums computed on rank 0 in one plain
process from a fresh copy of the model.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/noise_ranks.py ddp|fsdp OUT.json

What must hold: under DDP each rank's probe is ITS OWN partial sums (read before the all-reduce)
and |g|² the whole step's (after it); under FSDP2 the probes are the partial sums of the union
of the ranks' halves (reduce-scattered at each boundary). Rank 0 writes both sides to OUT.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_policy  # noqa: E402
from rlvr import distributed  # noqa: E402
from rlvr.algo.losses import NORMALISED_BY, policy_loss  # noqa: E402
from rlvr.algo.noise import combine, noise_split  # noqa: E402
from rlvr.config import TrainConfig  # noqa: E402
from rlvr.rollout.forward import Scorer  # noqa: E402
from rlvr.rollout.sample import sample_groups, select_rows  # noqa: E402
from rlvr.rollout.strategies import advantage_function, group_advantages  # noqa: E402
from rlvr.tasks import get_task  # noqa: E402
from rlvr.train.step import grad_sq_norm, loss_settings, loss_token_mask, train_step  # noqa: E402
from shaped_rewards import digit_share  # noqa: E402

PROMPTS, K = 8, 4


def load(mode: str, model_dir: Path | None):
    if mode == "ddp":
        return make_policy(seed=1)
    from rlvr.backends import ModelSettings, load_policy

    return load_policy(str(model_dir), ModelSettings(chat_template="none"))


def partial_sq(policy, batch, rows, advantages, cfg, totals) -> float:
    """|gradient of the loss over `rows`, normalised by the whole step's totals|² in one process."""
    policy.module.zero_grad(set_to_none=True)
    token_mask = loss_token_mask(batch, cfg, policy.stop_ids)
    logp, _ = Scorer(policy, cfg.temperature)(batch, rows)
    loss, _ = policy_loss(logp, logp.detach(), advantages[rows], token_mask[rows], loss_settings(cfg, 0.0), *totals)
    loss.backward()
    value = grad_sq_norm([p for p in policy.module.parameters() if p.requires_grad])
    policy.module.zero_grad(set_to_none=True)
    return value


def main(mode: str, out: str) -> None:
    world = distributed.start("cpu", 120.0, fsdp=mode == "fsdp")
    model_dir = None
    if mode == "fsdp":
        from hf_models import make_hf_model_dir

        model_dir = world.broadcast(str(make_hf_model_dir(Path(out).parent / "model", "llama")) if world.main else None,
                                    "the model directory")
    cfg = TrainConfig(k=K, prompts_per_step=PROMPTS, max_new_tokens=6, micro_batch_size="2" if mode == "fsdp" else "auto")
    reference = load(mode, model_dir)  # also what samples the batch: the same weights as the trained copy
    task = get_task("add2", seed=0)
    items = [task.item("train", i) for i in range(PROMPTS)]
    if world.main:
        reference.module.eval()
        batch = sample_groups(reference, items, K, max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                              generator=[torch.Generator().manual_seed(i) for i in range(PROMPTS)])
        reference.module.train()
    batch = world.broadcast(batch if world.main else None, "the batch")
    rewards = torch.tensor([digit_share(text, items[i // K]) for i, text in enumerate(batch.texts)])
    advantages = group_advantages(advantage_function(cfg), rewards, [K] * PROMPTS)
    token_mask = loss_token_mask(batch, cfg, reference.stop_ids)
    totals = (int(token_mask.sum()), batch.num_rows)

    policy = load(mode, model_dir)
    if mode == "fsdp":
        distributed.fsdp_shard(policy, world)
    policy.module.train()
    scorer = distributed.wrap_scorer(Scorer(policy, cfg.temperature), world)
    groups = world.shard(PROMPTS)
    rows = torch.arange(groups.start * K, groups.stop * K)  # this rank's shard of whole groups
    optimizer = torch.optim.SGD([p for p in policy.module.parameters() if p.requires_grad], lr=0.0)
    result = train_step(policy, optimizer, select_rows(batch, rows), advantages[rows], cfg, scorer=scorer, totals=totals)
    split = noise_split(select_rows(batch, rows).group_ids)
    q1, q12 = rows[split.half_samples], rows[torch.cat([split.half_samples, split.rest_of_half])]
    every = world.gather((result.noise, result.sq_grad_norm, q1, q12), "the probes")
    if world.main:
        units = token_mask.sum(dim=1) if NORMALISED_BY[cfg.loss_agg] == "tokens" else torch.ones(batch.num_rows)
        if mode == "ddp":  # each rank's own partial sums
            expected = [(partial_sq(reference, batch, a, advantages, cfg, totals),
                         partial_sq(reference, batch, b, advantages, cfg, totals),
                         float(units[a].sum()), float(units[b].sum())) for _, _, a, b in every]
        else:  # the union of the ranks' halves, the same on every rank
            a, b = torch.cat([e[2] for e in every]), torch.cat([e[3] for e in every])
            q1_units = [float(units[e[2]].sum()) for e in every]
            q12_units = [float(units[e[3]].sum()) for e in every]
            sq_a, sq_b = partial_sq(reference, batch, a, advantages, cfg, totals), \
                partial_sq(reference, batch, b, advantages, cfg, totals)
            expected = [(sq_a, sq_b, q1_units[r], q12_units[r]) for r in range(len(every))]
        sq_full = partial_sq(reference, batch, torch.arange(batch.num_rows), advantages, cfg, totals)
        probes = [e[0] for e in every]
        estimate = combine(probes, every[0][1], PROMPTS)
        Path(out).write_text(json.dumps({
            "probes": [[p.sq_half_samples, p.sq_half_groups, p.units_half_samples, p.units_half_groups, p.synced]
                       for p in probes],
            "expected": expected, "sq_full": [e[1] for e in every], "expected_sq_full": sq_full,
            "estimate": vars(estimate)}))
    world.gather(None, "the end")
    distributed.stop(world)


if __name__ == "__main__":
    os.environ.setdefault(distributed.FSDP_ON_CPU_ENV, "1")
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
