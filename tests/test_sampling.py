"""Sampling strategies and reward structures (rlvr/rollout/strategies.py), each against a hand computation
or an independent brute force."""
import itertools
import math

import pytest
import torch

from conftest import make_policy
from rlvr.algo.advantages import ADVANTAGES, pass_at_k_advantage
from rlvr.backends.tiny import ByteTokenizer
from rlvr.config import ConfigError, TrainConfig
from rlvr.rewards.pool import RewardPool
from rlvr.rollout.forward import completion_logprobs
from rlvr.rollout.sample import concat_batches, sample_groups, select_rows
from rlvr.rollout.strategies import (Sampler, allocate_group_sizes, group_advantages, groups_with_signal, max_variance_subset, overlong_penalty, select_for_training, signal_probability)
from rlvr.tasks import get_task
from shaped_rewards import always_zero, digit_share, has_digit

TOK = ByteTokenizer()


def population_variance(values) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


# ---------------------------------------------------------------- --downsample (PODS)

def test_downsampling_picks_the_max_variance_subset_on_a_hand_example():
    # Sorted: 0.0 (#0) 0.2 (#5) 0.3 (#3) 0.5 (#2) 0.8 (#4) 0.9 (#1). Variances of the candidates
    # "i highest + 3−i lowest": {0,.2,.3} .0156, {0,.2,.9} .1489, {0,.8,.9} .1622, {.5,.8,.9} .0289.
    rewards = torch.tensor([0.0, 0.9, 0.5, 0.3, 0.8, 0.2])
    assert max_variance_subset(rewards, 3).tolist() == [0, 1, 4]
    # 0/1 rewards: as even a split as the group has -- all 3 correct and 5 incorrect ones.
    binary = torch.tensor([0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float32)
    kept = binary[max_variance_subset(binary, 8)]
    assert kept.sum() == 3 and len(kept) == 8
    # 5 correct of 8, keep 4: two of each (rows 1, 4 are the first incorrect ones; 6, 7 the last correct)
    assert max_variance_subset(torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 0]), 4).tolist() == [1, 4, 5, 6]


def test_downsampling_matches_brute_force_over_all_subsets():
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        k = int(torch.randint(2, 9, (1,), generator=gen))
        n = int(torch.randint(2, k + 1, (1,), generator=gen))
        rewards = torch.rand(k, generator=gen) if trial % 2 else (torch.rand(k, generator=gen) > 0.6).float()
        best = max(population_variance([float(rewards[i]) for i in s]) for s in itertools.combinations(range(k), n))
        chosen = max_variance_subset(rewards, n)
        assert len(set(chosen.tolist())) == n
        assert population_variance(rewards[chosen].tolist()) == pytest.approx(best, abs=1e-6)


# ---------------------------------------------------------------- --reward-shaping passk

def brute_force_pass_at_k_advantage(correct: list[int], k: int) -> list[float]:
    """Averages over all k-subsets, as the objective is defined: a subset scores 1 when it holds a
    correct sample; a sample's advantage is the mean score of the subsets holding it, minus the
    mean over all subsets, over the std of the subset scores."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    score = {s: float(any(correct[i] for i in s)) for s in subsets}
    mean = sum(score.values()) / len(subsets)
    std = math.sqrt(mean * (1 - mean))
    return [(sum(score[s] for s in subsets if i in s) / sum(1 for s in subsets if i in s) - mean) / (std + 1e-6)
            for i in range(len(correct))]


def test_pass_at_k_advantage_matches_a_hand_computation():
    # N=4, one correct, k=2: R̄ = 1 − C(3,2)/C(4,2) = 1/2, σ = 1/2,
    # A_pos = (1 − 1/2)/(1/2) = 1, A_neg = (1 − 1/2 − C(2,1)/C(3,1))/(1/2) = −1/3.
    got = pass_at_k_advantage(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), k=2)[0]
    assert torch.allclose(got, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]), atol=1e-5)
    # N=5, two correct, k=3: R̄ = 1 − C(3,3)/C(5,3) = 0.9, σ = 0.3, A_pos = 0.1/0.3 = 1/3,
    # A_neg = (1 − 0.9 − C(2,2)/C(4,2))/0.3 = (0.1 − 1/6)/0.3 = −2/9.
    got = pass_at_k_advantage(torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]), k=3)[0]
    assert torch.allclose(got, torch.tensor([-2 / 9, 1 / 3, -2 / 9, 1 / 3, -2 / 9]), atol=1e-5)


def test_pass_at_k_advantage_matches_subset_enumeration_and_edge_cases():
    for correct in ([1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0, 1]):
        for k in range(1, len(correct) + 1):
            got = pass_at_k_advantage(torch.tensor([correct], dtype=torch.float64), k)[0]
            want = brute_force_pass_at_k_advantage(correct, k)
            assert got.tolist() == pytest.approx(want, abs=1e-6), (correct, k)
    # all right, all wrong, and fewer than k wrong: every subset scores alike -> 0
    rewards = torch.tensor([[1.0, 1, 1, 1], [0.0, 0, 0, 0], [1.0, 1, 1, 0]])
    assert torch.equal(pass_at_k_advantage(rewards, k=2), torch.zeros(3, 4))
    # k = 1 is GRPO with the population std; partial credit counts as incorrect (full credit only)
    binary = torch.tensor([[1.0, 0, 0, 1, 1, 0]])
    p = binary.mean()
    assert torch.allclose(pass_at_k_advantage(binary, 1), (binary - p) / (binary.std(unbiased=False) + 1e-6), atol=1e-5)
    assert torch.equal(pass_at_k_advantage(torch.tensor([[1.0, 0.5, 0.0]]), 2),
                       pass_at_k_advantage(torch.tensor([[1.0, 0.0, 0.0]]), 2))


# ---------------------------------------------------------------- overlong penalty, partial credit

def test_overlong_penalty_ramps_linearly_over_the_buffer():
    lengths = torch.tensor([1, 4, 5, 6, 7, 8])
    got = overlong_penalty(lengths, max_new_tokens=8, buffer=4, penalty=0.5)
    assert got.tolist() == pytest.approx([0, 0, 0.125, 0.25, 0.375, 0.5])


def small_config(**overrides) -> TrainConfig:
    base = dict(k=4, prompts_per_step=3, max_new_tokens=6, task="add2")
    base.update(overrides)
    return TrainConfig(**base)


def collect(cfg: TrainConfig, verifier, seed: int = 0, sampler: Sampler | None = None):
    sampler = sampler or Sampler(cfg)
    generated = sampler.collect(make_policy(), get_task(cfg.task, seed=0), RewardPool.in_process(verifier), seed)
    return sampler, generated


def test_partial_credit_flows_through_unchanged():
    def graded(completion, item):
        return 0.25 if len(completion) % 2 else 0.75

    cfg = small_config()
    _, generated = collect(cfg, graded)
    want = torch.tensor([graded(t, None) for t in generated.batch.texts])
    assert torch.equal(generated.task_rewards, want) and torch.equal(generated.rewards, want)
    selected = select_for_training(generated, cfg)
    advantages = group_advantages(ADVANTAGES.get("grpo"), selected.rewards, selected.group_sizes)
    assert torch.equal(advantages, ADVANTAGES.get("grpo")(want.view(3, 4)).reshape(-1))
    # with the overlong penalty, the advantages see reward − penalty; reward/mean stays the verifier's
    cfg = small_config(overlong_buffer=3, overlong_penalty=0.2)
    _, penalised = collect(cfg, graded)
    lengths = penalised.batch.completion_mask.sum(dim=1)
    assert torch.allclose(penalised.rewards, penalised.task_rewards - overlong_penalty(lengths, 6, 3, 0.2))
    assert penalised.reward_mean() == pytest.approx(float(penalised.task_rewards.mean()))


# ---------------------------------------------------------------- --group-filter

def test_group_filter_never_keeps_a_group_without_signal_and_refills():
    cfg = small_config(group_filter=True, k=4, prompts_per_step=3, max_extra_rollouts=400)
    rounds = []
    for seed in range(3):
        sampler, generated = collect(cfg, has_digit, seed)
        selected = select_for_training(generated, cfg)
        assert all(len(set(group.tolist())) > 1 for group in selected.rewards.split(selected.group_sizes))
        assert groups_with_signal(selected.rewards, selected.group_sizes).all()
        m = {**generated.metrics, **selected.metrics}
        assert m["sampling/groups_trained"] + m["sampling/groups_missing"] == 3
        assert m["sampling/groups_dropped"] == m["sampling/prompts"] - m["sampling/groups_trained"]
        assert m["sampling/generated"] == 4 * m["sampling/prompts"] == 12 + m["sampling/extra_generated"]
        assert m["sampling/extra_generated"] <= 400
        assert sampler.position == m["sampling/prompts"]  # the stream moved past every prompt drawn
        rounds.append(m["sampling/rounds"])
    assert max(rounds) > 1  # random models rarely write digits: the filter had to refill


def test_group_filter_stops_at_its_budget():
    cfg = small_config(group_filter=True, k=4, prompts_per_step=3, max_extra_rollouts=30)
    _, generated = collect(cfg, always_zero)
    selected = select_for_training(generated, cfg)
    m = {**generated.metrics, **selected.metrics}
    # 30 extra samples buy 7 extra prompts of K=4 (28 samples): rounds of 3, 3 and 1 prompts
    assert m["sampling/extra_generated"] == 28 and m["sampling/generated"] == 40 and m["sampling/rounds"] == 4
    assert m["sampling/trained"] == 0 and m["sampling/groups_missing"] == 3 and m["sampling/groups_dropped"] == 10
    # budget 0: drop without refilling
    cfg = small_config(group_filter=True, max_extra_rollouts=0)
    _, generated = collect(cfg, always_zero)
    assert generated.metrics["sampling/generated"] == 12 and generated.metrics["sampling/rounds"] == 1


# ---------------------------------------------------------------- --adaptive-k

def test_allocation_spends_the_budget_exactly_and_optimally():
    gen = torch.Generator().manual_seed(1)
    for trial in range(40):
        groups = int(torch.randint(1, 5, (1,), generator=gen))
        budget = groups * int(torch.randint(2, 7, (1,), generator=gen))
        success = torch.rand(groups, generator=gen).tolist()
        sizes = allocate_group_sizes(success, budget)
        assert sum(sizes) == budget and min(sizes) >= 2
        objective = lambda ks: sum(signal_probability(p, k) for p, k in zip(success, ks))  # noqa: E731
        best = max(objective(ks) for ks in itertools.product(range(2, budget + 1), repeat=groups) if sum(ks) == budget)
        assert objective(sizes) == pytest.approx(best, abs=1e-12)
    assert allocate_group_sizes([0.3] * 5, 40) == [8] * 5  # equal estimates: the plain K
    # one more sample is worth p^k(1−p) + (1−p)^k p: the hard prompt (p 0.02) gains most for
    # longest, the easy one (0.99) gains 0.0098 at k = 2 and never outbids the others within 24
    assert allocate_group_sizes([0.5, 0.02, 0.99], 24) == [7, 15, 2]
    assert sum(allocate_group_sizes([0.5, 0.02, 0.99], 24, min_size=4)) == 24


def test_adaptive_k_respects_the_sample_budget_with_ragged_groups():
    cfg = small_config(adaptive_k=True, k=4, prompts_per_step=3, task="arith")  # levels 1-3 (operand digits)
    sampler = Sampler(cfg)
    sampler.estimator.update(1, [1.0] * 40)  # level 1 nearly always right,
    sampler.estimator.update(2, [1.0, 0.0] * 20)  # level 2 half the time,
    sampler.estimator.update(3, [0.0] * 40)  # level 3 nearly never
    seen_ragged = False
    for seed in range(3):
        _, generated = collect(cfg, digit_share, seed, sampler)
        assert generated.metrics["sampling/generated"] == 12 == sum(generated.group_sizes)
        assert generated.batch.group_sizes == generated.group_sizes
        seen_ragged |= len(set(generated.group_sizes)) > 1
        advantages = group_advantages(ADVANTAGES.get("rloo"), generated.rewards, generated.group_sizes)
        for group, adv in zip(generated.rewards.split(generated.group_sizes), advantages.split(generated.group_sizes)):
            assert torch.allclose(adv, ADVANTAGES.get("rloo")(group.view(1, -1))[0])
    assert seen_ragged


# ---------------------------------------------------------------- ragged batches

def test_sampling_ragged_groups_and_merging_rounds():
    model = make_policy()
    items = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]
    uniform = sample_groups(model, items, 3, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    as_list = sample_groups(model, items, [3, 3, 3], max_new_tokens=5, temperature=1.0,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform.completion_ids, as_list.completion_ids) and torch.equal(uniform.logprobs, as_list.logprobs)
    ragged = sample_groups(model, items, [2, 5, 1], max_new_tokens=5, temperature=1.0,
                           generator=torch.Generator().manual_seed(0))
    assert ragged.group_ids.tolist() == [0, 0, 1, 1, 1, 1, 1, 2] and ragged.group_sizes == [2, 5, 1]
    # rounds of different prompt widths merge with left padding that changes no log-prob
    other = sample_groups(model, [{"id": "d", "prompt": "123+456="}], 2, max_new_tokens=5, temperature=1.0,
                          generator=torch.Generator().manual_seed(1))
    merged = concat_batches([ragged, other], TOK.pad_id)
    assert merged.group_sizes == [2, 5, 1, 2] and [it["id"] for it in merged.items] == ["a", "b", "c", "d"]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, merged.prompt_ids, merged.prompt_mask, merged.completion_ids,
                                      merged.completion_mask, 1.0)
    mask = merged.completion_mask
    assert torch.allclose(logp[mask], merged.logprobs[mask], atol=1e-5)
    picked = select_rows(merged, torch.tensor([2, 3, 4, 8, 9]))
    assert picked.group_ids.tolist() == [0, 0, 0, 1, 1] and [it["id"] for it in picked.items] == ["b", "d"]
    assert picked.texts == [merged.texts[i] for i in (2, 3, 4, 8, 9)]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, field, words", [
    (dict(downsample=1), "--downsample", "at least 2"),
    (dict(k=8, downsample=16), "--downsample", "N ≤ K"),
    (dict(downsample=4, adaptive_k=True), "--downsample", "--adaptive-k"),
    (dict(reward_shaping="passk", passk_k=16), "--passk-k", "1 ≤ k ≤ K (8)"),
    (dict(reward_shaping="passk", passk_k=6, downsample=4), "--passk-k", "--downsample"),
    (dict(reward_shaping="passk", advantage="rloo"), "--advantage", "replaces"),
    (dict(reward_shaping="passk", overlong_buffer=2), "--overlong-buffer", "0/1 rewards"),
    (dict(reward_shaping="pass@k"), "--reward-shaping", "none or passk"),
    (dict(overlong_buffer=9), "--overlong-buffer", "--max-new-tokens 8"),
    (dict(overlong_penalty=-1.0), "--overlong-penalty", "≥ 0"),
    (dict(max_extra_rollouts=-2), "--max-extra-rollouts", "-1"),
])
def test_bad_combinations_are_refused_naming_the_option(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**overrides).validate_sampling()
    assert str(err.value).startswith(field) and words in str(err.value)
