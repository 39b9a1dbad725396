"""The train/inference mismatch of an external generation engine (--engine vllm), measured,
corrected and watched (docs/engines.md).

An engine such as vLLM samples with its own kernels, often in another precision: the
distribution that drew a rollout's tokens (π_engine) is not exactly the trainer's (π_old, the
trainer's own forward over the same tokens before the update). The policy gradient the trainer
computes assumes π_old drew them. Truncated importance sampling (Yao et al. 2025, "Your efficient
RL framework secretly brings you off-policy RL training") reweights each token, or each sequence,
by ρ = π_old / π_engine, capped at C, so the gradient is that of the trainer's distribution up to
the cap's bias; a mask drops what lies past the cap instead.

All functions take per-token log-probs (N, T) of the sampled tokens and a (N, T) bool mask of the
tokens that count; nothing here has gradients.
"""
from __future__ import annotations

import math

import torch

from rlvr.registry import Registry

# --is-correction NAME: (N, T) log ρ, mask, cap -> (N, T) weights and (N, T) bool "cut" (capped or masked)
CORRECTIONS: Registry = Registry("is-correction")


def log_ratio(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log ρ = log π_old − log π_engine per token (N, T), 0 outside `mask`."""
    return torch.where(mask, trainer_logprobs.double() - engine_logprobs.double(), 0.0)


def sequence_log_ratio(log_rho: torch.Tensor) -> torch.Tensor:
    """(N, T) token log ratios (0 outside the mask) -> (N, 1): the log of the sequence's
    importance weight, Π_t ρ_t."""
    return log_rho.sum(dim=1, keepdim=True)


@CORRECTIONS.register("none")
def no_correction(log_rho, mask, cap):
    return torch.ones_like(log_rho), torch.zeros_like(mask)


@CORRECTIONS.register("token-tis")
def token_tis(log_rho, mask, cap):
    """min(ρ_t, C) per token."""
    rho = log_rho.exp()
    return rho.clamp(max=cap), (rho > cap) & mask


@CORRECTIONS.register("seq-tis")
def seq_tis(log_rho, mask, cap):
    """min(Π_t ρ_t, C) on every token of the sequence."""
    rho = sequence_log_ratio(log_rho).exp().expand_as(log_rho)
    return rho.clamp(max=cap), (rho > cap) & mask


@CORRECTIONS.register("token-mask")
def token_mask(log_rho, mask, cap):
    """ρ_t, or 0 for a token whose ρ_t is outside [1/C, C]."""
    rho = log_rho.exp()
    out = (rho > cap) | (rho < 1.0 / cap)
    return torch.where(out, 0.0, rho), out & mask


@CORRECTIONS.register("seq-mask")
def seq_mask(log_rho, mask, cap):
    """Π_t ρ_t on every token, or 0 for the whole sequence when it is outside [1/C, C]."""
    rho = sequence_log_ratio(log_rho).exp().expand_as(log_rho)
    out = (rho > cap) | (rho < 1.0 / cap)
    return torch.where(out, 0.0, rho), out & mask


def importance_weights(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                       correction: str, cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-token weight (N, T) float32 that multiplies each token's policy-gradient term
    (0 outside `mask`), and `mismatch/corrected_frac`: the share of the masked tokens the
    correction capped or zeroed."""
    log_rho = log_ratio(trainer_logprobs, engine_logprobs, mask)
    weights, cut = CORRECTIONS.get(correction)(log_rho, mask, cap)
    tokens = max(1, int(mask.sum()))
    return (weights * mask).float(), {"mismatch/corrected_frac": float(cut.sum()) / tokens}


MISMATCH_KEYS = ("mismatch/kl", "mismatch/logprob_abs_max", "mismatch/is_ratio_mean", "mismatch/is_ratio_max",
                 "mismatch/seq_is_ratio_max")


def mismatch_metrics(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the engine's distribution is from the trainer's on the sampled tokens:
      mismatch/kl                k3 = ρ − 1 − log ρ per token, averaged: an unbiased, non-negative
                                 estimate of KL(π_engine ‖ π_old), the tokens being drawn from π_engine
      mismatch/logprob_abs_max   the largest |log π_old − log π_engine|
      mismatch/is_ratio_mean     the mean token ρ (1 in expectation when the supports agree)
      mismatch/is_ratio_max      the largest token ρ
      mismatch/seq_is_ratio_max  the largest sequence weight Π_t ρ_t
    NaN when no token is masked in."""
    return mismatch_of_totals([mismatch_totals(trainer_logprobs, engine_logprobs, mask)])


def mismatch_totals(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """The sums and extremes mismatch_metrics needs, as plain floats: a rank's part of a step,
    combined over the ranks by `mismatch_of_totals`."""
    tokens = int(mask.sum())
    if not tokens:
        return {"tokens": 0}
    log_rho = log_ratio(trainer_logprobs, engine_logprobs, mask)
    rho = log_rho.exp()
    k3 = (rho - 1.0 - log_rho)[mask]
    return {"tokens": tokens, "k3": float(k3.sum()), "rho": float(rho[mask].sum()),
            "abs_max": float(log_rho.abs().max()), "rho_max": float(rho[mask].max()),
            "seq_max": float(sequence_log_ratio(log_rho)[mask.any(dim=1)].exp().max())}


def mismatch_of_totals(parts: list[dict]) -> dict:
    """mismatch/* of the tokens of all `parts` (mismatch_totals of each rank); NaN without tokens."""
    parts = [p for p in parts if p["tokens"]]
    if not parts:
        return dict.fromkeys(MISMATCH_KEYS, math.nan)
    tokens = sum(p["tokens"] for p in parts)
    return {
        "mismatch/kl": sum(p["k3"] for p in parts) / tokens,
        "mismatch/logprob_abs_max": max(p["abs_max"] for p in parts),
        "mismatch/is_ratio_mean": sum(p["rho"] for p in parts) / tokens,
        "mismatch/is_ratio_max": max(p["rho_max"] for p in parts),
        "mismatch/seq_is_ratio_max": max(p["seq_max"] for p in parts),
    }


class DriftDetector:
    """Engine drift: the EMA of mismatch/kl (half-life `half_life` steps) above `threshold` for
    `patience` consecutive steps. `update` returns True on the step the condition is met, once
    per excursion; falling back below the threshold re-arms it."""

    def __init__(self, threshold: float, patience: int, half_life: float = 5.0) -> None:
        self.threshold, self.patience = threshold, patience
        self.decay = 0.5 ** (1.0 / half_life)
        self.ema: float | None = None
        self.above_since: int | None = None
        self.fired = False

    def update(self, step: int, kl: float) -> bool:
        if math.isnan(kl):
            return False
        self.ema = kl if self.ema is None else self.decay * self.ema + (1.0 - self.decay) * kl
        if self.ema > self.threshold:
            if self.above_since is None:
                self.above_since = step
            if not self.fired and step - self.above_since + 1 >= self.patience:
                self.fired = True
                return True
        else:
            self.above_since, self.fired = None, False
        return False

    def reset(self) -> None:
        """After a resync: the engine's weights are fresh, so the excursion starts over."""
        self.ema, self.above_since, self.fired = None, None, False

    def state_dict(self) -> dict:
        return {"ema": self.ema, "above_since": self.above_since, "fired": self.fired}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.above_since, self.fired = state["ema"], state["above_since"], state["fired"]
