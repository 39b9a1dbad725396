"""The training forward (rlvr.rollout.Scorer): each group's prompt run once, against the
per-row reference forward (`completion_logprobs`), for values AND gradients, on the built-in
model and on tiny random Qwen2 / Llama models; and the micro-batch planner."""
import importlib.util

import pytest
import torch

from conftest import make_policy
from rlvr.rollout import Scorer, completion_logprobs, micro_batches, sample_groups
from rlvr.tasks import get_task

HAS_HF = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("peft") is not None


def grads_of(policy, loss_fn) -> dict[str, torch.Tensor]:
    policy.module.zero_grad(set_to_none=True)
    loss_fn().backward()
    grads = {n: p.grad.clone() for n, p in policy.module.named_parameters() if p.grad is not None}
    policy.module.zero_grad(set_to_none=True)
    return grads


def check_scorer_matches_reference(policy, items, k, temperature=0.8):
    torch.manual_seed(0)
    batch = sample_groups(policy, items, k, max_new_tokens=7, temperature=1.0,
                          generator=[torch.Generator().manual_seed(i) for i in range(len(items))])
    weights = torch.randn(batch.completion_ids.shape) * batch.completion_mask  # a loss touching every token

    def reference():
        logp, ent = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                        batch.completion_mask, temperature, with_entropy=True)
        return logp, ent

    scorer = Scorer(policy, temperature, share_prompt=True)
    chunks = [torch.arange(0, 3), torch.arange(3, batch.num_rows)]  # a micro-batch boundary inside a group

    def shared():
        parts = [scorer(batch, c, with_entropy=True) for c in chunks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    (ref_logp, ref_ent), (logp, ent) = reference(), shared()
    m = batch.completion_mask
    assert torch.allclose(logp[m], ref_logp[m], atol=2e-5, rtol=1e-5)
    assert torch.allclose(ent[m], ref_ent[m], atol=2e-5, rtol=1e-5)
    assert (logp[~m] == 0).all()
    ref_grads = grads_of(policy, lambda: ((lambda lp, e: (lp * weights).sum() + (e * weights).sum())(*reference())))
    grads = grads_of(policy, lambda: ((lambda lp, e: (lp * weights).sum() + (e * weights).sum())(*shared())))
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp(min=1e-6)
        assert (grads[name] - ref_grads[name]).abs().max() / scale < 1e-4, name


def test_shared_prompt_forward_equals_per_row_forward_builtin():
    policy = make_policy(seed=2)
    items = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]
    check_scorer_matches_reference(policy, items, [2, 4, 3])


@pytest.mark.skipif(not HAS_HF, reason="transformers and peft are not installed")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_shared_prompt_forward_equals_per_row_forward_hf(tmp_path, arch):
    from hf_models import make_hf_model_dir
    from rlvr.backends import load_policy

    policy = load_policy(str(make_hf_model_dir(tmp_path / arch, arch)))
    items = [get_task("arith").item("train", i) for i in (0, 1, 5)]  # prompts of different token lengths
    check_scorer_matches_reference(policy, items, [2, 4, 3])


def test_micro_batches_keep_groups_whole_within_the_token_budget():
    policy = make_policy(seed=1)
    items = [{"id": str(i), "prompt": f"{i}+{i}="} for i in range(5)]
    batch = sample_groups(policy, items, 4, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    prompt_len = int(batch.prompt_mask.sum(1).max())
    completion_len = int(batch.completion_mask.sum(1).max())
    group_cost = prompt_len + 4 * completion_len
    chunks = micro_batches(batch, None, token_budget=2 * group_cost)
    assert [len(c) for c in chunks] == [8, 8, 4]  # two whole groups each
    assert torch.cat(chunks).tolist() == list(range(20))
    split = micro_batches(batch, None, token_budget=prompt_len + 2 * completion_len)  # half a group fits
    assert [len(c) for c in split] == [2] * 10
    assert [len(c) for c in micro_batches(batch, 6, token_budget=1)] == [6, 6, 6, 2]
    assert [len(c) for c in micro_batches(batch, 0, token_budget=1)] == [20]
    assert len(micro_batches(batch, None, token_budget=10**6)) == 1


@pytest.mark.parametrize("value", ["auto", "0", "5", 5])
def test_micro_batch_size_accepts_auto_or_rows(value):
    from rlvr.config import TrainConfig

    TrainConfig(micro_batch_size=value).validate()


@pytest.mark.parametrize("value", ["x", "-1", "2.5", ""])
def test_micro_batch_size_refuses_anything_else_naming_the_option(value):
    from rlvr.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="--micro-batch-size: must be auto or a number of rows"):
        TrainConfig(micro_batch_size=value).validate()
