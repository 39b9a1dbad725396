"""Group-relative advantage estimators, registered by name (TERMS.md, "advantage").

Each takes rewards of shape (B, K) — B groups of K samples — and returns advantages of the same
shape. A group whose rewards are all equal gets advantage 0 from every estimator here.
"""
from __future__ import annotations

import torch

from rlvr.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")

EPS = 1e-6  # keeps GRPO's division finite for zero-variance groups (whose numerator is 0)


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor) -> torch.Tensor:
    """(r − mean) / (std + ε), std with Bessel's correction as in DeepSeekMath, TRL and verl."""
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)  # (B, 1)
    return (rewards - mean) / (std + EPS)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """r − mean: Dr. GRPO (Liu et al. 2025) drops the std division that up-weights easy and
    hard prompts."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """r_i − mean of the other K−1 rewards (leave-one-out baseline, Ahmadian et al. 2024)."""
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)  # (B, K)
    return rewards - others


def zero_signal_fraction(rewards: torch.Tensor) -> float:
    """Share of groups whose K rewards are all equal (they carry no policy-gradient signal)."""
    equal = (rewards == rewards[:, :1]).all(dim=1)  # (B,)
    return float(equal.float().mean())
