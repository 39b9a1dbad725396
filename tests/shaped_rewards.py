"""Reward functions for tests: they give a random-init model a learning signal."""


def digit_share(completion: str, item: dict) -> float:
    """Share of the completion's characters that are digits (partial credit, so groups differ)."""
    return sum(ch.isdigit() for ch in completion) / len(completion) if completion else 0.0


def has_digit(completion: str, item: dict) -> float:
    """1 when the completion holds a digit: rare for a random model, so most groups lack signal."""
    return float(any(ch.isdigit() for ch in completion))


def always_zero(completion: str, item: dict) -> float:
    """No group ever has signal."""
    return 0.0


def char_variety(completion: str, item: dict) -> float:
    """Distinct characters over length: partial credit for any text, so even a random model's groups
    differ (a learning signal that moves the weights at every step)."""
    return len(set(completion)) / len(completion) if completion else 0.0
