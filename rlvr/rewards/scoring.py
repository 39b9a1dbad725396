"""A step's rewards: every completion scored by the verifier, failures replaced and counted.

The calls run in a RewardPool (rlvr/rewards/pool.py): worker processes with a per-call timeout,
or the training process itself with `--reward-workers 0`. A call that times out, raises, kills
its worker or returns anything but a finite number in [0, 1] gets `--reward-error-value`; the
failures are returned so the trainer can count them, log them and stop on too many.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlvr.rewards.pool import RewardFailure, RewardPool


@dataclass
class ScoredBatch:
    rewards: torch.Tensor  # (B, K) float32 in [0, 1]
    answers: list[str | None]  # N extracted final answers
    failures: list[RewardFailure] = field(default_factory=list)


def score_batch(pool: RewardPool, task, texts: list[str], items: list[dict], k: int,
                error_value: float = 0.0) -> ScoredBatch:
    """Scores N = B·K completions; texts[i] answers items[i // k]."""
    outcomes = pool.score(texts, [items[i // k] for i in range(len(texts))])
    failures = [RewardFailure(o.kind, str(items[i // k].get("id")), o.detail)
                for i, o in enumerate(outcomes) if o.kind is not None]
    values = [error_value if o.kind is not None else o.value for o in outcomes]
    answers = [task.extract_answer(text) for text in texts]
    rewards = torch.tensor(values, dtype=torch.float32).view(len(items), k)  # (B, K)
    return ScoredBatch(rewards=rewards, answers=answers, failures=failures)
