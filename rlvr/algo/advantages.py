"""Group-relative advantage estimators, registered by name (TERMS.md, "advantage").

Each takes rewards of shape (B, K) — B groups of K samples — and returns advantages of the same
shape. A group whose rewards are all equal gets advantage exactly 0 from every estimator here
(`zero_equal_groups`): in floating point the mean of K equal rewards can be one rounding step
off, and GRPO's division by a std of ~1e-8 would turn that step into an advantage of 0.03-0.06.

Two estimators are batch-level (`BATCH_LEVEL`): their normaliser is a statistic of every group
of the step, so they need the step's groups in one call (equal group sizes, one process).
"""
from __future__ import annotations

import math

import torch

from rlvr.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
BATCH_LEVEL = {"grpo_batch_std", "reinforce_pp"}  # normalised by statistics of the whole step

EPS = 1e-6  # keeps GRPO's division finite for zero-variance groups (whose numerator is 0)


def equal_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, 1) bool: True where every reward of the group equals its first."""
    return (rewards == rewards[:, :1]).all(dim=1, keepdim=True)


def zero_equal_groups(rewards: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Advantages with every all-equal group's set to exactly 0 (they carry no signal)."""
    return advantages.masked_fill(equal_groups(rewards), 0.0)


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor) -> torch.Tensor:
    """(r − mean) / (std + ε), std with Bessel's correction as in DeepSeekMath, TRL and verl."""
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)  # (B, 1)
    return zero_equal_groups(rewards, (rewards - mean) / (std + EPS))


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """r − mean: Dr. GRPO (Liu et al. 2025) drops the std division that up-weights easy and
    hard prompts."""
    return zero_equal_groups(rewards, rewards - rewards.mean(dim=1, keepdim=True))


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """r_i − mean of the other K−1 rewards (leave-one-out baseline, Ahmadian et al. 2024)."""
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)  # (B, K)
    return zero_equal_groups(rewards, rewards - others)


@ADVANTAGES.register("grpo_batch_std")
def grpo_batch_std(rewards: torch.Tensor) -> torch.Tensor:
    """(r − group mean) / (std of all the step's rewards + ε): GRPO with the std taken over the
    batch, not the group (TRL's scale_rewards="batch"; Liu et al. 2025 argue the per-group std
    up-weights groups that are nearly solved or nearly failed). Bessel-corrected std."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (B, K)
    return zero_equal_groups(rewards, centred / (rewards.std(unbiased=True) + EPS))


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): the group mean as baseline, then the
    centred rewards whitened over the whole batch, (c − mean(c)) / (std(c) + ε). verl
    (`reinforce_plus_plus_baseline`) whitens over tokens, so long completions weigh more in its
    batch statistics; rlvr whitens over completions, one value each. Bessel-corrected std."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (B, K)
    whitened = (centred - centred.mean()) / (centred.std(unbiased=True) + EPS)
    return zero_equal_groups(rewards, whitened)


def pass_at_k_advantage(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Pass@k Training's analytic group advantage (Chen et al. 2025, arXiv 2508.10751, §3.3).

    The objective rewards a k-subset of a group for holding at least one correct sample. For a
    group of N samples with N_pos correct (reward exactly 1: full credit) and N_neg = N − N_pos
    incorrect, averaging over all C(N, k) subsets gives, without sampling any subset:
        R̄ = 1 − C(N_neg, k) / C(N, k)                      (the unbiased pass@k of the group)
        σ = sqrt(R̄ (1 − R̄))
        A_pos = (1 − R̄) / (σ + ε)
        A_neg = (1 − R̄ − C(N_neg − 1, k − 1) / C(N − 1, k − 1)) / (σ + ε)
    A_neg's ratio is the chance that the other k − 1 members of a subset holding this incorrect
    sample are all incorrect too. ε = 1e-6 as in the authors' code; groups whose subsets all
    score alike (all correct, all wrong, or fewer than k wrong) get 0. k = 1 is GRPO with the
    population std. Binomial ratios use the product form of `pass_at_k` (no huge binomials).
    (B, N) -> (B, N)."""
    from rlvr.algo.stats import pass_at_k

    correct = rewards == 1.0  # (B, N)
    n = rewards.shape[1]
    out = torch.zeros_like(rewards)
    for g, n_pos in enumerate(correct.sum(dim=1).tolist()):
        mean = pass_at_k(n, n_pos, k)
        std = math.sqrt(mean * (1.0 - mean))
        all_wrong_with = 1.0 - pass_at_k(n - 1, n_pos, k - 1) if k > 1 and n_pos < n else 1.0
        out[g] = torch.where(correct[g], (1.0 - mean) / (std + EPS), (1.0 - mean - all_wrong_with) / (std + EPS))
    return out
