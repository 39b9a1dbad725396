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
    clip_cov_ratio: float = 0.0  # Clip-Cov: share of tokens whose gradient is cut (0 = off)
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0)  # Clip-Cov: covariance window they are drawn from
    kl_cov_ratio: float = 0.0  # KL-Cov: share of tokens, top by covariance, given the |Δ log π| penalty (0 = off)
    kl_cov_coef: float = 1.0  # KL-Cov: weight of that penalty


def token_covariance(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token centred product (log π − mean log π)·(A − mean A) over the masked tokens (Cui et
    al. 2025, eq. 7): the tokens whose updates lower entropy most. (N, T) -> (N, T), −inf off mask."""
    lp = logprobs.detach()
    mean_lp = lp[mask].mean()
    mean_adv = advantages[mask].mean()
    cov = (advantages - mean_adv) * (lp - mean_lp)
    return cov.masked_fill(~mask, -torch.inf)


def clip_cov_keep(cov: torch.Tensor, mask: torch.Tensor, already_clipped: torch.Tensor, ratio: float,
                  bounds: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    """Clip-Cov: draw max(1, ⌊ratio·tokens⌋) tokens at random among those with covariance in
    (low, high) not already clipped by PPO; their loss (and gradient) is dropped. -> keep (N, T) bool."""
    candidates = (cov > bounds[0]) & (cov < bounds[1]) & mask & ~already_clipped
    keep = torch.ones_like(mask)
    index = candidates.flatten().nonzero().squeeze(1)
    if index.numel():
        count = min(max(1, int(ratio * int(mask.sum()))), index.numel())
        chosen = index[torch.randperm(index.numel(), generator=generator)[:count]]
        keep.view(-1)[chosen] = False
    return keep


def kl_cov_select(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov: the top max(1, ⌊ratio·tokens⌋) tokens by covariance. -> selected (N, T) bool."""
    selected = torch.zeros_like(mask)
    count = min(max(1, int(ratio * int(mask.sum()))), int(mask.sum()))
    if count:
        selected.view(-1)[cov.flatten().topk(count).indices] = True
    return selected & mask


def top_entropy_select(entropy: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top `fraction` of masked tokens by entropy (Wang et al. 2025, "Beyond the 80/20 rule":
    gradient only through high-entropy "forking" tokens). -> selected (N, T) bool."""
    values = entropy[mask]
    count = max(1, round(fraction * values.numel()))
    threshold = values.topk(count).values[-1]
    return mask & (entropy >= threshold)


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
    generator: torch.Generator | None = None,  # Clip-Cov's random token draw
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate, max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)), with optional Clip-Cov /
    KL-Cov token controls, k3 KL penalty (Schulman's estimator) and entropy bonus, aggregated
    over the masked tokens."""
    aggregate = AGGREGATIONS.get(settings.aggregation)
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    adv = advantages[:, None].expand_as(ratio)  # (N, T), one advantage per sequence
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - settings.clip_low, 1.0 + settings.clip_high)
    pg_loss = torch.maximum(unclipped, clipped)  # (N, T)
    ppo_clipped = (clipped > unclipped) & mask  # the clipped branch is the active (larger) one

    metrics: dict[str, float] = {}
    if settings.clip_cov_ratio > 0 or settings.kl_cov_ratio > 0:
        cov = token_covariance(logprobs, adv, mask)
        if settings.clip_cov_ratio > 0:
            keep = clip_cov_keep(cov, mask, ppo_clipped, settings.clip_cov_ratio, settings.clip_cov_bounds, generator)
            pg_loss = pg_loss * keep
            metrics["clip/cov_tokens"] = float((~keep).sum())
        if settings.kl_cov_ratio > 0:
            selected = kl_cov_select(cov, mask, settings.kl_cov_ratio)
            pg_loss = pg_loss + settings.kl_cov_coef * (logprobs - old_logprobs).abs() * selected
            metrics["clip/kl_cov_tokens"] = float(selected.sum())
    maskf = mask.float()
    token_loss = pg_loss
    policy_term = aggregate(pg_loss, maskf, total_tokens, total_sequences)
    metrics["loss/policy"] = float(policy_term.detach())
    metrics["clip/frac_sum"] = float(ppo_clipped.sum())

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
