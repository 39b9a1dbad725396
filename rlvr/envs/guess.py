"""`guess`: find a secret number with higher/lower feedback, for the `guess` task.

The item's answer is the secret. The tool `guess(number)` answers "higher", "lower" or
"correct"; the episode is done when the guess is correct. The budget is the number of guesses
bisection needs in the worst case, ceil(log2(high - low + 1)): 7 for 1..100 (the item's `low` and
`high`, 1 and 100 when it has none). `get_reward()` is 1.0 when the secret was found within the
budget, else 0.0. Guesses past the budget are still answered (the episode goes on until the guess
is correct or the rollout's --max-turns), but the reward stays 0.
"""
from __future__ import annotations

import math

from rlvr.envs.base import ENVS


def guess_budget(low: int, high: int) -> int:
    """The most guesses bisection needs to find any number in low..high."""
    return max(1, math.ceil(math.log2(high - low + 1)))


def _example(secret: int, guesses: list[int]) -> dict:
    """An example game: bisection from the middle of 1..100 down to `secret`."""
    calls = [{"tool": "guess", "arguments": {"number": number},
              "result": "correct" if number == secret else ("higher" if secret > number else "lower")}
             for number in guesses]
    return {"question": "I have picked a number between 1 and 100. Find it: call guess(number) and I will say "
                        "higher or lower.",
            "calls": calls, "answer": f"The number is {secret}."}


@ENVS.register("guess")
class GuessEnv:
    """Higher or lower: find the secret number within the guess budget."""

    description = "guess(number) -> higher/lower/correct; reward 1 if found within 7 guesses (1..100); for --task guess"
    # Worded unlike the task's question, so the example filter never drops them; their secrets lie
    # in the training split of the guess task, so no example is ever a held-out problem.
    examples = [
        _example(62, [50, 75, 62]),
        _example(43, [50, 25, 37, 43]),
        _example(81, [50, 75, 88, 81]),
    ]

    def reset(self, answer, low: int = 1, high: int = 100, **item) -> str:
        """A new game with the item's answer as the secret."""
        self.secret = int(str(answer).strip())
        self.budget = guess_budget(int(low), int(high))
        self.guesses = 0
        self.found_after: int | None = None  # how many guesses found it
        self.done = False
        return f"You have {self.budget} guesses."

    def guess(self, number: int) -> str:
        """Guess the secret number.

        Args:
            number: Your guess, an integer.

        Returns:
            "higher" if the secret number is higher, "lower" if it is lower, "correct" if you found it.
        """
        self.guesses += 1
        if number == self.secret:
            if self.found_after is None:
                self.found_after = self.guesses
            self.done = True
            return "correct"
        return "higher" if self.secret > number else "lower"

    def get_reward(self) -> float:
        """1.0 when the secret was found within the budget, else 0.0."""
        return 1.0 if self.found_after is not None and self.found_after <= self.budget else 0.0
