"""The training forward (rlvr.rollout.forward.Scorer): packed rows (each group's prompt once, no padding)
against the per-row reference forward (`completion_logprobs`), for values AND gradients, on the
built-in model and on tiny random Qwen2 / Llama models (sdpa and eager attention); the packing
itself; and the micro-batch planner."""
import importlib.util

import pytest
import torch

from conftest import make_policy
from rlvr.rollout.forward import Scorer, completion_logprobs, micro_batches
from rlvr.rollout.sample import sample_groups
from rlvr.tasks import get_task

HAS_HF = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("peft") is not None


def grads_of(policy, loss_fn) -> dict[str, torch.Tensor]:
    policy.module.zero_grad(set_to_none=True)
    loss_fn().backward()
    grads = {n: p.grad.clone() for n, p in policy.module.named_parameters() if p.grad is not None}
    policy.module.zero_grad(set_to_none=True)
    return grads


def check_scorer_matches_reference(policy, items, k, temperature=0.8, row_tokens=None):
    torch.manual_seed(0)
    batch = sample_groups(policy, items, k, max_new_tokens=7, temperature=1.0,
                          generator=[torch.Generator().manual_seed(i) for i in range(len(items))])
    weights = torch.randn(batch.completion_ids.shape) * batch.completion_mask  # a loss touching every token

    def reference():
        logp, ent = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                        batch.completion_mask, temperature, with_entropy=True)
        return logp, ent

    scorer = Scorer(policy, temperature)
    assert scorer.pack
    chunks = [torch.arange(0, 3), torch.arange(3, batch.num_rows)]  # a micro-batch boundary inside a group
    if row_tokens is not None:  # small packed rows: groups spill over and repeat their prompt
        policy.packed_row_tokens = row_tokens

    def shared():
        parts = [scorer(batch, c, with_entropy=True) for c in chunks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    (ref_logp, ref_ent), (logp, ent) = reference(), shared()
    ref_grads = grads_of(policy, lambda: ((lambda lp, e: (lp * weights).sum() + (e * weights).sum())(*reference())))
    grads = grads_of(policy, lambda: ((lambda lp, e: (lp * weights).sum() + (e * weights).sum())(*shared())))
    m = batch.completion_mask
    assert torch.allclose(logp[m], ref_logp[m], atol=2e-5, rtol=1e-5)
    assert torch.allclose(ent[m], ref_ent[m], atol=2e-5, rtol=1e-5)
    assert (logp[~m] == 0).all() and (ent[~m] == 0).all()
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp(min=1e-6)
        assert (grads[name] - ref_grads[name]).abs().max() / scale < 1e-4, name


@pytest.mark.parametrize("row_tokens", [1000, 12], ids=["one-row", "spilling"])
def test_packed_forward_equals_per_row_forward_builtin(row_tokens):
    policy = make_policy(seed=2)
    items = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]
    check_scorer_matches_reference(policy, items, [2, 4, 3], row_tokens=row_tokens)


@pytest.mark.skipif(not HAS_HF, reason="transformers and peft are not installed")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_per_row_forward_hf(tmp_path, arch, attention):
    from hf_models import make_hf_model_dir
    from rlvr.backends import load_policy

    policy = load_policy(str(make_hf_model_dir(tmp_path / arch, arch)))
    policy.model.config._attn_implementation = attention
    items = [get_task("arith").item("train", i) for i in (0, 1, 5)]  # prompts of different token lengths
    check_scorer_matches_reference(policy, items, [2, 4, 3], row_tokens=70)


def test_pack_lays_out_prompts_once_and_completions_apart():
    from rlvr.rollout.forward import pack

    prompt_ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9]])
    prompt_mask = torch.tensor([[False, True, True], [False, True, True], [True, True, True]])
    completion_ids = torch.tensor([[1, 2, 0], [3, 0, 0], [4, 4, 4]])
    completion_mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    packed = pack(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.tensor([0, 0, 1]), row_tokens=100)
    assert packed.ids.tolist() == [[5, 6, 1, 2, 3, 7, 8, 9, 4, 4, 4]]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3, 4, 5]]
    attend = packed.attend[0]
    assert attend[3].tolist() == [True, True, True, True] + [False] * 7  # 2nd token of completion 0
    assert attend[4].tolist() == [True, True, False, False, True] + [False] * 6  # completion 1: its prompt, itself
    assert attend[8].tolist() == [False] * 5 + [True] * 4 + [False] * 2  # group 1 sees nothing of group 0
    # the logit predicting each completion token: the prompt's last column, then the previous token
    assert packed.column[0, :2].tolist() == [1, 2] and packed.column[1, 0] == 1 and packed.column[2].tolist() == [7, 8, 9]
    spilled = pack(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.tensor([0, 0, 1]), row_tokens=4)
    assert spilled.ids.tolist() == [[5, 6, 1, 2, 0, 0], [5, 6, 3, 0, 0, 0], [7, 8, 9, 4, 4, 4]]
    assert spilled.row.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]


def test_packed_rows_stay_short_where_attention_would_dominate():
    from rlvr.backends import packed_row_tokens

    assert packed_row_tokens(576, 3_540_096) == 768  # SmolLM2-135M's decoder layer
    assert packed_row_tokens(128, 164_480) == 160  # a random Qwen2 of hidden 128 (tests/hf_models.py)
    assert packed_row_tokens(128, 10_000) == 64  # never below a short sequence
    from rlvr.backends import load_policy

    assert load_policy("tiny").packed_row_tokens == (12 * 128 * 128 + 9 * 128 + 4 * 128) // (8 * 128)  # the shipped model


def test_micro_batches_keep_groups_whole_within_the_token_budget():
    policy = make_policy(seed=1)
    items = [{"id": str(i), "prompt": f"{i}+{i}="} for i in range(5)]
    batch = sample_groups(policy, items, 4, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    prompt_len = int(batch.prompt_mask.sum(1).max())
    completion_len = int(batch.completion_mask.sum(1).max())
    group_cost = prompt_len + 4 * completion_len
    padded = micro_batches(batch, None, token_budget=2 * 4 * (prompt_len + completion_len), packed=False)
    assert [len(c) for c in padded] == [8, 8, 4]  # per-row cost, padded: two groups each
    split = micro_batches(batch, None, token_budget=2 * (prompt_len + completion_len), packed=False)
    assert [len(c) for c in split] == [2] * 10
    real = micro_batches(batch, None, token_budget=2 * group_cost)  # packed: real tokens, a prompt once
    assert all(len(c) >= 8 for c in real[:-1]) and torch.cat(real).tolist() == list(range(20))
    lengths = batch.completion_mask.sum(1).clamp(min=1)
    for chunk in real:
        groups = batch.group_ids[chunk]
        cost = int(lengths[chunk].sum()) + int(batch.prompt_mask[chunk].sum(1)[
            torch.cat([torch.tensor([True]), groups[1:] != groups[:-1]])].sum())
        assert cost <= 2 * group_cost
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


def test_data_parallel_step_with_a_non_finite_loss_runs_every_backward_and_skips():
    """Under data parallelism (a scorer with no_sync) a rank whose loss is NaN must still run each
    micro-batch's backward, so its collectives match the other ranks'; the update is skipped."""
    from contextlib import contextmanager

    from rlvr.config import TrainConfig
    from rlvr.train.step import train_step

    class CountingScorer(Scorer):
        backwards = 0

        @contextmanager
        def no_sync(self):
            yield

    policy = make_policy(seed=3)
    items = [{"id": str(i), "prompt": f"{i}+1="} for i in range(3)]
    batch = sample_groups(policy, items, 4, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(1))
    scorer = CountingScorer(policy, 1.0)
    hook = policy.module.tok_emb.weight.register_hook(lambda g: setattr(CountingScorer, "backwards",
                                                                        CountingScorer.backwards + 1))
    before = {k: v.clone() for k, v in policy.module.state_dict().items()}
    optimizer = torch.optim.AdamW(policy.module.parameters(), lr=1e-2)
    advantages = torch.ones(batch.num_rows)
    advantages[0] = float("nan")
    result = train_step(policy, optimizer, batch, advantages, TrainConfig(micro_batch_size="4"), scorer=scorer)
    hook.remove()
    assert result.skipped == "loss"
    # every micro-batch, the NaN one first: 3 of 4 rows, and 4 with the gradient-noise split
    # (2 + 2 rows of the first group, then the other two groups as 4 + 4)
    assert CountingScorer.backwards == result.metrics["perf/micro_batches"] == 4
    assert all(torch.equal(before[k], v) for k, v in policy.module.state_dict().items())


@pytest.mark.skipif(not HAS_HF, reason="transformers and peft are not installed")
def test_packed_forward_projects_only_the_positions_that_predict_a_completion_token(tmp_path):
    """The vocabulary projection runs on the positions that predict a completion token, not on
    the prompts or a packed row's padding: the head's input has exactly those rows, and the
    values are those of the full projection."""
    from hf_models import make_hf_model_dir
    from rlvr.backends import load_policy
    from rlvr.rollout.forward import pack

    policy = load_policy(str(make_hf_model_dir(tmp_path / "qwen2", "qwen2")))
    items = [get_task("arith").item("train", i) for i in (0, 1, 5)]
    batch = sample_groups(policy, items, [2, 4, 3], max_new_tokens=7, temperature=1.0,
                          generator=[torch.Generator().manual_seed(i) for i in range(3)])
    packed = pack(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.sequence_mask, batch.group_ids, 70)
    seen = []
    handle = policy.model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        full = policy.forward_packed(packed.ids, packed.positions, packed.attend)  # (M, L, V)
        keep = packed.predicting_positions()[0]
        kept = policy.forward_packed(packed.ids, packed.positions, packed.attend, keep)
    finally:
        handle.remove()
    lengths = batch.sequence_mask.sum(1).clamp(min=1)
    prompts_laid = {(int(packed.row[r, 0]), int(batch.group_ids[r])) for r in range(batch.num_rows)}
    # a completion's own tokens but its last predict the next; its first token is predicted by its
    # prompt's last position, shared by the group's completions in that packed row
    assert keep.numel() == int((lengths - 1).sum()) + len(prompts_laid)
    assert seen[0][:2] == full.shape[:2] and tuple(seen[1][:2]) == (1, keep.numel())
    assert keep.numel() < packed.ids.numel() - len(items)  # prompts and padding left out
    assert torch.allclose(kept, full.reshape(-1, full.shape[-1])[keep], atol=1e-5)


def test_builtin_packed_forward_projects_only_the_kept_positions():
    policy = make_policy(seed=3)
    ids = torch.randint(0, 20, (2, 9))
    positions = torch.arange(9).expand(2, 9)
    attend = torch.ones(9, 9, dtype=torch.bool).tril().expand(2, 9, 9)
    keep = torch.tensor([0, 4, 10, 17])
    full = policy.forward_packed(ids, positions, attend)
    kept = policy.forward_packed(ids, positions, attend, keep)
    assert kept.shape == (4, full.shape[-1])
    assert torch.allclose(kept, full.reshape(-1, full.shape[-1])[keep], atol=1e-6)
