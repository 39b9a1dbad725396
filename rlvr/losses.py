"""The clipped policy-gradient loss and its token aggregation (TERMS.md, "clip range").

Aggregators are registered by name and normalise by the WHOLE step's token or sequence count,
passed in explicitly, so the gradient of a step does not depend on how it is split into
micro-batches: the sum of the micro-batch losses equals the full-batch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")


@AGGREGATIONS.register("token-mean")
def token_mean(token_loss, mask, total_tokens: int, total_sequences: int):
    """Σ over all tokens / tokens in the step (DAPO): every token weighs the same."""
    return (token_loss * mask).sum() / total_tokens


@AGGREGATIONS.register("seq-mean")
def seq_mean(token_loss, mask, total_tokens: int, total_sequences: int):
    """Mean over sequences of each sequence's token mean (GRPO paper): every sequence weighs
    the same, so tokens of short completions weigh more."""
    per_sequence = (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)
    return per_sequence.sum() / total_sequences


@AGGREGATIONS.register("token-sum")
def token_sum(token_loss, mask, total_tokens: int, total_sequences: int):
    """Σ over tokens / sequences in the step (Dr. GRPO's length-unnormalised sum)."""
    return (token_loss * mask).sum() / total_sequences


@dataclass
class LossSettings:
    clip_low: float  # ε_low: ratio clipped below at 1 − ε_low
    clip_high: float  # ε_high: ratio clipped above at 1 + ε_high
    aggregation: str  # a name in AGGREGATIONS
    beta: float = 0.0  # weight of the KL penalty to the reference policy
    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss)


def policy_loss(
    logprobs: torch.Tensor,  # (N, T) current policy, with gradients
    old_logprobs: torch.Tensor,  # (N, T) policy that sampled the rollouts
    advantages: torch.Tensor,  # (N,) one advantage per sequence
    mask: torch.Tensor,  # (N, T) bool, generated tokens
    settings: LossSettings,
    total_tokens: int,
    total_sequences: int,
    ref_logprobs: torch.Tensor | None = None,  # (N, T) frozen start policy, needed when beta > 0
    entropy: torch.Tensor | None = None,  # (N, T) exact entropy with gradients, when entropy_coef != 0
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate, max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)), plus optional k3 KL
    penalty (Schulman's unbiased estimator) and entropy bonus, aggregated over tokens."""
    aggregate = AGGREGATIONS.get(settings.aggregation)
    maskf = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    adv = advantages[:, None]  # (N, 1), broadcast over tokens
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - settings.clip_low, 1.0 + settings.clip_high)
    pg_loss = torch.maximum(unclipped, clipped)  # (N, T)
    token_loss = pg_loss

    metrics: dict[str, float] = {}
    policy_term = aggregate(pg_loss, maskf, total_tokens, total_sequences)
    metrics["loss/policy"] = float(policy_term.detach())
    # A token counts as clipped when the clipped branch is the active (larger) one.
    metrics["clip/frac_sum"] = float(((clipped > unclipped).float() * maskf).sum())

    if settings.beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1.0  # (N, T), ≥ 0
        token_loss = token_loss + settings.beta * kl
        metrics["loss/kl"] = float(aggregate(kl.detach(), maskf, total_tokens, total_sequences))
    if settings.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs entropy")
        token_loss = token_loss - settings.entropy_coef * entropy
        metrics["loss/entropy"] = float(aggregate(entropy.detach(), maskf, total_tokens, total_sequences))

    loss = aggregate(token_loss, maskf, total_tokens, total_sequences)
    return loss, metrics
