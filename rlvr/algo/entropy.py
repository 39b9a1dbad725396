"""Exact token entropy and the per-run entropy monitor (TERMS.md, "Entropy").

Token entropy is computed from the full next-token distribution, never estimated from the
sampled token's log-probability, and in float32 even when the logits come in lower precision.
"""
from __future__ import annotations

import math

import torch


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v p(v) log p(v) over the last dim, in nats. (..., V) -> (...)."""
    return log_prob_entropy(torch.log_softmax(logits.float(), dim=-1))


def log_prob_entropy(logp: torch.Tensor) -> torch.Tensor:
    """The same from log-probabilities already at hand (..., V) -> (...)."""
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` where `mask` is True; NaN when nothing is masked in."""
    count = int(mask.sum())
    return float((values * mask).sum() / count) if count else math.nan


def masked_quantiles(values: torch.Tensor, mask: torch.Tensor, qs=(0.1, 0.5, 0.9)) -> list[float]:
    """Quantiles of the masked-in values (for the per-token entropy distribution)."""
    selected = values[mask].float()
    if selected.numel() == 0:
        return [math.nan for _ in qs]
    return torch.quantile(selected, torch.tensor(qs)).tolist()


class EntropyMonitor:
    """Smooths the step entropy (EMA with a half-life in steps) and tracks its retention.

    Retention is entropy / entropy of the first step's rollouts, which are sampled from the
    starting policy, so it is "entropy relative to step 0" as TERMS.md defines it.
    """

    def __init__(self, half_life: float = 10.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life)  # weight kept by the old EMA each step
        self.ema: float | None = None
        self.initial: float | None = None

    def update(self, entropy: float) -> dict[str, float]:
        if self.initial is None:
            self.initial = entropy
            self.ema = entropy
        else:
            self.ema = self.decay * self.ema + (1.0 - self.decay) * entropy
        retention = entropy / self.initial if self.initial > 0 else math.nan
        return {"entropy/ema": self.ema, "entropy/retention": retention}

    def state_dict(self) -> dict:
        return {"ema": self.ema, "initial": self.initial, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.initial, self.decay = state["ema"], state["initial"], state["decay"]


class RewardMonitor:
    """Smooths the step's mean training reward (EMA, same half-life as entropy's) and keeps the
    best EMA so far: the reference of the reward-collapse detector."""

    def __init__(self, half_life: float = 10.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.ema: float | None = None
        self.best: float | None = None

    def update(self, reward: float) -> dict[str, float]:
        self.ema = reward if self.ema is None else self.decay * self.ema + (1.0 - self.decay) * reward
        self.best = self.ema if self.best is None else max(self.best, self.ema)
        return {"reward/ema": self.ema, "reward/ema_best": self.best}

    def state_dict(self) -> dict:
        return {"ema": self.ema, "best": self.best, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.best, self.decay = state["ema"], state["best"], state["decay"]


class CollapseDetector:
    """Entropy collapse as TERMS.md defines it: the EMA falls below `ratio` × the step-0 entropy
    and stays below for `patience` consecutive steps. The reward-collapse detector is the same
    rule with the best reward EMA so far as the reference.

    `update` returns the onset step (the first step below) on the step the condition is met,
    i.e. at onset + patience − 1, and None otherwise. It fires once per collapse; recovering
    above the threshold re-arms it.
    """

    def __init__(self, ratio: float = 0.3, patience: int = 10) -> None:
        self.ratio = ratio
        self.patience = patience
        self.below_since: int | None = None
        self.fired = False

    def update(self, step: int, ema: float, initial: float) -> int | None:
        if ema < self.ratio * initial:
            if self.below_since is None:
                self.below_since = step
            if not self.fired and step - self.below_since + 1 >= self.patience:
                self.fired = True
                return self.below_since
        else:
            self.below_since, self.fired = None, False
        return None

    def state_dict(self) -> dict:
        return {"below_since": self.below_since, "fired": self.fired}

    def load_state_dict(self, state: dict) -> None:
        self.below_since, self.fired = state["below_since"], state["fired"]


class EntropyCoefficient:
    """A fixed entropy-bonus coefficient (`--entropy-coef`), as a controller."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, entropy: float) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveEntropyCoefficient(EntropyCoefficient):
    """`--entropy-target H` (Skywork-OR1, He et al. 2025): each step
    c ← clip(c + Δ·sign(H − H_now), 0, c_max), so the bonus grows while entropy is below the
    target and shrinks while it is above."""

    def __init__(self, value: float, target: float, step_size: float, max_value: float) -> None:
        super().__init__(value)
        self.target, self.step_size, self.max_value = target, step_size, max_value

    def update(self, entropy: float) -> float:
        direction = (self.target > entropy) - (self.target < entropy)  # sign(H − H_now)
        self.value = min(max(self.value + self.step_size * direction, 0.0), self.max_value)
        return self.value
