"""The objectives of issue 26, each against an independent float64 reference written from its
paper's formula: value and gradient within 1e-6 relative, on ragged masks, ratios inside and
outside the clip range, and all-equal groups. Plus the exact zeros of all-equal groups, and the
configuration's refusals."""
import math

import pytest
import torch

from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.losses import KL_ESTIMATORS, LossSettings, policy_loss
from rlvr.cli import main

REL = 1e-6


def batch(seed: int = 0, rows: int = 5, width: int = 6):
    """Log-probs whose ratios to the old ones span [0.45, 1.8] (inside and outside 1 ± 0.2), a
    ragged mask (lengths 1..width, one row of full width), and advantages of both signs with an
    all-equal (zero-advantage) row."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=gen, dtype=torch.float64) * 3
    log_ratio = torch.empty(rows, width, dtype=torch.float64).uniform_(math.log(0.45), math.log(1.8), generator=gen)
    logp = (old + log_ratio).clone().requires_grad_()
    lengths = [width, 1, 3, width - 1, 2][:rows]
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
    adv = torch.tensor([1.3, -0.7, 0.0, -2.1, 0.4][:rows], dtype=torch.float64)
    return logp, old, adv, mask


def rlvr_loss(settings: LossSettings, logp, old, adv, mask, **extra):
    tokens, rows = int(mask.sum()), mask.shape[0]
    loss, metrics = policy_loss(logp, old, adv, mask, settings, tokens, rows, **extra)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad, metrics


def reference_grad(function, logp):
    """The gradient of a float64 reference loss written as Python arithmetic over tensor scalars."""
    x = logp.detach().clone().requires_grad_()
    value = function(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.item(), grad


def assert_close(got_value, got_grad, want_value, want_grad):
    assert got_value == pytest.approx(want_value, rel=REL, abs=1e-12)
    assert torch.allclose(got_grad, want_grad, rtol=REL, atol=1e-12), (got_grad, want_grad)


def clip(x, low, high):
    return min(max(x, low), high)


# ---------------------------------------------------------------- defects: all-equal groups are exactly 0

@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "grpo_batch_std", "reinforce_pp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", [0.9, 0.3, 1 / 3, -2.5, 1e6, 0.0, 1.0])
def test_an_all_equal_group_gets_exactly_zero(name, dtype, value):
    """K = 8 rewards of 0.9 in float32 gave |A| ≈ 0.056 before: the mean is one rounding step off
    and the std ~1e-8. Here every estimator returns exact zeros for such a group, beside a group
    with signal (so the batch-level ones have a non-zero batch std)."""
    rewards = torch.tensor([[value] * 8, [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    adv = ADVANTAGES.get(name)(rewards)
    assert adv.dtype == dtype
    assert torch.equal(adv[0], torch.zeros(8, dtype=dtype)), adv[0]
    assert adv[1].abs().sum() > 0


def test_before_the_fix_fractional_equal_groups_were_not_zero():
    """The reference the defect was found with: the plain formula leaves a visible advantage."""
    rewards = torch.full((1, 8), 0.9)
    plain = (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-6)
    assert plain.abs().max() > 0.01
    assert torch.equal(ADVANTAGES.get("grpo")(rewards), torch.zeros(1, 8))


# ---------------------------------------------------------------- batch-level advantages

def test_grpo_batch_std_and_reinforce_pp_match_float64_loops():
    gen = torch.Generator().manual_seed(4)
    rewards = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    rewards[2] = 0.25  # an all-equal group
    flat = [r for group in rewards.tolist() for r in group]
    n = len(flat)
    mean_all = sum(flat) / n
    std_all = math.sqrt(sum((r - mean_all) ** 2 for r in flat) / (n - 1))
    centred = [[r - sum(group) / len(group) for r in group] for group in rewards.tolist()]
    flat_c = [c for group in centred for c in group]
    mean_c = sum(flat_c) / n
    std_c = math.sqrt(sum((c - mean_c) ** 2 for c in flat_c) / (n - 1))
    want_batch_std = [[c / (std_all + 1e-6) for c in group] for group in centred]
    want_pp = [[(c - mean_c) / (std_c + 1e-6) for c in group] for group in centred]
    for want in (want_batch_std, want_pp):
        want[2] = [0.0] * 6
    assert torch.allclose(ADVANTAGES.get("grpo_batch_std")(rewards), torch.tensor(want_batch_std, dtype=torch.float64),
                          rtol=REL, atol=1e-12)
    assert torch.allclose(ADVANTAGES.get("reinforce_pp")(rewards), torch.tensor(want_pp, dtype=torch.float64),
                          rtol=REL, atol=1e-12)


# ---------------------------------------------------------------- GSPO

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gspo_sequence_ratio_matches_the_paper(seed):
    """Zheng et al. 2025, eq. 5-7: s_i = exp(mean_t log π/π_old) over the completion's tokens,
    J = mean_i min(s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i); with --loss-agg seq-mean rlvr's
    loss is −J, value and gradient."""
    logp, old, adv, mask = batch(seed)
    lo, hi = 0.2, 0.25
    settings = LossSettings(lo, hi, "seq-mean", ratio_level="sequence")
    value, grad, _ = rlvr_loss(settings, logp, old, adv, mask)

    def reference(x):
        total = 0.0
        for i in range(x.shape[0]):
            tokens = [t for t in range(x.shape[1]) if mask[i, t]]
            s = torch.exp(sum(x[i, t] - old[i, t] for t in tokens) / len(tokens))
            clipped = torch.clamp(s, 1 - lo, 1 + hi)
            total = total + torch.minimum(s * adv[i], clipped * adv[i])
        return -total / x.shape[0]

    assert_close(value, grad, *reference_grad(reference, logp))


def test_gspo_clips_whole_sequences():
    """One sequence's geometric-mean ratio outside the range gets no gradient at all, though
    some of its token ratios lie inside it."""
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.0, 1.5, 1.6]], dtype=torch.float64)).requires_grad_()  # s = 1.34
    settings = LossSettings(0.2, 0.2, "seq-mean", ratio_level="sequence")
    _, grad, metrics = rlvr_loss(settings, logp, old, torch.tensor([1.0], dtype=torch.float64),
                                 torch.ones(1, 3, dtype=torch.bool))
    assert torch.equal(grad, torch.zeros_like(grad)) and metrics["clip/frac_sum"] == 3


# ---------------------------------------------------------------- CISPO

@pytest.mark.parametrize("seed", [0, 1])
def test_cispo_matches_minimax_m1(seed):
    """MiniMax-M1 (2025), eq. 4: J = 1/Σ|o_i| Σ_i Σ_t sg(r̂_i,t) A_i log π_i,t with r̂ = clip(r,
    1−ε_low, 1+ε_high): every token keeps a gradient, its weight bounded."""
    logp, old, adv, mask = batch(seed)
    lo, hi = 0.5, 0.3
    settings = LossSettings(lo, hi, "token-mean", objective="cispo")
    value, grad, metrics = rlvr_loss(settings, logp, old, adv, mask)

    def reference(x):
        total, tokens = 0.0, 0
        for i in range(x.shape[0]):
            for t in range(x.shape[1]):
                if mask[i, t]:
                    weight = clip(math.exp(float(x[i, t].detach() - old[i, t])), 1 - lo, 1 + hi)  # a number: no gradient
                    total = total + weight * adv[i] * x[i, t]
                    tokens += 1
        return -total / tokens

    assert_close(value, grad, *reference_grad(reference, logp))
    ratio = torch.exp(logp.detach() - old)
    assert metrics["clip/frac_sum"] == int((((ratio < 1 - lo) | (ratio > 1 + hi)) & mask).sum())
    nonzero_adv = adv[:, None].expand_as(mask) != 0
    assert bool((grad[mask & nonzero_adv] != 0).all())  # no token's gradient is cut


# ---------------------------------------------------------------- dual-clip

@pytest.mark.parametrize("seed", [0, 1])
def test_dual_clip_matches_ye_et_al(seed):
    """Ye et al. 2020, eq. 6: for A < 0, max(min(r A, clip(r) A), c A); for A ≥ 0 plain PPO-clip
    (as losses: the negatives). c = 1.5 so that ratios up to 1.8 hit it."""
    logp, old, adv, mask = batch(seed)
    lo, hi, c = 0.2, 0.2, 1.5
    settings = LossSettings(lo, hi, "token-mean", dual_clip=c)
    value, grad, metrics = rlvr_loss(settings, logp, old, adv, mask)

    def reference(x):
        total, tokens = 0.0, 0
        for i in range(x.shape[0]):
            for t in range(x.shape[1]):
                if mask[i, t]:
                    r = torch.exp(x[i, t] - old[i, t])
                    ppo = torch.minimum(r * adv[i], torch.clamp(r, 1 - lo, 1 + hi) * adv[i])
                    objective = torch.maximum(ppo, c * adv[i]) if adv[i] < 0 else ppo
                    total = total - objective
                    tokens += 1
        return total / tokens

    assert_close(value, grad, *reference_grad(reference, logp))
    ratio = torch.exp(logp.detach() - old)
    capped = (adv[:, None] < 0) & (ratio > c) & mask
    assert bool(capped.any()) and bool((grad[capped] == 0).all())


# ---------------------------------------------------------------- KL estimators

def test_kl_estimators_match_schulmans_formulas_and_their_gradients():
    """k1 = −log ρ, k2 = ½ log² ρ, k3 = ρ − log ρ − 1 with ρ = π_ref/π; k3+ has k3's value and
    k2's gradient."""
    gen = torch.Generator().manual_seed(9)
    log_rho = (torch.rand(4, 5, generator=gen, dtype=torch.float64) - 0.5) * 2
    formulas = {"k1": lambda v: -v, "k2": lambda v: 0.5 * v * v, "k3": lambda v: math.exp(v) - v - 1}
    for name, formula in formulas.items():
        want = torch.tensor([[formula(v) for v in row] for row in log_rho.tolist()], dtype=torch.float64)
        assert torch.allclose(KL_ESTIMATORS.get(name)(log_rho), want, rtol=REL)
    x = log_rho.clone().requires_grad_()
    plus = KL_ESTIMATORS.get("k3+")(x)
    assert torch.allclose(plus, KL_ESTIMATORS.get("k3")(log_rho), rtol=REL)
    (grad_plus,) = torch.autograd.grad(plus.sum(), x)
    assert torch.allclose(grad_plus, log_rho, rtol=REL)  # d/dv ½ v² = v


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "k3+"])
def test_the_kl_penalty_uses_the_chosen_estimator(estimator):
    """policy_loss with beta: the KL term of the loss and its gradient, from the formulas."""
    logp, old, adv, mask = batch(3)
    ref = old + 0.3
    beta = 0.5
    settings = LossSettings(0.2, 0.2, "token-mean", beta=beta, kl_estimator=estimator)
    no_kl = LossSettings(0.2, 0.2, "token-mean")
    value, grad, metrics = rlvr_loss(settings, logp, old, adv, mask, ref_logprobs=ref)
    value0, grad0, _ = rlvr_loss(no_kl, logp, old, adv, mask)
    tokens = int(mask.sum())

    def reference(x):
        total = 0.0
        for i, t in mask.nonzero().tolist():
            v = ref[i, t] - x[i, t]
            if estimator == "k1":
                total = total - v
            elif estimator == "k2":
                total = total + 0.5 * v * v
            elif estimator == "k3":
                total = total + torch.exp(v) - v - 1
            else:  # value of k3, gradient of k2
                total = total + (torch.exp(v) - v - 1).detach() + 0.5 * v * v - (0.5 * v * v).detach()
        return beta * total / tokens

    kl_value, kl_grad = reference_grad(reference, logp)
    assert_close(value - value0, grad - grad0, kl_value, kl_grad)


# ---------------------------------------------------------------- W-REINFORCE, KL-Cov

def test_positive_weight_scales_the_positive_samples_term():
    """Zhu et al. 2025: L = λ·L_PSR + L_NSR; positive-advantage rows weigh λ, the rest 1."""
    logp, old, adv, mask = batch(5)
    lam = 0.1
    value, grad, _ = rlvr_loss(LossSettings(0.2, 0.2, "token-mean", positive_weight=lam), logp, old, adv, mask)
    scaled = torch.where(adv > 0, lam * adv, adv)
    want_value, want_grad, _ = rlvr_loss(LossSettings(0.2, 0.2, "token-mean"), logp, old, scaled, mask)
    assert_close(value, grad, want_value, want_grad)
    base_value, base_grad, _ = rlvr_loss(LossSettings(0.2, 0.2, "token-mean"), logp, old, adv, mask)
    assert not torch.allclose(grad, base_grad)


def test_kl_cov_follows_the_paper():
    """Cui et al. 2025, eq. 12: every token takes the unclipped −A·r, and the top-k tokens by
    covariance add coef·|log π − log π_old|; ratios outside the clip range keep their gradient."""
    logp, old, adv, mask = batch(6)
    ratio_share, coef = 0.2, 2.0
    settings = LossSettings(0.2, 0.2, "token-mean", kl_cov_ratio=ratio_share, kl_cov_coef=coef)
    value, grad, metrics = rlvr_loss(settings, logp, old, adv, mask)
    lp = logp.detach()
    cells = mask.nonzero().tolist()
    mean_lp = sum(float(lp[i, t]) for i, t in cells) / len(cells)
    mean_adv = sum(float(adv[i]) for i, _ in cells) / len(cells)
    cov = {(i, t): (float(adv[i]) - mean_adv) * (float(lp[i, t]) - mean_lp) for i, t in cells}
    count = max(1, int(ratio_share * len(cells)))
    chosen = set(sorted(cov, key=cov.get, reverse=True)[:count])

    def reference(x):
        total = 0.0
        for i, t in cells:
            total = total - adv[i] * torch.exp(x[i, t] - old[i, t])
            if (i, t) in chosen:
                total = total + coef * torch.abs(x[i, t] - old[i, t])
        return total / len(cells)

    assert_close(value, grad, *reference_grad(reference, logp))
    assert metrics["clip/kl_cov_tokens"] == count and metrics["clip/frac_sum"] == 0


def test_on_policy_every_objective_has_ppos_gradient():
    """At ratio 1 (the first update of a step) GSPO, CISPO, dual-clip and W-REINFORCE at λ = 1 are
    PPO-clip (docs/training.md's table): the same gradient."""
    logp, _, adv, mask = batch(7)
    old = logp.detach().clone()
    _, want, _ = rlvr_loss(LossSettings(0.2, 0.28, "seq-mean"), logp, old, adv, mask)
    for extra in ({"ratio_level": "sequence"}, {"objective": "cispo"}, {"dual_clip": 3.0}):
        _, got, _ = rlvr_loss(LossSettings(0.2, 0.28, "seq-mean", **extra), logp, old, adv, mask)
        assert torch.allclose(got, want, rtol=REL, atol=1e-12), extra


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("args, flag, fix", [
    (["--dual-clip", "0.5"], "--dual-clip", "above 1"),
    (["--dual-clip", "3", "--policy-loss", "cispo"], "--dual-clip", "drop one"),
    (["--kl-estimator", "k2"], "--kl-estimator", "--beta"),
    (["--kl-estimator", "k4", "--beta", "0.1"], "--kl-estimator", "k3+"),
    (["--policy-loss", "gspo"], "--policy-loss", "cispo, ppo"),
    (["--ratio-level", "group"], "--ratio-level", "token or sequence"),
    (["--kl-cov", "--updates-per-step", "2", "--policy-loss", "cispo"], "--kl-cov", "drop one"),
    (["--kl-cov", "--clip-cov", "--updates-per-step", "2"], "--kl-cov", "choose one"),
    (["--advantage", "reinforce_pp", "--adaptive-k"], "--advantage", "--adaptive-k"),
    (["--advantage", "grpo_batch_std", "--nproc", "2"], "--advantage", "--nproc 1"),
    (["--positive-weight", "-1"], "--positive-weight", "≥ 0"),
    (["--reward", "task:0.8,nomodule:fn"], "--reward", "cannot import module 'nomodule'"),
    (["--reward", "task:0,format:0"], "--reward", "every weight"),
    (["--reward", "task:1,task:2"], "--reward", "named twice"),
    (["--reward", "task:0.5,format:0.5", "--reward-shaping", "passk"], "--reward", "0/1 rewards"),
    (["--reward", "task:1,format:0.5", "--adaptive-k"], "--reward", "add up to 1"),
])
def test_bad_objective_settings_exit_2_with_the_fix(tmp_path, capsys, args, flag, fix):
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert flag in err and fix in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- --mask-truncated

def test_mask_truncated_drops_the_rows_cut_at_the_limit():
    from types import SimpleNamespace

    from rlvr.config import TrainConfig
    from rlvr.train.step import loss_token_mask

    stop = 9
    completion_ids = torch.tensor([[4, 5, stop, 0], [4, 5, 6, 7], [stop, 0, 0, 0]])  # row 1 never stopped
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    batch = SimpleNamespace(completion_ids=completion_ids, completion_mask=completion_mask,
                            entropy=torch.ones(3, 4))
    kept = loss_token_mask(batch, TrainConfig(mask_truncated=True), (stop,))
    assert kept.tolist() == [[True, True, True, False], [False] * 4, [True, False, False, False]]
    assert torch.equal(loss_token_mask(batch, TrainConfig(), (stop,)), completion_mask)


# ---------------------------------------------------------------- 30-step runs with each new option

RUN = ["--steps", "30", "--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--threads", "1",
       "--reward-workers", "0", "--quiet"]


@pytest.mark.parametrize("name, extra", [
    ("gspo", ["--ratio-level", "sequence", "--loss-agg", "seq-mean", "--updates-per-step", "2"]),
    ("cispo", ["--policy-loss", "cispo", "--updates-per-step", "2"]),
    ("dual-clip", ["--dual-clip", "3", "--updates-per-step", "2"]),
    ("kl-cov", ["--kl-cov", "--updates-per-step", "2"]),
    ("batch-std", ["--advantage", "grpo_batch_std"]),
    ("reinforce-pp", ["--advantage", "reinforce_pp"]),
    ("k3+", ["--beta", "0.05", "--kl-estimator", "k3+"]),
    ("k2", ["--beta", "0.05", "--kl-estimator", "k2"]),
    ("mask-truncated", ["--mask-truncated"]),
    ("w-reinforce", ["--positive-weight", "0.1"]),
    ("weighted", ["--reward", "task:0.8,format:0.2"]),
])
def test_a_30_step_run_with_each_option_trains_with_finite_metrics(tmp_path, name, extra):
    import json

    out = tmp_path / name
    assert main(["train", *RUN, *extra, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        assert row["optim/skipped"] == 0
    if name == "mask-truncated":
        cut = [r for r in rows if 0 < r["completion/truncated_frac"] < 1]
        assert cut and all(r["tokens/trained_frac"] < 1 for r in cut)
    if name == "weighted":
        for row in rows:
            assert row["reward/mean"] == pytest.approx(0.8 * row["reward/task/mean"] + 0.2 * row["reward/format/mean"],
                                                       abs=1e-6)
            assert row["reward/task/errors"] == row["reward/format/errors"] == 0
    if name in ("gspo", "cispo", "dual-clip", "kl-cov"):
        assert any(r["clip/frac"] > 0 for r in rows) or name == "kl-cov"
