"""A step's rewards: every completion scored by the verifier, failures replaced and counted.

The calls run in a RewardPool (rlvr/rewards/pool.py): worker processes with a per-call timeout,
or the training process itself with `--reward-workers 0`. A call that times out, raises, kills
its worker or returns anything but a finite number in [0, 1] gets `--reward-error-value`; the
failures are returned so the trainer can count them, log them and stop on too many.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlvr.rewards.pool import RewardFailure, RewardPool, WeightedPool


@dataclass
class ScoredBatch:
    rewards: torch.Tensor  # (B, K) float32 in [0, 1]; with weighted verifiers Σ weight · reward
    answers: list[str | None]  # N extracted final answers
    failures: list[RewardFailure] = field(default_factory=list)
    components: torch.Tensor | None = None  # (N, C) float32: each weighted verifier's reward (None: one verifier)


def score_batch(pool: RewardPool | WeightedPool, task, texts: list[str], items: list[dict], k: int,
                error_value: float = 0.0) -> ScoredBatch:
    """Scores N = B·K completions; texts[i] answers items[i // k]. A failed call scores
    `error_value` (for its own verifier, with weighted ones)."""
    row_items = [items[i // k] for i in range(len(texts))]
    parts = pool.components if isinstance(pool, WeightedPool) else [("", 1.0, pool)]
    failures, columns = [], []
    for name, _, part in parts:
        outcomes = part.score(texts, row_items)
        failures += [RewardFailure(o.kind, str(row_items[i].get("id")), f"{name}: {o.detail}" if name else o.detail,
                                   component=name) for i, o in enumerate(outcomes) if o.kind is not None]
        columns.append([error_value if o.kind is not None else o.value for o in outcomes])
    answers = [task.extract_answer(text) for text in texts]
    if not isinstance(pool, WeightedPool):
        rewards = torch.tensor(columns[0], dtype=torch.float32).view(len(items), k)  # (B, K)
        return ScoredBatch(rewards=rewards, answers=answers, failures=failures)
    components = torch.tensor(columns, dtype=torch.float32).T.contiguous()  # (N, C)
    weights = torch.tensor([weight for _, weight, _ in parts], dtype=torch.float32)  # (C,)
    rewards = (components * weights).sum(dim=1).view(len(items), k)  # (B, K)
    return ScoredBatch(rewards=rewards, answers=answers, failures=failures, components=components)
