import math

import pytest
import torch

from rlvr.algo.losses import LossSettings, policy_loss


def hand_token_loss(logp, old, adv, lo, hi):
    ratio = math.exp(logp - old)
    return max(-adv * ratio, -adv * min(max(ratio, 1 - lo), 1 + hi))


def test_clipped_loss_matches_hand_computation_at_both_edges():
    # Ratios 1.5 (above 1+0.2), 0.5 (below 1-0.2), 1.1 (inside), with both advantage signs.
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]]))
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    settings = LossSettings(clip_low=0.2, clip_high=0.3, aggregation="token-mean")
    loss, metrics = policy_loss(logp.requires_grad_(), old, adv, mask, settings, total_tokens=5, total_sequences=2)
    tokens = [hand_token_loss(logp[i, t].item(), 0.0, adv[i].item(), 0.2, 0.3)
              for i in range(2) for t in range(3) if mask[i, t]]
    assert tokens[0] == pytest.approx(-1.3)  # A>0, ratio 1.5 clipped to 1+ε_high
    assert tokens[1] == pytest.approx(-0.5)  # A>0, ratio 0.5 not clipped (pessimistic branch)
    assert tokens[3] == pytest.approx(3.0)   # A<0, ratio 1.5 unclipped (pessimistic branch)
    assert tokens[4] == pytest.approx(1.6)   # A<0, ratio 0.5 clipped to 1-ε_low
    assert loss.item() == pytest.approx(sum(tokens) / 5, rel=1e-6)
    # Clipped tokens: row 0 ratio 1.5 and row 1 ratio 0.5: 2 of 5 tokens.
    assert metrics["clip/frac_sum"] == 2
    # A clipped token gives no gradient; an unclipped one gives −A·ratio.
    loss.backward()
    grad = logp.grad
    assert grad[0, 0] == 0 and grad[1, 1] == 0
    assert grad[0, 1].item() == pytest.approx(-1.0 * 0.5 / 5, rel=1e-5)


def test_aggregations_by_hand():
    token_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.ones(2)
    # Build logp so that token loss equals −A·ratio = −ratio ... use ratio = token_loss with A = -1.
    logp = torch.log(token_loss.clamp(min=1e-6))
    expectations = {"token-mean": (1 + 2 + 3 + 4) / 4, "seq-mean": (2.0 + 4.0) / 2, "token-sum": (6.0 + 4.0) / 2}
    for name, want in expectations.items():
        settings = LossSettings(clip_low=0.2, clip_high=100.0, aggregation=name)
        loss, _ = policy_loss(logp, torch.zeros(2, 3), -adv, mask, settings, total_tokens=4, total_sequences=2)
        # With A = -1 the clipped branch max(-A r, -A clip(r)) = max(r, clip(r)) = r for r ≥ 1-ε.
        assert loss.item() == pytest.approx(want, rel=1e-5), name


def test_micro_batches_sum_to_full_batch_loss():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 4, generator=gen) * 0.1
    old = torch.randn(6, 4, generator=gen) * 0.1
    adv = torch.randn(6, generator=gen)
    mask = torch.rand(6, 4, generator=gen) > 0.2
    for agg in ("token-mean", "seq-mean", "token-sum"):
        settings = LossSettings(0.2, 0.28, agg)
        total = int(mask.sum())
        full, _ = policy_loss(logp, old, adv, mask, settings, total, 6)
        parts = sum(policy_loss(logp[s], old[s], adv[s], mask[s], settings, total, 6)[0]
                    for s in (slice(0, 2), slice(2, 5), slice(5, 6)))
        assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_kl_penalty_is_k3_estimator():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    settings = LossSettings(0.2, 0.2, "token-mean", beta=0.5)
    loss, metrics = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), settings, 2, 1,
                                ref_logprobs=ref)
    kl = [math.exp(r - l) - (r - l) - 1 for l, r in ((-1.0, -1.5), (-2.0, -1.0))]
    assert metrics["loss/kl"] == pytest.approx(sum(kl) / 2)
    assert loss.item() == pytest.approx(0.5 * sum(kl) / 2)


def test_entropy_bonus_reaches_the_gradient_and_raises_entropy():
    logits = torch.tensor([[[4.0, 0.0, -1.0]]], requires_grad=True)  # one token, peaked distribution
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (1, 1)
    logp = logp_all[..., 0]
    settings = LossSettings(0.2, 0.2, "token-mean", entropy_coef=0.1)
    loss, _ = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), settings, 1, 1,
                          entropy=entropy)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    stepped = (logits - 1.0 * logits.grad).detach()  # one gradient-descent step on the loss
    after = torch.distributions.Categorical(logits=stepped).entropy()
    assert after.item() > entropy.item()
