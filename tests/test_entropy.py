import pytest
import torch
from torch.distributions import Categorical

from rlvr.algo.entropy import EntropyMonitor, masked_mean, token_entropy


def test_token_entropy_matches_torch_distributions_with_padding():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 259, generator=gen) * 3
    mask = torch.rand(5, 7, generator=gen) > 0.3
    ours = token_entropy(logits)
    reference = Categorical(logits=logits).entropy()
    assert torch.allclose(ours, reference, atol=1e-5)
    want = reference[mask].mean().item()
    assert masked_mean(ours, mask) == pytest.approx(want, abs=1e-5)


def test_token_entropy_is_float32_for_half_logits():
    logits = torch.randn(3, 11).to(torch.bfloat16)
    assert token_entropy(logits).dtype == torch.float32


def test_entropy_monitor_ema_half_life_and_retention():
    monitor = EntropyMonitor(half_life=10)
    first = monitor.update(2.0)
    assert first == {"entropy/ema": 2.0, "entropy/retention": 1.0}
    # After 10 steps at 0, the EMA has decayed to half of its start (the half-life).
    for _ in range(10):
        out = monitor.update(0.0)
    assert out["entropy/ema"] == pytest.approx(1.0)
    assert out["entropy/retention"] == 0.0
    restored = EntropyMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.update(1.0) == monitor.update(1.0)
