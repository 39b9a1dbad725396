"""The gradient-noise measurement (rlvr/algo/noise.py, train_step's partial sums) against brute
force on the built-in model, and its bookkeeping: the split, the rescaling per aggregation, the
EMA, when nothing is logged, data parallelism, and `grad/noise_scale` in a default run.

The brute force: on each of STEPS fresh batches of the shipped tiny model, one backward per
sample and one per group give every sample's and every group's gradient of its un-normalised
loss. From them, exactly for that batch: the per-prompt covariance tr Σ (the groups' sample
covariance of their contributions to the step's gradient), |G|² (|ḡ|² − tr Σ/B, the unbiased
estimate of the squared mean), and the intra-prompt term tr Σ_intra (the mean over groups of the
within-group sample variance of the samples' contributions, per sample). train_step's estimate
of the same batch is unbiased for each (module docstring of rlvr.algo.noise): the test checks
that the mean of the per-step estimates lies within the 95% CI around the brute-force mean,
the CI of the per-step differences (paired, since both are computed on the same batches; the
estimator's own noise is the larger part of it). A broken copy, whose half-batch scaling is off
by a factor of 2, must fail the same check.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlvr.algo import noise
from rlvr.algo.losses import NORMALISED_BY, policy_loss
from rlvr.algo.noise import GradientNoiseMonitor, NoiseEstimate, NoiseProbe, combine, estimate, noise_split
from rlvr.config import TrainConfig
from rlvr.rollout.forward import Scorer
from rlvr.rollout.sample import sample_groups
from rlvr.rollout.strategies import advantage_function, group_advantages
from rlvr.tasks import get_task
from rlvr.train.step import loss_settings, loss_token_mask, train_step
from conftest import make_policy
from shaped_rewards import digit_share

STEPS = 50
PROMPTS, K = 8, 4
KEYS = ("signal", "noise", "intra", "inter")


def flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).double()


def brute_force(policy, batch, advantages, cfg: TrainConfig, check_groups: bool) -> dict[str, float]:
    """The batch's exact quantities from one backward per sample (and, with `check_groups`, one
    per group, which must equal the sum of its samples')."""
    settings = loss_settings(cfg, 0.0)
    scorer = Scorer(policy, cfg.temperature)
    token_mask = loss_token_mask(batch, cfg, policy.stop_ids)
    params = [p for p in policy.module.parameters() if p.requires_grad]
    tokens = NORMALISED_BY[cfg.loss_agg] == "tokens"

    def gradient(rows: torch.Tensor) -> torch.Tensor:
        """The gradient of the rows' loss with normaliser 1 (a sum in the aggregation's unit)."""
        policy.module.zero_grad(set_to_none=True)
        logp, _ = scorer(batch, rows)
        loss, _ = policy_loss(logp, logp.detach(), advantages[rows], token_mask[rows], settings, 1, 1)
        loss.backward()
        return flat_grad(params)

    units = token_mask.sum(dim=1).double() if tokens else torch.ones(batch.num_rows, dtype=torch.float64)  # (N,)
    groups = torch.arange(batch.num_rows).view(PROMPTS, K)  # (B, K): the rows of each group
    per_sample = torch.stack([gradient(torch.tensor([i])) for i in range(batch.num_rows)])  # (N, P)
    per_group = per_sample.view(PROMPTS, K, -1).sum(dim=1)  # (B, P)
    if check_groups:  # one backward per group: the same gradients
        by_group = torch.stack([gradient(rows) for rows in groups])
        assert torch.allclose(by_group, per_group, atol=1e-4, rtol=1e-4)
    group_units = units.view(PROMPTS, K).sum(dim=1)  # (B,)
    mean = per_group.sum(dim=0) / group_units.sum()  # the step's gradient ḡ
    # each group's contribution to the step's gradient, linearised for the ratio of token-mean
    centred = (per_group - group_units[:, None] * mean) / group_units.mean()  # (B, P)
    trace = float((centred ** 2).sum()) / (PROMPTS - 1)
    samples = (per_sample - units[:, None] * mean) / units.mean()  # (N, P)
    within = samples.view(PROMPTS, K, -1)
    intra = float(((within - within.mean(dim=1, keepdim=True)) ** 2).sum()) / (K - 1) / PROMPTS
    policy.module.zero_grad(set_to_none=True)
    return {"signal": float(mean @ mean) - trace / PROMPTS, "noise": trace, "intra": intra,
            "inter": trace - intra / K}


def measured_steps(loss_agg: str) -> list[tuple[dict, NoiseProbe, float]]:
    """Per step: the brute-force quantities of a fresh batch, and train_step's probe and |g|² on
    it (an update with lr 0, so every step sees the same policy)."""
    policy = make_policy(seed=1)
    policy.module.train()
    optimizer = torch.optim.SGD([p for p in policy.module.parameters() if p.requires_grad], lr=0.0)
    task = get_task("add2", seed=0)
    cfg = TrainConfig(k=K, prompts_per_step=PROMPTS, loss_agg=loss_agg)
    out = []
    for step in range(STEPS):
        items = [task.item("train", step * PROMPTS + i) for i in range(PROMPTS)]
        batch = sample_groups(policy, items, K, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              generator=[torch.Generator().manual_seed(1000 * step + i) for i in range(PROMPTS)])
        rewards = torch.tensor([digit_share(text, items[i // K]) for i, text in enumerate(batch.texts)])
        advantages = group_advantages(advantage_function(cfg), rewards, [K] * PROMPTS)
        exact = brute_force(policy, batch, advantages, cfg, check_groups=step < 3)
        result = train_step(policy, optimizer, batch, advantages, cfg)
        out.append((exact, result.noise, result.sq_grad_norm))
    return out


def paired(steps: list) -> dict[str, np.ndarray]:
    """(STEPS, 2) per quantity: [brute force, rlvr's estimate], the estimate from `combine`."""
    pairs = {key: [] for key in KEYS}
    for exact, probe, sq_full in steps:
        e = combine([probe], sq_full, PROMPTS)
        for key in KEYS:
            pairs[key].append((exact[key], getattr(e, key)))
    return {key: np.asarray(v) for key, v in pairs.items()}


def agrees(pairs: np.ndarray) -> tuple[bool, str]:
    """The estimates' mean within the 95% CI around the brute-force mean (half-width from the
    paired differences, t quantile for STEPS − 1 degrees of freedom ≈ 2.0)."""
    exact, measured = pairs[:, 0], pairs[:, 1]
    diff = measured - exact
    half = 2.0 * diff.std(ddof=1) / np.sqrt(len(diff))
    low, high = exact.mean() - half, exact.mean() + half
    return bool(low <= measured.mean() <= high), (f"estimate mean {measured.mean():.4g}, brute force mean "
                                                  f"{exact.mean():.4g}, CI [{low:.4g}, {high:.4g}]")


@pytest.fixture(scope="module")
def token_mean_steps() -> list:
    return measured_steps("token-mean")


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "token-sum"])
def test_estimates_agree_with_brute_force_in_expectation(loss_agg, token_mean_steps):
    pairs = paired(token_mean_steps if loss_agg == "token-mean" else measured_steps(loss_agg))
    for key in KEYS:
        ok, text = agrees(pairs[key])
        assert ok, f"{loss_agg} {key}: {text}"
    # the measurement is informative: the noise is clearly positive, not a CI around 0
    assert pairs["noise"][:, 0].mean() > 0 and pairs["intra"][:, 0].mean() > 0


def test_a_half_batch_scaling_off_by_two_fails_the_check(monkeypatch, token_mean_steps):
    """The broken copy: the squared norm of a partial sum rescaled by the ratio of units instead
    of its square, a factor of 2 at a half batch. Same batches and norms, so the same check."""
    monkeypatch.setattr(noise, "mean_gradient_sq_norm", lambda sq, step_units, part_units: sq * step_units / part_units)
    results = {key: agrees(value) for key, value in paired(token_mean_steps).items()}
    assert not results["noise"][0] and not results["signal"][0], results
