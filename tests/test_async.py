"""--max-staleness (rlvr.train.pipeline, docs/async.md): the decoupled loss against the paper's
formula in float64, the schedule's staleness, the concurrent mode against the deterministic one,
kill and resume, the generator's failures and the refusals."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr.algo.correction import importance_weights
from rlvr.algo.losses import LossSettings, policy_loss
from rlvr.config import ConfigError, RunFailed, TrainConfig
from rlvr.train.loop import train
from rlvr.train.pipeline import GENERATOR_FAULT_ENV
from test_kill_resume import run_with_kills

REPO = Path(__file__).resolve().parent.parent
CLIP = 0.2


def reference_decoupled(lp, prox, mu, adv, mask, cap, eps=CLIP):
    """Hilton et al. 2022 (eq. 5), as AReaL trains it, token-mean: −Σ_t w_t·min(r_t·A, clip(r_t, 1−ε,
    1+ε)·A) / Σ_t 1 over the masked tokens, with r_t = π_θ/π_prox and the behaviour weight
    w_t = min(π_prox/μ, C) held constant (Yao et al.'s truncation). Written in float64 from the
    formula, independently of rlvr.algo.losses."""
    lp, prox, mu = lp.double(), prox.double(), mu.double()
    r = torch.exp(lp - prox)
    w = torch.clamp(torch.exp(prox - mu), max=cap)
    a = adv.double()[:, None]
    surrogate = torch.minimum(r * a, torch.clamp(r, 1 - eps, 1 + eps) * a)
    return -(w * surrogate * mask).sum() / mask.sum()


def reference_naive(lp, mu, adv, mask, eps=CLIP):
    """PPO clipped against the sampler's log-probs μ, no weight."""
    r = torch.exp(lp.double() - mu.double())
    a = adv.double()[:, None]
    return -(torch.minimum(r * a, torch.clamp(r, 1 - eps, 1 + eps) * a) * mask).sum() / mask.sum()


def loss_inputs():
    """Four rows of five tokens whose ratios π_θ/π_prox lie inside and outside [1−ε, 1+ε] on both
    sides, with both signs of advantage, and behaviour ratios π_prox/μ below and above the cap."""
    gen = torch.Generator().manual_seed(0)
    prox = -torch.rand(4, 5, generator=gen) * 3 - 0.1
    log_r = torch.tensor([[0.0, 0.1, -0.1, 0.5, -0.6]] * 4)  # r = 1, 1.105, 0.905, 1.65, 0.55
    lp = (prox + log_r).requires_grad_(True)
    log_w = torch.tensor([[0.0, 0.3, -0.4, 1.2, 2.0], [0.9, -1.0, 0.2, 0.0, 1.5]] * 2)  # w up to e², cap 2
    mu = prox - log_w
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[3, 4] = False
    return lp, prox, mu, adv, mask


def test_decoupled_loss_equals_the_float64_reference_in_value_and_gradient():
    lp, prox, mu, adv, mask = loss_inputs()
    settings = LossSettings(clip_low=CLIP, clip_high=CLIP, aggregation="token-mean")
    weights, cut = importance_weights(prox, mu, mask, "token-tis", 2.0)
    ours, metrics = policy_loss(lp, prox, adv, mask, settings, int(mask.sum()), 4, is_weights=weights)
    (grad,) = torch.autograd.grad(ours, lp)
    lp64 = lp.detach().double().requires_grad_(True)
    ref = reference_decoupled(lp64, prox, mu, adv, mask, cap=2.0)
    (ref_grad,) = torch.autograd.grad(ref, lp64)
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-6
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)
    # the clip bound on some tokens (gradient 0 there), and the cap on others
    assert metrics["clip/frac_sum"] > 0 and (ref_grad[mask] == 0).any() and cut["mismatch/corrected_frac"] > 0


def test_naive_loss_clips_against_the_sampler():
    lp, prox, mu, adv, mask = loss_inputs()
    settings = LossSettings(clip_low=CLIP, clip_high=CLIP, aggregation="token-mean")
    ours, _ = policy_loss(lp, mu, adv, mask, settings, int(mask.sum()), 4)
    (grad,) = torch.autograd.grad(ours, lp)
    lp64 = lp.detach().double().requires_grad_(True)
    ref = reference_naive(lp64, mu, adv, mask)
    (ref_grad,) = torch.autograd.grad(ref, lp64)
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-6 and torch.allclose(grad.double(), ref_grad, atol=1e-6)
    decoupled = reference_decoupled(lp64, prox, mu, adv, mask, cap=2.0)
    assert abs(float(decoupled.detach()) - float(ref.detach())) > 1e-3  # the two objectives differ on these stale tokens


def run(tmp_path, name, **overrides):
    settings = dict(steps=6, k=4, prompts_per_step=2, eval_every=3, eval_problems=8, eval_samples=4,
                    passk_eval_samples=0, threads=1, quiet=True, out=str(tmp_path / name))
    cfg = TrainConfig(**{**settings, **overrides})
    train(cfg, progress=False)
    return cfg.out


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


TIMING = ("perf/", "sampling/extra_seconds")


def same_numbers(a, b):
    strip = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows(a)]
    other = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows(b)]
    wa, wb = load_file(f"{a}/final/model.safetensors"), load_file(f"{b}/final/model.safetensors")
    return strip == other and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_staleness_is_the_schedule_and_concurrent_equals_deterministic(tmp_path):
    """Step t trains on rollouts of version max(0, t−1−N): staleness 0, 1, then exactly N. The
    concurrent mode samples the same rollouts on its thread: every number and the final weights
    equal the deterministic mode's."""
    det = run(tmp_path, "det", max_staleness=2)
    steps = [r for r in rows(det) if r["step"] > 0]
    assert [r["async/staleness_max"] for r in steps] == [0, 1, 2, 2, 2, 2]
    assert [r["async/policy_version"] for r in steps] == [0, 0, 0, 1, 2, 3]
    assert steps[0]["mismatch/kl"] < 1e-9  # at staleness 0 the sampler's log-probs are the trainer's (to rounding)
    assert all(r["mismatch/kl"] > 0 for r in steps[2:])
    conc = run(tmp_path, "conc", max_staleness=2, async_mode="concurrent")
    assert same_numbers(det, conc)
    sync = rows(run(tmp_path, "sync"))
    assert not any(k.startswith("async/") for r in sync for k in r)
    assert [r["reward/mean"] for r in sync[1:2]] == [steps[0]["reward/mean"]]  # step 1 is the same rollouts


def test_naive_anchor_clips_on_the_first_update(tmp_path):
    """The decoupled loss's first update has ratio 1 (π_prox is the update's own forward); the
    naive loss's ratio is π_θ/μ, clipped wherever the stale sampler differs enough."""
    naive = [r for r in rows(run(tmp_path, "naive", max_staleness=2, stale_loss="naive", lr=3e-3)) if r["step"] > 2]
    decoupled = [r for r in rows(run(tmp_path, "dec", max_staleness=2, lr=3e-3)) if r["step"] > 2]
    assert all(r["clip/frac"] == 0 for r in decoupled)
    assert any(r["clip/frac"] > 0 for r in naive)


def test_sigkill_then_resume_is_exact_with_stale_rollouts(tmp_path):
    run_with_kills(tmp_path, ["step", "checkpoint", "step"], seed=11, extra=("--max-staleness", "2"))


def test_a_failing_generator_stops_the_run_and_a_rerun_resumes_exactly(tmp_path, monkeypatch):
    straight = run(tmp_path, "straight", max_staleness=2, async_mode="concurrent", checkpoint_every=2)
    monkeypatch.setenv(GENERATOR_FAULT_ENV, "fail:5")  # sampled at step 3, after the checkpoint of step 2
    with pytest.raises(RunFailed, match="rollout generator failed .* re-run the same command to resume"):
        run(tmp_path, "broken", max_staleness=2, async_mode="concurrent", checkpoint_every=2)
    assert (tmp_path / "broken" / "checkpoints" / "step_000002").is_dir()
    monkeypatch.delenv(GENERATOR_FAULT_ENV)
    assert same_numbers(straight, run(tmp_path, "broken", max_staleness=2, async_mode="concurrent",
                                      checkpoint_every=2))


def test_a_hanging_generator_is_a_clear_error_within_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(GENERATOR_FAULT_ENV, "hang:2")
    with pytest.raises(RunFailed, match="did not finish sampling step 2's rollouts within --generator-timeout 2 s"):
        run(tmp_path, "hang", max_staleness=1, async_mode="concurrent", generator_timeout=2.0)


def test_a_failing_generator_in_the_deterministic_mode_is_exit_1(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "rlvr", "train", "--steps", "4", "--k", "2", "--prompts-per-step",
                           "2", "--max-staleness", "1", "--eval-every", "0", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env={**_env(), GENERATOR_FAULT_ENV: "fail:3"})
    assert proc.returncode == 1 and "rollout generator failed while sampling step 3" in proc.stderr + proc.stdout


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("overrides, field, words", [
    ({"max_staleness": -1}, "max_staleness", "0 (synchronous) or more"),
    ({"stale_loss": "naive"}, "stale_loss", "--max-staleness is 0"),
    ({"async_mode": "concurrent"}, "async_mode", "--max-staleness is 0"),
    ({"max_staleness": 1, "async_mode": "eager"}, "async_mode", "deterministic or concurrent"),
    ({"max_staleness": 1, "stale_loss": "tis"}, "stale_loss", "decoupled or naive"),
    ({"max_staleness": 1, "generator_timeout": 0}, "generator_timeout", "> 0"),
])
def test_bad_async_settings_are_refused_before_any_work(overrides, field, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        TrainConfig(out=str(tmp_path / "x"), **overrides).validate()
    assert words in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "x").exists()


def test_concurrent_mode_is_refused_where_it_cannot_run(tmp_path):
    from rlvr.train.preflight import check_async_world

    with pytest.raises(ConfigError, match="--async-mode deterministic"):
        check_async_world(TrainConfig(max_staleness=1, async_mode="concurrent", nproc=2, prompts_per_step=2))
    with pytest.raises(ConfigError, match="runs colocated"):
        check_async_world(TrainConfig(max_staleness=1, async_mode="concurrent", engine="vllm"))
    check_async_world(TrainConfig(max_staleness=1, async_mode="deterministic", nproc=2, prompts_per_step=2))
    assert math.isfinite(TrainConfig(max_staleness=1).generator_timeout)


def test_episodes_carry_through_the_pipeline_in_both_modes(tmp_path):
    """Stale batches of episodes (the calculator environment): their records and the model/env
    token split reach the step as they were sampled, and the concurrent mode equals the
    deterministic one."""
    det = run(tmp_path, "det", max_staleness=1, env="calc", task="mul", max_new_tokens=8, eval_every=0)
    steps = [r for r in rows(det) if r["step"] > 0]
    assert [r["async/staleness_max"] for r in steps] == [0, 1, 1, 1, 1, 1]
    assert all("episode/turns" in r and r["tokens/model"] > 0 for r in steps)
    conc = run(tmp_path, "conc", max_staleness=1, env="calc", task="mul", max_new_tokens=8, eval_every=0,
               async_mode="concurrent")
    assert same_numbers(det, conc)


def test_the_separate_view_takes_the_trainers_log_probs_before_the_update(tmp_path):
    """--trainer-view separate (and --top-entropy-tokens, which needs it): a forward at the train
    step over the stale rollouts, before the update; the same rollouts, losses to rounding."""
    fused = [r for r in rows(run(tmp_path, "fused", max_staleness=2, eval_every=0)) if r["step"]]
    separate = [r for r in rows(run(tmp_path, "sep", max_staleness=2, eval_every=0, trainer_view="separate"))
                if r["step"]]
    assert all(r["perf/logprob_seconds"] > 0 for r in separate)
    assert [r["reward/mean"] for r in separate[:3]] == [r["reward/mean"] for r in fused[:3]]  # sampled before any difference
    for a, b in zip(fused[:3], separate[:3]):
        assert a["mismatch/kl"] == pytest.approx(b["mismatch/kl"], rel=1e-3, abs=1e-7)
        assert a["entropy/mean"] == pytest.approx(b["entropy/mean"], rel=1e-4)
    top = [r for r in rows(run(tmp_path, "top", max_staleness=2, eval_every=0, top_entropy_tokens=0.5)) if r["step"]]
    assert [r["async/staleness_max"] for r in top] == [0, 1, 2, 2, 2, 2]
    assert all(0 < r["tokens/trained_frac"] < 1 for r in top)
