"""Reward functions for tests: they give a random-init model a learning signal."""


def digit_share(completion: str, item: dict) -> float:
    """Share of the completion's characters that are digits (partial credit, so groups differ)."""
    return sum(ch.isdigit() for ch in completion) / len(completion) if completion else 0.0
