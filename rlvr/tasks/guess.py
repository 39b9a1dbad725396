"""The built-in `guess` task: find a secret number, made for the `guess` environment.

Each item's answer is a secret integer in low..high (1..100 by default), and its question asks the
model to find it by calling guess(number): `--task guess --env guess` plays it, the environment
answering "higher" or "lower" (rlvr/envs/guess.py). The item carries `low` and `high`, so the
environment knows the range. The verifier reads the final answer like the arithmetic tasks (the
last integer in the task's answer format, `last-number` by default) and compares it with the secret.
Without the environment the task is a blind guess (reward 1 in high - low + 1).

The canonical key of a problem is "guess:<secret>". Of the secrets 1..100, 8 hash into the held-out
split, so an evaluation of `guess` has 8 distinct problems (rlvr eval skips repeats).
"""
from __future__ import annotations

from dataclasses import dataclass
from random import Random

from rlvr.tasks.arithmetic import last_integer, normalize_integer
from rlvr.tasks.base import TASKS, Task, draw_in_split


@dataclass
class GuessConfig:
    """Settings of `guess`."""

    low: int = 1  # the smallest secret
    high: int = 100  # the largest secret

    def validate(self) -> None:
        if self.high <= self.low:
            raise ValueError(f"guess.high must be > low ({self.low}), got {self.high}")


def bisection_guesses(secret: int, low: int, high: int) -> int:
    """How many guesses bisection (always the middle of what is left) takes to find `secret`."""
    guesses = 0
    while True:
        guesses += 1
        middle = (low + high) // 2
        if middle == secret:
            return guesses
        low, high = (middle + 1, high) if secret > middle else (low, middle - 1)


@TASKS.register("guess")
class GuessTask(Task):
    name = "guess"
    description = "find a secret number in 1..100 with higher/lower feedback; use with --env guess"
    default_answer_format = "last-number"

    def __init__(self, config: GuessConfig | None = None, seed: int = 0, answer_format: str = "auto") -> None:
        self.config = config if config is not None else GuessConfig()
        self.config.validate()
        self.seed = seed
        self.use_answer_format(answer_format)

    def draw(self, rng: Random) -> int:
        return rng.randint(self.config.low, self.config.high)

    def item(self, split: str, index: int) -> dict:
        low, high = self.config.low, self.config.high
        secret = draw_in_split(self.seed, split, index, self.draw, lambda drawn: f"guess:{drawn}", self.name)
        question = (f"I am thinking of a number between {low} and {high}. Find it: call guess(number) and I will "
                    "say higher or lower.")
        if not self.answer_format_is_default:  # the default reads the last number: no instruction needed
            question += " " + self.answer_format.instruction
        return {
            "id": f"{self.name}/{split}/{index}",
            "prompt": question,
            "question": question,
            "answer": str(secret),
            # how hard bisection finds it: 1 (the middle) .. ceil(log2(size))
            "level": bisection_guesses(secret, low, high),
            "key": f"guess:{secret}",
            "low": low,
            "high": high,
        }

    def extract_answer(self, completion: str) -> str | None:
        extracted = self.answer_format.extract(completion)
        return None if extracted is None else last_integer(extracted)

    def score(self, completion: str, item: dict) -> float:
        answer = self.extract_answer(completion)
        return 1.0 if answer is not None and answer == normalize_integer(str(item["answer"])) else 0.0

