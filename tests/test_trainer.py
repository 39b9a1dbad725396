"""Trainer behaviour on a tiny random model: resumption, evaluation isolation, config refusal."""
import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr.config import ConfigError, TrainConfig
from rlvr.train import train

TIMING = ("perf/", "sampling/extra_seconds")


def config(model_dir, out, **overrides) -> TrainConfig:
    base = dict(model=model_dir, out=str(out), k=4, prompts_per_step=3, max_new_tokens=6, steps=4, lr=3e-3,
                checkpoint_every=2, quiet=True, task="add2", reward="shaped_rewards:digit_share")
    base.update(overrides)
    return TrainConfig(**base)


def rows_without_timing(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


STRATEGIES = {
    "plain": {},
    # has_digit is rare for a random model: most groups lack signal, so the filter moves the
    # prompt stream by more than B a step and adaptive K's estimator has levels to tell apart
    "filter+adaptive": dict(group_filter=True, adaptive_k=True, task="arith", reward="shaped_rewards:has_digit"),
    "downsample+overlong": dict(downsample=2, overlong_buffer=3),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_interrupted_run_resumes_exactly(model_dir, tmp_path, strategy):
    straight = tmp_path / "straight"
    train(config(model_dir, straight, **STRATEGIES[strategy]), progress=False)
    resumed = tmp_path / "resumed"
    train(config(model_dir, resumed, steps=2, **STRATEGIES[strategy]), progress=False)  # stops after the step-2 checkpoint
    summary = train(config(model_dir, resumed, **STRATEGIES[strategy]), progress=False)  # same command, more steps: resumes
    assert summary["steps"] == 4
    assert rows_without_timing(straight) == rows_without_timing(resumed)
    if strategy == "filter+adaptive":
        rows = rows_without_timing(straight)
        assert any(r["sampling/prompts"] > 3 for r in rows[:2])  # the resumed steps start mid-stream
        # sampling/expected_signal_groups is computed from the success estimator's state, so
        # the equal rows above also show that state survived the checkpoint
        assert len({r["sampling/expected_signal_groups"] for r in rows}) == 4
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(line)["event"] for line in (resumed / "events.jsonl").read_text().splitlines()]
    assert "resume" in events


def test_rerun_of_a_finished_run_does_no_work(model_dir, tmp_path):
    out = tmp_path / "run"
    train(config(model_dir, out, steps=2), progress=False)
    before = (out / "metrics.jsonl").read_text()
    summary = train(config(model_dir, out, steps=2), progress=False)
    assert summary["line"].startswith("already complete")
    assert (out / "metrics.jsonl").read_text() == before


def test_different_config_on_used_out_is_refused_unless_forced(model_dir, tmp_path):
    out = tmp_path / "run"
    train(config(model_dir, out, steps=1), progress=False)
    with pytest.raises(ConfigError, match=r"--out: .*k: 4 -> 2"):
        train(config(model_dir, out, steps=1, k=2), progress=False)
    train(config(model_dir, out, steps=1, k=2, force=True), progress=False)
    assert json.loads((out / "config.json").read_text())["config"]["k"] == 2


def test_evaluation_does_not_change_training(model_dir, tmp_path):
    plain, evaluated = tmp_path / "plain", tmp_path / "eval"
    train(config(model_dir, plain), progress=False)
    train(config(model_dir, evaluated, eval_every=2, eval_problems=5, eval_samples=4), progress=False)
    with_eval = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in rows_without_timing(evaluated)]
    assert [r for r in with_eval if r["step"] > 0] == rows_without_timing(plain)
    steps_with_eval = [r["step"] for r in rows_without_timing(evaluated) if "eval/hm@4" in r]
    assert steps_with_eval == [0, 2, 4]


def test_micro_batching_does_not_change_the_update(model_dir, tmp_path):
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    train(config(model_dir, whole, steps=2), progress=False)
    train(config(model_dir, chunked, steps=2, micro_batch_size=5), progress=False)
    a, b = weights(whole), weights(chunked)
    start = load_file(model_dir + "/model.safetensors")
    assert any(not torch.allclose(a[k], start[k]) for k in a)  # the steps did learn something
    # Equal up to float summation order: the same gradient (its norm and the loss agree to ~1e-7)...
    for x, y in zip(rows_without_timing(whole), rows_without_timing(chunked)):
        assert y["grad/norm"] == pytest.approx(x["grad/norm"], rel=1e-5)
        assert y["entropy/mean"] == pytest.approx(x["entropy/mean"], rel=1e-5) and y["reward/mean"] == x["reward/mean"]
    # ... and the same weights, which AdamW makes ~1e-6 apart (the updates are ~3e-3) except where
    # an entry's gradient was itself rounding noise at some step (a hidden unit no token of the
    # batch activated, an attention key bias): AdamW divides a gradient by its own magnitude, so
    # such an entry moves by a rounding-dependent fraction of lr. A handful of entries at most;
    # a real difference in the update (a lost micro-batch, a wrong normaliser) moves nearly all.
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert int((diffs > 2e-5).sum()) <= 1e-4 * diffs.numel(), int((diffs > 2e-5).sum())


def test_updates_per_step_reuses_the_batch_with_clipping(model_dir, tmp_path):
    out = tmp_path / "run"
    train(config(model_dir, out, steps=2, updates_per_step=3, lr=3e-2, task="add2"), progress=False)
    rows = rows_without_timing(out)
    assert all(0.0 <= r["clip/frac"] <= 1.0 for r in rows)
    assert any(r["clip/frac"] > 0 for r in rows)  # reused rollouts drift off-policy and get clipped


def test_group_filter_without_any_signal_makes_no_update(model_dir, tmp_path):
    out = tmp_path / "run"
    train(config(model_dir, out, steps=2, group_filter=True, max_extra_rollouts=8, reward="shaped_rewards:always_zero"),
          progress=False)
    rows = rows_without_timing(out)
    assert [r["sampling/generated"] for r in rows] == [12 + 8, 12 + 8]  # B·K, then 2 prompts of K=4
    assert all(r["sampling/trained"] == 0 and r["sampling/groups_missing"] == 3 for r in rows)
    start = load_file(model_dir + "/model.safetensors")
    assert all(torch.equal(weights(out)[k], start[k]) for k in start)


def test_adaptive_k_starts_as_plain_k(model_dir, tmp_path):
    """Before any evidence every level's estimate is 1/2, so step 1 gives every prompt K."""
    plain, adaptive = tmp_path / "plain", tmp_path / "adaptive"
    train(config(model_dir, plain, steps=1, task="arith"), progress=False)
    train(config(model_dir, adaptive, steps=1, task="arith", adaptive_k=True), progress=False)
    a, b = rows_without_timing(plain)[0], rows_without_timing(adaptive)[0]
    assert b.pop("sampling/expected_signal_groups") == pytest.approx(3 * (1 - 2 * 0.5**4))
    assert a == b
