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


# ---------------------------------------------------------------- bookkeeping

def test_split_orders_half_the_groups_by_half_their_samples():
    split = noise_split(torch.arange(5).repeat_interleave(3))  # B = 5 groups of K = 3: h = 2, s = 1
    assert (split.groups, split.groups_half, split.group_size, split.samples_half, split.groups_split) == \
        (5, 2, 3, 1, 1)
    assert split.half_samples.tolist() == [0]
    assert split.rest_of_half.tolist() == [1, 2, 3, 4, 5]
    assert split.other_groups.tolist() == list(range(6, 15))
    split = noise_split(torch.arange(18).repeat_interleave(2))  # B = 18, K = 2: h = 9, s = ⌈9/4⌉ = 3
    assert (split.groups_half, split.samples_half, split.groups_split) == (9, 1, 3)
    assert split.half_samples.tolist() == [0, 2, 4]  # the first sample of each of S's 3 groups
    assert split.rest_of_half.tolist() == [1, 3, 5, *range(6, 18)]  # S's other samples, then H's other groups
    assert split.other_groups.tolist() == list(range(18, 36))
    assert noise_split(torch.zeros(8, dtype=torch.long)) is None  # one group: no second half to compare
    assert noise_split(torch.tensor([0, 0, 1, 1, 1])) is None  # unequal groups (--adaptive-k)
    assert noise_split(torch.arange(4)) is None  # groups of one sample
    assert noise_split(torch.zeros(0, dtype=torch.long)) is None


def test_estimate_inverts_the_expected_norms():
    """Given the expected squared norms of the model (module docstring), the formulas return
    its |G|², tr Σ_inter and tr Σ_intra exactly."""
    g2, inter, intra, big, half, k, m = 0.7, 3.0, 40.0, 10, 5, 6, 3
    full = g2 + (inter + intra / k) / big
    q12 = g2 + (inter + intra / k) / half
    for cut in (1, 2, half):  # Q1 over s of H's groups: E|g_Q1|² = |G|² + (tr Σ_inter + tr Σ_intra/m)/s
        q1 = g2 + (inter + intra / m) / cut
        e = estimate(q1, q12, full, half, big, m, k, cut)
        assert (e.signal, e.noise, e.intra, e.inter) == pytest.approx((g2, inter + intra / k, intra, inter))
        assert e.scale == pytest.approx((inter + intra / k) / g2)
    # with s = h the intra-prompt formula is the two-norm one, h·(|g_Q1|² − |g_Q12|²)/(1/m − 1/K)
    q1 = g2 + (inter + intra / m) / half
    assert estimate(q1, q12, full, half, big, m, k, half).intra == pytest.approx(half * (q1 - q12) / (1 / m - 1 / k))
    assert NoiseEstimate(-1.0, 5.0, 1.0, 1.0, 4).scale is None  # a negative |G|² estimate: no ratio


def test_combine_rescales_partial_sums_and_averages_the_ranks():
    # one rank: a partial sum over a quarter of the units is a quarter of the rows' own gradient
    probe = NoiseProbe(1.0, 4.0, 25.0, 50.0, 100.0, 2, 4, 2, 1, synced=False)
    e = combine([probe], 9.0, 4)
    assert e == estimate(16.0, 16.0, 9.0, 2, 4, 2, 4, 1)
    # two rank-local probes: the mean of their estimates; a rank without one adds nothing
    other = NoiseProbe(2.0, 3.0, 25.0, 50.0, 100.0, 2, 4, 2, 1, synced=False)
    both = combine([probe, other, None], 9.0, 6)
    one, two = combine([probe], 9.0, 6), combine([other], 9.0, 6)
    assert both.noise == pytest.approx((one.noise + two.noise) / 2)
    assert both.intra == pytest.approx((one.intra + two.intra) / 2)
    # synced probes (FSDP2): the same norms on every rank, the halves' units and groups summed
    synced = [NoiseProbe(1.0, 4.0, 25.0, 50.0, 200.0, 2, 4, 2, 1, synced=True)] * 2
    assert combine(synced, 9.0, 8) == estimate(1.0 * 4**2, 4.0 * 2**2, 9.0, 4, 8, 2, 4, 2)
    assert combine([None, None], 9.0, 8) is None


def test_the_ema_divides_smoothed_noise_by_smoothed_signal():
    monitor = GradientNoiseMonitor(half_life=1.0)  # decay 1/2
    first = monitor.update(NoiseEstimate(1.0, 10.0, 8.0, 8.0, 4))
    assert first["grad/noise_scale"] == first["grad/noise_scale_ema"] == 10.0
    assert first["grad/noise_scale_per_completion"] == 40.0
    second = monitor.update(NoiseEstimate(-0.5, 20.0, 8.0, 18.0, 4))
    assert "grad/noise_scale" not in second  # a negative |G|² this step: no per-step ratio
    assert second["grad/noise_scale_ema"] == pytest.approx(15.0 / 0.25)  # not a mean of per-step ratios
    assert second["grad/noise_scale_per_completion_ema"] == pytest.approx(4 * 60.0)
    restored = GradientNoiseMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.update(NoiseEstimate(1.0, 1.0, 1.0, 1.0, 4)) == monitor.update(NoiseEstimate(1.0, 1.0, 1.0, 1.0, 4))


def small_batch(groups: int = 4, k: int = 4, seed: int = 3):
    policy = make_policy(seed=seed)
    items = [{"id": str(i), "prompt": f"{i}+1="} for i in range(groups)]
    batch = sample_groups(policy, items, k, max_new_tokens=5, temperature=1.0,
                          generator=[torch.Generator().manual_seed(i) for i in range(groups)])
    rewards = torch.tensor([digit_share(text, {}) for text in batch.texts])
    return policy, batch, group_advantages(advantage_function(TrainConfig()), rewards, [k] * groups)


def test_the_first_update_is_measured_and_switching_off_restores_the_plain_order():
    policy, batch, advantages = small_batch()
    start = {k: v.clone() for k, v in policy.module.state_dict().items()}

    def step(**overrides):
        policy.module.load_state_dict(start)
        optimizer = torch.optim.AdamW(policy.module.parameters(), lr=1e-2)
        return train_step(policy, optimizer, batch, advantages, TrainConfig(**overrides))

    once, twice = step(), step(updates_per_step=3)
    assert twice.noise == once.noise and twice.sq_grad_norm == once.sq_grad_norm  # update 1's, on-policy
    assert once.metrics["perf/micro_batches"] == 3  # Q1, the rest of H, the other groups
    off = step(grad_noise=False)
    assert off.noise is None and off.metrics["perf/micro_batches"] == 1
    assert off.metrics["grad/norm"] == pytest.approx(once.metrics["grad/norm"], rel=1e-5)  # the same gradient
    assert "perf/noise_seconds" in once.metrics and "perf/noise_seconds" not in off.metrics


def test_one_group_is_not_measured():
    policy, batch, advantages = small_batch(groups=1)
    result = train_step(policy, torch.optim.SGD(policy.module.parameters(), lr=0.0), batch, advantages, TrainConfig())
    assert result.noise is None and result.metrics["perf/micro_batches"] == 1


def test_a_default_run_logs_the_noise_scale(tmp_path):
    """`rlvr train` with its defaults (fewer steps): every step measures; grad/noise_scale is
    logged on the steps whose |G|² estimate is positive, its EMA once the smoothed one is."""
    from rlvr.cli import main

    out = tmp_path / "run"
    assert main(["train", "--steps", "20", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= 1]
    assert all("grad/noise" in r and "grad/signal" in r and "grad/noise_intra" in r for r in rows)
    assert any("grad/noise_scale" in r for r in rows)
    off = tmp_path / "off"
    assert main(["train", "--steps", "2", "--out", str(off), "--quiet", "--threads", "1", "--no-grad-noise"]) == 0
    assert not any(key.startswith("grad/noise") or key == "grad/signal"
                   for line in (off / "metrics.jsonl").read_text().splitlines() for key in json.loads(line))


def test_each_aggregation_divides_by_the_unit_the_rescaling_uses():
    """NORMALISED_BY says which count each registered aggregation divides by: doubling that count
    halves the loss, doubling the other leaves it."""
    from rlvr.algo.losses import AGGREGATIONS

    loss, mask = torch.rand(3, 5), torch.ones(3, 5)
    assert set(NORMALISED_BY) == set(AGGREGATIONS.names())
    for name, unit in NORMALISED_BY.items():
        aggregate = AGGREGATIONS.get(name)
        base = aggregate(loss, mask, 15, 3)
        tokens, sequences = aggregate(loss, mask, 30, 3), aggregate(loss, mask, 15, 6)
        assert (tokens if unit == "tokens" else sequences) == pytest.approx(base / 2)
        assert (sequences if unit == "tokens" else tokens) == pytest.approx(base)
