"""Runs verifiers over a step's completions and contains their failures.

A verifier is the task's own `score` or a user function `f(completion, item) -> float` named as
`module:function` (imported from the working directory or PYTHONPATH). A call that raises, or
returns something that is not a finite number in [0, 1], gets reward 0 and is counted; the run
goes on. (Per-call timeouts in worker processes are not implemented yet: a verifier that hangs
hangs the run.)
"""
from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

Verifier = Callable[[str, dict], float]


def load_verifier(spec: str, task) -> Verifier:
    """'task' -> the task's own score; 'module:function' -> that function, imported."""
    if spec == "task":
        return task.score
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"expected module:function, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(f"cannot import module {module_name!r} ({type(err).__name__}: {err}); it must be "
                         "importable from the working directory or PYTHONPATH") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no function {function_name!r}")
    return function


@dataclass
class RewardFailure:
    kind: str  # "exception" or "bad_value"
    item_id: str
    detail: str


@dataclass
class ScoredBatch:
    rewards: torch.Tensor  # (B, K) float32 in [0, 1]
    answers: list[str | None]  # N extracted final answers
    failures: list[RewardFailure] = field(default_factory=list)


def score_batch(verifier: Verifier, task, texts: list[str], items: list[dict], k: int,
                failure_reward: float = 0.0) -> ScoredBatch:
    """Scores N = B·K completions; texts[i] answers items[i // k]."""
    values: list[float] = []
    failures: list[RewardFailure] = []
    for i, text in enumerate(texts):
        item = items[i // k]
        try:
            value = verifier(text, item)
        except Exception as err:
            failures.append(RewardFailure("exception", str(item.get("id")), f"{type(err).__name__}: {err}"))
            values.append(failure_reward)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
            failures.append(RewardFailure("bad_value", str(item.get("id")), f"returned {value!r}, expected a float in [0, 1]"))
            values.append(failure_reward)
            continue
        values.append(float(value))
    answers = [task.extract_answer(text) for text in texts]
    rewards = torch.tensor(values, dtype=torch.float32).view(len(items), k)  # (B, K)
    return ScoredBatch(rewards=rewards, answers=answers, failures=failures)


def answer_diversity(answers: list[str | None], k: int) -> float:
    """Mean over groups of distinct final answers / K ("no answer" counts as one answer)."""
    groups = [answers[i : i + k] for i in range(0, len(answers), k)]
    return sum(len(set(g)) / k for g in groups) / len(groups)
