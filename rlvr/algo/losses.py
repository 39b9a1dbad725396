"""The policy-gradient loss and its token aggregation (TERMS.md, "clip range").

`policy_loss` builds each token's loss from parts registered by name: the importance ratio per
token or, with GSPO, per completion (`--ratio-level`); the surrogate of that ratio (OBJECTIVES:
PPO-clip with optional dual-clip, or CISPO); the token controls of Cui et al. (Clip-Cov, KL-Cov);
the KL penalty to the start policy (KL_ESTIMATORS) and the entropy bonus. docs/training.md has
the table of objectives with their papers and their names in TRL and verl.

Aggregators are registered by name and normalise by the WHOLE step's token or sequence count,
passed in explicitly, so the gradient of a step does not depend on how it is split into
micro-batches: the sum of the micro-batch losses equals the full-batch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")
OBJECTIVES: Registry = Registry("policy loss")
KL_ESTIMATORS: Registry = Registry("KL estimator")


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


# What each aggregation divides by: a partial sum of a step's loss, over some of its rows, is
# rescaled to those rows' own loss by the step's count over theirs (rlvr.algo.noise).
NORMALISED_BY = {"token-mean": "tokens", "seq-mean": "sequences", "token-sum": "sequences"}


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
    objective: str = "ppo"  # a name in OBJECTIVES: the surrogate of the policy ratio
    ratio_level: str = "token"  # token: π/π_old per token; sequence: GSPO's geometric mean per completion
    dual_clip: float = 0.0  # c > 1: the loss of a negative-advantage token is capped at −A·c (0 = off)
    kl_estimator: str = "k3"  # a name in KL_ESTIMATORS (with beta > 0)
    positive_weight: float = 1.0  # λ of W-REINFORCE: positive advantages are scaled by it (1 = off)


# ---------------------------------------------------------------- the surrogate of the ratio

@OBJECTIVES.register("ppo")
def ppo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor, settings: LossSettings) -> tuple:
    """PPO-clip: max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)); with --dual-clip c, a token with
    A < 0 is further capped at −A·c (Ye et al. 2020), so a huge ratio cannot blow its loss up.
    -> (token loss (N, T), clipped (N, T) bool: the clipped branch is the active one)."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - settings.clip_low, 1.0 + settings.clip_high)
    loss = torch.maximum(unclipped, clipped)  # (N, T)
    active = clipped > unclipped
    if settings.dual_clip > 0:
        cap = -adv * settings.dual_clip
        capped = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
        active = active | capped
    return loss, active


@OBJECTIVES.register("cispo")
def cispo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor, settings: LossSettings) -> tuple:
    """CISPO (MiniMax-M1, 2025): −sg(clip(r, 1−ε_low, 1+ε_high))·A·log π. The IS weight is
    clipped and carries no gradient, so no token's gradient is ever cut (PPO's clip zeroes the
    gradient of a token outside the range; CISPO only bounds its weight). -> (token loss,
    tokens whose weight was clipped)."""
    weight = ratio.detach().clamp(1.0 - settings.clip_low, 1.0 + settings.clip_high)
    return -weight * adv * logprobs, (ratio.detach() != weight)


# ---------------------------------------------------------------- the KL penalty's estimator

# Each takes log(π_ref/π) per token (N, T), sampled from π, and estimates KL(π‖π_ref) per token.
@KL_ESTIMATORS.register("k1")
def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """−log(π_ref/π): unbiased in value; its expected gradient is 0, so as a loss it does nothing
    on average (Tang & Munos 2025)."""
    return -log_ratio


@KL_ESTIMATORS.register("k2")
def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """½·log(π_ref/π)²: biased in value, but its gradient is the unbiased gradient of KL(π‖π_ref)."""
    return 0.5 * log_ratio ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """π_ref/π − log(π_ref/π) − 1 (Schulman 2020; GRPO's): unbiased in value and ≥ 0; its
    gradient is that of the reverse KL(π_ref‖π), not of KL(π‖π_ref)."""
    return torch.exp(log_ratio) - log_ratio - 1.0


@KL_ESTIMATORS.register("k3+")
def kl_k3_plus(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3's value with k2's gradient (verl's "k3+"): unbiased in value and in gradient."""
    k2 = kl_k2(log_ratio)
    return kl_k3(log_ratio).detach() + k2 - k2.detach()


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's per-token log-ratio (Zheng et al. 2025, "GSPO-token"): its value is the completion's
    log s_i = mean over its tokens of log π/π_old (the geometric mean of the token ratios), its
    gradient that of log π_t. With --loss-agg seq-mean the loss's value and gradient are GSPO's
    sequence objective exactly. (N, T) -> (N, T)."""
    per_token = (logprobs - old_logprobs) * mask
    log_s = per_token.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    return log_s.detach() + logprobs - logprobs.detach()


# ---------------------------------------------------------------- token controls (Cui et al. 2025)

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
    is_weights: torch.Tensor | None = None,  # (N, T) --is-correction's weight of each token's policy term, no gradient
) -> tuple[torch.Tensor, dict[str, float]]:
    """The surrogate of the importance ratio (PPO-clip by default: max(−A·r, −A·clip(r, 1−ε_low,
    1+ε_high))), with optional Clip-Cov / KL-Cov token controls, a KL penalty (k3 by default) and
    an entropy bonus, aggregated over the masked tokens. `is_weights` (rlvr.algo.correction)
    multiply each token's policy term: the rollouts of an external engine, reweighted toward the
    trainer's distribution."""
    aggregate = AGGREGATIONS.get(settings.aggregation)
    adv = advantages[:, None].expand_as(logprobs)  # (N, T), one advantage per sequence
    if settings.positive_weight != 1.0:  # W-REINFORCE (Zhu et al. 2025): λ on the positive samples' term
        adv = torch.where(adv > 0, settings.positive_weight * adv, adv)
    if settings.ratio_level == "sequence":
        ratio = torch.exp(sequence_log_ratio(logprobs, old_logprobs, mask))  # (N, T), s_i on every token
    else:
        ratio = torch.exp(logprobs - old_logprobs)  # (N, T)

    metrics: dict[str, float] = {}
    if settings.kl_cov_ratio > 0:
        # KL-Cov as in Cui et al. 2025 (and verl's compute_policy_loss_kl_cov): the unclipped
        # surrogate on every token, plus coef·|log π − log π_old| on the top tokens by covariance.
        pg_loss = -adv * ratio
        clipped = torch.zeros_like(mask)
        selected = kl_cov_select(token_covariance(logprobs, adv, mask), mask, settings.kl_cov_ratio)
        pg_loss = pg_loss + settings.kl_cov_coef * (logprobs - old_logprobs).abs() * selected
        metrics["clip/kl_cov_tokens"] = float(selected.sum())
    else:
        pg_loss, clipped = OBJECTIVES.get(settings.objective)(ratio, logprobs, adv, settings)  # (N, T) each
        clipped = clipped & mask
        if settings.clip_cov_ratio > 0:
            cov = token_covariance(logprobs, adv, mask)
            keep = clip_cov_keep(cov, mask, clipped, settings.clip_cov_ratio, settings.clip_cov_bounds, generator)
            pg_loss = pg_loss * keep
            metrics["clip/cov_tokens"] = float((~keep).sum())
    if is_weights is not None:
        pg_loss = pg_loss * is_weights.detach()
    maskf = mask.float()
    token_loss = pg_loss
    policy_term = aggregate(pg_loss, maskf, total_tokens, total_sequences)
    metrics["loss/policy"] = float(policy_term.detach())
    metrics["clip/frac_sum"] = float(clipped.sum())

    if settings.beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = KL_ESTIMATORS.get(settings.kl_estimator)(ref_logprobs - logprobs)  # (N, T)
        token_loss = token_loss + settings.beta * kl
        metrics["loss/kl"] = float(aggregate(kl.detach(), maskf, total_tokens, total_sequences))
    if settings.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs entropy")
        token_loss = token_loss - settings.entropy_coef * entropy
        metrics["loss/entropy"] = float(aggregate(entropy.detach(), maskf, total_tokens, total_sequences))

    loss = aggregate(token_loss, maskf, total_tokens, total_sequences)
    return loss, metrics
