"""Built-in integer arithmetic tasks sized for the built-in byte-level model.

Three difficulties, easiest first: `add2` (a+b with a, b in 0..99), `arith` (the default: a+b or
a-b with 1- to 3-digit operands, negative results allowed) and `mul` (a 1-2 digit number times a
1 digit number). Prompts are short ASCII with no spaces ("37+58="), answers a few characters
("95"); each item's `question` asks the same for chat models ("What is 37 + 58? Answer with just
the number.").

The verifier reads the answer in the task's answer format (rlvr.tasks.answers; by default `last-number`,
so chatty models that reason before answering are scored fairly too) and compares the last signed
integer of that text with the answer: "\\boxed{95}" in format `boxed` scores 1 for 37+58, and a
reply whose extraction holds no integer scores 0.

The canonical key of a problem is its prompt without "=" ("37+58"), shared by all three tasks:
a problem held out in one of them is held out in the others too.
"""
from __future__ import annotations

import operator
import re
from abc import abstractmethod
from dataclasses import dataclass
from random import Random
from typing import Callable

from rlvr.tasks.base import TASKS, Task, draw_in_split

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}

# How each operator is written in a question for chat models.
SPOKEN_OPERATORS = {"+": "+", "-": "-", "*": "×"}

# The lookbehind keeps the "-" of "12-40" from being read as a minus sign of 40.
_SIGNED_INTEGER = re.compile(r"(?<!\d)-?\d+")


def normalize_integer(text: str) -> str:
    """"-007" -> "-7", "-0" -> "0": one spelling per integer, without int() on huge digit runs."""
    negative = text.startswith("-")
    digits = text.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if negative and digits != "0" else digits


def last_integer(text: str) -> str | None:
    """The last signed integer in `text`, normalized, or None if there is none."""
    matches = _SIGNED_INTEGER.findall(text)
    return normalize_integer(matches[-1]) if matches else None


def digit_count(number: int) -> int:
    return len(str(abs(number)))


def draw_with_digits(rng: Random, digits: int) -> int:
    """Uniform among the non-negative integers with exactly `digits` digits (0..9 for one)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field} {message}")


@dataclass
class Add2Config:
    """Settings of `add2`."""

    max_digits: int = 2  # each operand is uniform in 0..10**max_digits - 1

    def validate(self) -> None:
        _require(self.max_digits >= 1, "add2.max_digits", f"must be >= 1, got {self.max_digits}")


@dataclass
class ArithConfig:
    """Settings of `arith`."""

    min_digits: int = 1  # fewest digits of an operand
    max_digits: int = 3  # most digits of an operand; the count is uniform in min..max
    operations: str = "+-"  # operators to draw from uniformly, any of "+-*"

    def validate(self) -> None:
        _require(self.min_digits >= 1, "arith.min_digits", f"must be >= 1, got {self.min_digits}")
        _require(
            self.max_digits >= self.min_digits,
            "arith.max_digits",
            f"must be >= min_digits ({self.min_digits}), got {self.max_digits}",
        )
        _require(
            len(self.operations) > 0 and set(self.operations) <= set(OPERATIONS),
            "arith.operations",
            f"must be a non-empty string of {''.join(OPERATIONS)!r}, got {self.operations!r}",
        )


@dataclass
class MulConfig:
    """Settings of `mul`."""

    max_left_digits: int = 2  # the left factor has 1..this many digits, the count uniform
    max_right_digits: int = 1  # the right factor has 1..this many digits, the count uniform

    def validate(self) -> None:
        for field in ("max_left_digits", "max_right_digits"):
            value = getattr(self, field)
            _require(value >= 1, f"mul.{field}", f"must be >= 1, got {value}")


class ArithmeticTask(Task):
    """Shared item building and verification; subclasses say how a problem is drawn."""

    config_class: type
    default_answer_format = "last-number"

    def __init__(self, config=None, seed: int = 0, answer_format: str = "auto") -> None:
        self.config = config if config is not None else self.config_class()
        self.config.validate()
        self.seed = seed
        self.use_answer_format(answer_format)

    @abstractmethod
    def draw(self, rng: Random) -> tuple[int, str, int]:
        """One problem (left operand, operator, right operand), split not yet considered."""

    def level(self, left: int, right: int) -> int:
        return max(digit_count(left), digit_count(right))

    def item(self, split: str, index: int) -> dict:
        left, op, right = draw_in_split(
            self.seed, split, index, self.draw, lambda drawn: "".join(map(str, drawn)), self.name
        )
        key = f"{left}{op}{right}"
        return {
            "id": f"{self.name}/{split}/{index}",
            "prompt": key + "=",
            "question": (
                f"What is {left} {SPOKEN_OPERATORS[op]} {right}? {self.answer_format.instruction}"
            ),
            "answer": str(OPERATIONS[op](left, right)),
            "level": self.level(left, right),
            "key": key,
        }

    def extract_answer(self, completion: str) -> str | None:
        extracted = self.answer_format.extract(completion)
        return None if extracted is None else last_integer(extracted)

    def score(self, completion: str, item: dict) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        return 1.0 if answer == normalize_integer(str(item["answer"])) else 0.0


@TASKS.register("add2")
class Add2Task(ArithmeticTask):
    name = "add2"
    description = 'easiest: a+b with a, b uniform in 0..99 ("37+58=" -> "95")'
    config_class = Add2Config

    def draw(self, rng: Random) -> tuple[int, str, int]:
        high = 10**self.config.max_digits - 1
        return rng.randint(0, high), "+", rng.randint(0, high)


@TASKS.register("arith")
class ArithTask(ArithmeticTask):
    name = "arith"
    description = 'default: a+b or a-b, 1-3 digit operands, negatives allowed ("12-40=" -> "-28")'
    config_class = ArithConfig

    def draw(self, rng: Random) -> tuple[int, str, int]:
        config = self.config
        op = rng.choice(config.operations)
        left = draw_with_digits(rng, rng.randint(config.min_digits, config.max_digits))
        right = draw_with_digits(rng, rng.randint(config.min_digits, config.max_digits))
        return left, op, right


@TASKS.register("mul")
class MulTask(ArithmeticTask):
    name = "mul"
    description = 'hardest: a*b with a of 1-2 digits and b of 1 digit ("37*8=" -> "296")'
    config_class = MulConfig

    def draw(self, rng: Random) -> tuple[int, str, int]:
        left = draw_with_digits(rng, rng.randint(1, self.config.max_left_digits))
        right = draw_with_digits(rng, rng.randint(1, self.config.max_right_digits))
        return left, "*", right

    def level(self, left: int, right: int) -> int:
        return digit_count(left)


@dataclass
class Mul22Config:
    """Settings of `mul22`: none; both factors have exactly two digits."""

    def validate(self) -> None:
        pass


@TASKS.register("mul22")
class MulTwoByTwoTask(ArithmeticTask):
    name = "mul22"
    description = 'two-digit by two-digit products ("37*58=" -> "2146"); with --env calc a tool task'
    config_class = Mul22Config

    def draw(self, rng: Random) -> tuple[int, str, int]:
        return draw_with_digits(rng, 2), "*", draw_with_digits(rng, 2)

    def level(self, left: int, right: int) -> int:
        return 2
