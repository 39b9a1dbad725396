import math

import pytest
import torch

from rlvr.algo.advantages import ADVANTAGES
from rlvr.rollout.strategies import groups_with_signal
from rlvr.registry import UnknownNameError


def reference(name: str, rewards: list[list[float]]) -> list[list[float]]:
    """Float64 loops written from TERMS.md, independent of the tensor code."""
    out = []
    for group in rewards:
        k = len(group)
        mean = sum(group) / k
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (k - 1))
        row = []
        for i, r in enumerate(group):
            if name == "grpo":
                row.append((r - mean) / (std + 1e-6))
            elif name == "dr_grpo":
                row.append(r - mean)
            else:
                row.append(r - (sum(group) - r) / (k - 1))
        out.append(row)
    return out


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("k", [2, 3, 8, 16])
def test_advantages_match_float64_loop(name, k):
    gen = torch.Generator().manual_seed(k)
    binary = (torch.rand(6, k, generator=gen) > 0.5).double()
    partial = torch.rand(6, k, generator=gen, dtype=torch.float64)
    for rewards in (binary, partial):
        got = ADVANTAGES.get(name)(rewards)
        want = torch.tensor(reference(name, rewards.tolist()), dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-9), (name, rewards, got, want)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_signal_groups_get_zero_advantage(name):
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    adv = ADVANTAGES.get(name)(rewards)
    assert torch.equal(adv[:2], torch.zeros(2, 4))
    assert adv[2].abs().sum() > 0
    zero_signal_frac = float((~groups_with_signal(rewards.reshape(-1), [4] * 3)).float().mean())
    assert zero_signal_frac == pytest.approx(2 / 3)


def test_unknown_advantage_lists_known_names():
    with pytest.raises(UnknownNameError, match="dr_grpo, grpo, grpo_batch_std, reinforce_pp, rloo"):
        ADVANTAGES.get("ppo")
